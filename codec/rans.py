"""rANS entropy coder with indexed CDF tables, compiled with numba (x86 and aarch64 alike).

64-bit state, 32-bit output words, 20-bit probability precision (as in Giesen's rans64). Every symbol
names the table it is coded with. Values outside a table's support are coded as the table's last
symbol (escape) followed by an Exp-Golomb code of the overflow in equiprobable chunks, so any integer
up to ±2**24 round-trips. The stream is written in reverse so the decoder reads it forwards; a
decoder that ends in a state other than the encoder's initial one has met a corrupt stream.
"""
from __future__ import annotations

import numpy as np
from numba import njit

PREC = 20
TOTAL = 1 << PREC
RANS_L = np.uint64(1 << 31)
MAX_ESCAPE_BITS = 24        # overflow magnitude < 2**24 after the table's support
CHUNK_BITS = 12             # equiprobable chunk size for escape payloads

OK = 0
ERR_TRUNCATED = 1
ERR_BAD_STATE = 2
ERR_ESCAPE = 3
ERR_TRAILING = 4
ERR_TABLE = 5
ERROR_TEXT = {
    ERR_TRUNCATED: "entropy-coded data ends early (truncated or corrupt)",
    ERR_BAD_STATE: "entropy decoder state check failed (corrupt data)",
    ERR_ESCAPE: "escape code out of range (corrupt data)",
    ERR_TRAILING: "entropy-coded data has trailing words (corrupt data)",
    ERR_TABLE: "table index out of range",
}


