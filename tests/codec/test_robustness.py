"""Mutated bitstreams: each must end in the codec's own error or a valid image, quickly, without
crashing or allocating without bound. Mutations with the CRCs recomputed reach the entropy decoder
and the size checks, not just the checksums."""
import resource
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from codec import api, container
from codec.errors import CodecError
from codec.imageio import Photo
from tests.conftest import synthetic_image

TIME_LIMIT_S = 5.0
EXAMPLES = 1100  # two properties: 2,200 mutated bitstreams in all


@pytest.fixture(scope="module")
def sample(tiny_model):
    enc = api.compress(tiny_model, Photo(synthetic_image(150, 260, seed=7)), 90, tile_px=128)
    return enc.data


def refresh_crcs(data: bytes) -> bytes:
    """Recompute the header, metadata and tile CRCs of a (mutated) file, as far as its table allows."""
    if len(data) < container.FIXED.size + 4:
        return data
    fields = list(container.FIXED.unpack_from(data, 0))
    n = fields[9] * fields[10]
    at = container.FIXED.size
    if n > 10_000 or at + 8 * n + 4 > len(data):
        return data
    meta_at = at + 8 * n + 4
    meta = data[meta_at:meta_at + fields[12]]
    fields[13] = container.crc32c(meta)
    table, pos = [], meta_at + fields[12]
    for i in range(n):
        length, _ = struct.unpack_from("<I I", data, at + 8 * i)
        table.append(struct.pack("<II", length, container.tile_crc(i, data[pos:pos + length])))
        pos += length
    head = container.FIXED.pack(*fields) + b"".join(table)
    return head + struct.pack("<I", container.crc32c(head)) + data[meta_at:]


def check_outcome(model, data: bytes):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    try:
        photo = api.decompress(model, data)
    except CodecError as e:
        assert str(e) and "\n" not in str(e)
    else:
        c = container.read(data, model.alignment_of)
        assert photo.pixels.shape == (c.header.height, c.header.width, 3)
    assert time.monotonic() - t0 < TIME_LIMIT_S
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KiB: < 1 GB growth


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**9), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10**9), st.just(0)),
    st.tuples(st.just("bytes"), st.integers(0, 10**9), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.integers(0, 10**9), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("swap"), st.integers(0, 10**9), st.integers(0, 10**9)),
    st.tuples(st.just("size"), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)


def mutate(data: bytes, m) -> bytes:
    kind, a, b = m
    d = bytearray(data)
    if not d:
        return data
    if kind == "flip":
        d[a % len(d)] ^= 1 << b
    elif kind == "truncate":
        d = d[: a % len(d)]
    elif kind == "bytes":
        i = a % len(d)
        d[i:i + len(b)] = b
    elif kind == "insert":
        i = a % len(d)
        d[i:i] = b
    elif kind == "swap" and len(d) >= container.FIXED.size:
        fields = container.FIXED.unpack_from(data, 0)
        n = min(fields[9] * fields[10], (len(d) - container.FIXED.size) // 8)
        if n == 0:
            return bytes(d)
        i, j = a % n, b % n
        at = container.FIXED.size
        ei, ej = d[at + 8 * i: at + 8 * i + 8], d[at + 8 * j: at + 8 * j + 8]
        d[at + 8 * i: at + 8 * i + 8], d[at + 8 * j: at + 8 * j + 8] = ej, ei
    elif kind == "size" and len(d) >= 32:
        struct.pack_into("<II", d, 24, a, b)
    return bytes(d)


@pytest.mark.parametrize("fix_crcs", [False, True], ids=["raw", "crcs-recomputed"])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(ms=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_bitstreams(tiny_model, sample, fix_crcs, ms):
    data = sample
    for m in ms:
        data = mutate(data, m)
    check_outcome(tiny_model, refresh_crcs(data) if fix_crcs else data)


def test_random_payload_with_valid_crc_reaches_the_entropy_decoder(tiny_model, sample):
    rng = np.random.default_rng(0)
    outcomes = set()
    c = container.read(sample, tiny_model.alignment_of)
    for _ in range(50):
        tiles = [rng.integers(0, 256, len(t), dtype=np.uint8).tobytes() for t in c.tiles]
        data = container.write(container.Container(c.header, tiles, c.metadata))
        try:
            api.decompress(tiny_model, data)
            outcomes.add("image")
        except CodecError as e:
            outcomes.add("entropy" if "entropy" in str(e) or "escape" in str(e) else str(e))
    assert "entropy" in outcomes


def test_huge_declared_size_is_refused_before_allocation(tiny_model, sample):
    data = refresh_crcs(mutate(sample, ("size", 100_000, 100_000)))
    with pytest.raises(CodecError, match="outside the limits"):
        api.decompress(tiny_model, data)
