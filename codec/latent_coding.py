"""From continuous analysis outputs to entropy-coded symbols and back, top-down through the levels.

Encoder and decoder run the same integer code: zL is rounded and coded with the model's table for each
channel (a learned Gaussian scale, or the fixed logistic of older models); each lower level is coded as
residual r = round(y - mean) with the Gaussian table chosen by the integer prior from the decoded level
above; z1's residuals are rounded with an eye on their bits (rate_aware_rounding.py: the encoder's choice, the
decoder does not know). Decoded latents are kept as integers zq = z * mean_grid, exact.
`model` is a runtime.CodecModel: its priors, mean grid, CDF tables and zL tables.
"""
from __future__ import annotations

import numpy as np

from . import rans, spatial_context
from .errors import BitstreamError
from .rate_aware_rounding import DEFAULT_BETA, towards_mean

VALUE_LIMIT = 1 << 23  # residuals are clipped here; the escape code covers up to 2**24


def _round(y: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(y.astype(np.float64) + 0.5), -VALUE_LIMIT, VALUE_LIMIT).astype(np.int64)


def _round_z1(t, table_idx, model, beta: float) -> np.ndarray:
    r = _round(t)
    return towards_mean(t, r, table_idx, model.symbol_bits, model.tables["offsets"], beta) if beta > 0 else r


def quantise(ys, model, lambda_index: int, beta: float = DEFAULT_BETA):
    """ys: list of (C,h,w) float arrays, level 1 first. Returns (values, tables, zq per level).
    lambda_index: the header's λ index (λ-conditioned priors pick their bias row with it).
    beta: z1's rate-aware rounding (0: plain rounding).

    values and tables are in decoding order: level L first, then L-1, ..., 1.
    """
    levels, mean_grid = len(ys), model.cfg.mean_grid
    zq = [None] * levels
    top = _round(ys[-1])
    zq[-1] = top * mean_grid
    values = [top.ravel()]
    tables = [model.top_tables(top.shape)]
    for level in range(levels - 2, -1, -1):
        y = ys[level]
        if level == 0 and model.context is not None:
            zq[0] = _quantise_checkerboard(y, zq[1], model, lambda_index, values, tables, beta)
            continue
        index, mean_q = model.priors[level](zq[level + 1], y.shape[-2:], lambda_index)
        t = y - mean_q / mean_grid
        residual = _round_z1(t, index, model, beta) if level == 0 else _round(t)
        zq[level] = residual * mean_grid + mean_q
        values.append(residual.ravel())
        tables.append(index.ravel())
    return np.concatenate(values).astype(np.int32), np.concatenate(tables).astype(np.int32), zq


def _quantise_checkerboard(y, zq_above, model, lambda_index, values, tables, beta):
    """z1 in two halves (spatial_context.py): anchors with the prior alone, then the rest with the
    context's corrections; each half's symbols in C order. Returns zq of z1."""
    mean_grid, prior = model.cfg.mean_grid, model.priors[0]
    u, mean_q = prior.outputs(zq_above, y.shape[-2:], lambda_index)
    first = spatial_context.anchors(*y.shape[-2:])
    zq = np.zeros(y.shape, np.int64)   # as in the decoder: the context reads only the anchors
    index1 = np.clip(u[:, first], 0, prior.num_scales - 1)
    residual1 = _round_z1(y[:, first] - mean_q[:, first] / mean_grid, index1, model, beta)
    zq[:, first] = residual1 * mean_grid + mean_q[:, first]
    index, mean2 = spatial_context.second_half((u, mean_q), zq, model.context, prior.num_scales)
    residual2 = _round_z1(y[:, ~first] - mean2 / mean_grid, index, model, beta)
    zq[:, ~first] = residual2 * mean_grid + mean2
    values += [residual1.ravel(), residual2.ravel()]
    tables += [index1.ravel(), index.ravel()]
    return zq


def encode(ys, model, lambda_index: int, beta: float = DEFAULT_BETA):
    """Returns (the tile's payload, zq per level)."""
    values, table_idx, zq = quantise(ys, model, lambda_index, beta)
    t = model.tables
    words = rans.encode(values, table_idx, t["cdfs"], t["lengths"], t["offsets"])
    return words.astype("<u4").tobytes(), zq


def decode(payload: bytes, shapes, model, lambda_index: int):
    """shapes: (C,h,w) per level, level 1 first. Returns zq per level (int64)."""
    if len(payload) % 4:
        raise BitstreamError("entropy-coded tile length is not a multiple of 4 bytes")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    args = tuple(model.tables[k] for k in ("cdfs", "lengths", "offsets"))
    x, pos, status = rans.start_decoder(words)
    _check(status)
    state = [x, pos]
    levels, mean_grid = len(shapes), model.cfg.mean_grid
    zq = [None] * levels
    top_shape = shapes[-1]
    out = np.empty(int(np.prod(top_shape)), np.int32)
    _decode_into(words, state, model.top_tables(top_shape), args, out)
    zq[-1] = out.reshape(top_shape).astype(np.int64) * mean_grid
    for level in range(levels - 2, -1, -1):
        shape = shapes[level]
        if level == 0 and model.context is not None:
            zq[0] = _decode_checkerboard(words, state, args, shape, zq[1], model, lambda_index)
            continue
        index, mean_q = model.priors[level](zq[level + 1], shape[-2:], lambda_index)
        zq[level] = _decode_residuals(words, state, index, args) * mean_grid + mean_q
    _check(rans.finish_decoder(words, state[0], state[1]))
    return zq


def _decode_checkerboard(words, state, args, shape, zq_above, model, lambda_index):
    mean_grid, prior = model.cfg.mean_grid, model.priors[0]
    u, mean_q = prior.outputs(zq_above, shape[-2:], lambda_index)
    first = spatial_context.anchors(*shape[-2:])
    zq = np.zeros(shape, np.int64)
    index = np.clip(u[:, first], 0, prior.num_scales - 1)
    zq[:, first] = _decode_residuals(words, state, index, args) * mean_grid + mean_q[:, first]
    index, mean2 = spatial_context.second_half((u, mean_q), zq, model.context, prior.num_scales)
    zq[:, ~first] = _decode_residuals(words, state, index, args) * mean_grid + mean2
    return zq


def _decode_residuals(words, state, index, args) -> np.ndarray:
    """One symbol per element of index (its table), int64 in index's shape."""
    out = np.empty(index.size, np.int32)
    _decode_into(words, state, index.ravel().astype(np.int32), args, out)
    return out.reshape(index.shape).astype(np.int64)


def _decode_into(words, state, table_idx, args, out):
    x, pos, status = rans.decode(words, state[0], state[1], table_idx, *args, out)
    _check(status)
    state[0], state[1] = x, pos


def _check(status: int):
    if status != rans.OK:
        raise BitstreamError(rans.ERROR_TEXT[status])