@njit(cache=True, nogil=True)
def _put(x, out, n_out, start, freq):
    x_max = ((RANS_L >> np.uint64(PREC)) << np.uint64(32)) * np.uint64(freq)
    if x >= x_max:
        out[n_out] = np.uint32(x & np.uint64(0xFFFFFFFF))
        n_out += 1
        x >>= np.uint64(32)
    x = (x // np.uint64(freq) << np.uint64(PREC)) + (x % np.uint64(freq)) + np.uint64(start)
    return x, n_out


@njit(cache=True, nogil=True)
def _put_bits(x, out, n_out, value, nbits):
    """Equiprobable symbol of nbits (<= PREC) bits."""
    shift = PREC - nbits
    return _put(x, out, n_out, value << shift, 1 << shift)


@njit(cache=True, nogil=True)
def _put_escape_payload(x, out, n_out, excess, negative):
    # Reverse order of what the decoder reads: sign, exponent, then mantissa chunks high to low.
    e1 = excess + 1
    k = 0
    while (e1 >> (k + 1)) > 0:
        k += 1
    # mantissa: k low bits of e1, in chunks, lowest chunk encoded first (decoded last)
    nchunks = (k + CHUNK_BITS - 1) // CHUNK_BITS
    for c in range(nchunks):
        lo = c * CHUNK_BITS
        bits = min(CHUNK_BITS, k - lo)
        x, n_out = _put_bits(x, out, n_out, (e1 >> lo) & ((1 << bits) - 1), bits)
    x, n_out = _put_bits(x, out, n_out, k, 5)
    x, n_out = _put_bits(x, out, n_out, 1 if negative else 0, 1)
    return x, n_out


@njit(cache=True, nogil=True)
def encode(values, tables, cdfs, lengths, offsets):
    """values, tables: int32 arrays of equal length. Returns uint32 words in reading order."""
    n = values.shape[0]
    out = np.empty(n * 3 + 16, np.uint32)
    n_out = 0
    x = RANS_L
    for i in range(n - 1, -1, -1):
        t = tables[i]
        length = lengths[t]
        idx = values[i] - offsets[t]
        if idx < 0 or idx >= length - 1:
            if idx < 0:
                x, n_out = _put_escape_payload(x, out, n_out, -idx - 1, True)
            else:
                x, n_out = _put_escape_payload(x, out, n_out, idx - (length - 1), False)
            idx = length - 1
        start = cdfs[t, idx]
        x, n_out = _put(x, out, n_out, start, cdfs[t, idx + 1] - start)
    out[n_out] = np.uint32(x & np.uint64(0xFFFFFFFF))
    out[n_out + 1] = np.uint32(x >> np.uint64(32))
    n_out += 2
    return out[:n_out][::-1].copy()


@njit(cache=True, nogil=True)
def _get_bits(x, words, pos, nbits):
    shift = PREC - nbits
    slot = x & np.uint64(TOTAL - 1)
    value = np.int64(slot >> np.uint64(shift))
    x = np.uint64(1 << shift) * (x >> np.uint64(PREC)) + slot - np.uint64(value << shift)
    if x < RANS_L:
        if pos >= words.shape[0]:
            return x, pos, value, ERR_TRUNCATED
        x = (x << np.uint64(32)) | np.uint64(words[pos])
        pos += 1
    return x, pos, value, OK


@njit(cache=True, nogil=True)
def _start_decoder(words):
    """Returns (state, position, status)."""
    if words.shape[0] < 2:
        return np.uint64(0), 0, ERR_TRUNCATED
    x = (np.uint64(words[0]) << np.uint64(32)) | np.uint64(words[1])
    if x < RANS_L:
        return x, 2, ERR_BAD_STATE
    return x, 2, OK


@njit(cache=True, nogil=True)
def _decode(words, x, pos, tables, cdfs, lengths, offsets, out):
    n_tables = lengths.shape[0]
    for i in range(tables.shape[0]):
        t = tables[i]
        if t < 0 or t >= n_tables:
            return x, pos, ERR_TABLE
        slot = np.int64(x & np.uint64(TOTAL - 1))
        lo = 0
        hi = lengths[t]
        while hi - lo > 1:  # largest idx with cdf[idx] <= slot
            mid = (lo + hi) >> 1
            if cdfs[t, mid] <= slot:
                lo = mid
            else:
                hi = mid
        start = cdfs[t, lo]
        freq = cdfs[t, lo + 1] - start
        x = np.uint64(freq) * (x >> np.uint64(PREC)) + np.uint64(slot - start)
        if x < RANS_L:
            if pos >= words.shape[0]:
                return x, pos, ERR_TRUNCATED
            x = (x << np.uint64(32)) | np.uint64(words[pos])
            pos += 1
        if lo == lengths[t] - 1:
            x, pos, negative, st = _get_bits(x, words, pos, 1)
            if st != OK:
                return x, pos, st
            x, pos, k, st = _get_bits(x, words, pos, 5)
            if st != OK:
                return x, pos, st
            if k > MAX_ESCAPE_BITS:
                return x, pos, ERR_ESCAPE
            e1 = np.int64(1) << k
            nchunks = (k + CHUNK_BITS - 1) // CHUNK_BITS
            for c in range(nchunks - 1, -1, -1):
                low = c * CHUNK_BITS
                bits = min(CHUNK_BITS, k - low)
                x, pos, chunk, st = _get_bits(x, words, pos, bits)
                if st != OK:
                    return x, pos, st
                e1 |= chunk << low
            excess = e1 - 1
            if negative:
                out[i] = offsets[t] - 1 - excess
            else:
                out[i] = offsets[t] + lengths[t] - 1 + excess
        else:
            out[i] = offsets[t] + lo
    return x, pos, OK


@njit(cache=True, nogil=True)
def _finish_decoder(words, x, pos):
    if pos != words.shape[0]:
        return ERR_TRAILING
    if x != RANS_L:
        return ERR_BAD_STATE
    return OK


@njit(cache=True, nogil=True)
def ideal_bits(values, tables, cdfs, lengths, offsets):
    """Code length in bits the tables assign (what a perfect coder with these tables would spend)."""
    total = 0.0
    for i in range(values.shape[0]):
        t = tables[i]
        idx = values[i] - offsets[t]
        length = lengths[t]
        if idx < 0 or idx >= length - 1:
            excess = -idx - 1 if idx < 0 else idx - (length - 1)
            k = 0
            while ((excess + 1) >> (k + 1)) > 0:
                k += 1
            total += 6 + k
            idx = length - 1
        total += PREC - np.log2(cdfs[t, idx + 1] - cdfs[t, idx])
    return total


# numba returns the 64-bit state as a Python int; passed back in as such it would be typed int64
# (and rejected above 2**63). These wrappers keep it np.uint64 on every call.

def start_decoder(words):
    """Returns (state, position, status)."""
    x, pos, status = _start_decoder(words)
    return np.uint64(x), pos, status


def decode(words, x, pos, tables, cdfs, lengths, offsets, out):
    """Decodes len(tables) symbols into out. Returns (state, position, status); resumable."""
    x, pos, status = _decode(words, np.uint64(x), pos, tables, cdfs, lengths, offsets, out)
    return np.uint64(x), pos, status


def finish_decoder(words, x, pos):
    return _finish_decoder(words, np.uint64(x), pos)
