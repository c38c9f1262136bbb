import numpy as np
import pytest

from codec import rans
from codec.cdf_tables import build_tables, check_tables
from codec.model import ModelConfig, scale_table


@pytest.fixture(scope="module")
def tables():
    return build_tables(scale_table(ModelConfig()))


def _args(t):
    return t["cdfs"], t["lengths"], t["offsets"]


def _sample(tables, n, seed=0, escapes=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, tables["lengths"].size, n).astype(np.int32)
    scales = np.array(scale_table(ModelConfig()) + [1.0])
    values = np.round(rng.normal(0, scales[idx])).astype(np.int32)
    if escapes:
        pos = rng.choice(n, escapes, replace=False)
        values[pos] = rng.integers(-(1 << 22), 1 << 22, escapes)
    return values, idx


def _decode(words, idx, tables):
    out = np.empty(idx.size, np.int32)
    x, pos, st = rans.start_decoder(words)
    assert st == rans.OK
    x, pos, st = rans.decode(words, x, pos, idx, *_args(tables), out)
    return out, st, rans.finish_decoder(words, x, pos) if st == rans.OK else st


def test_tables_are_valid(tables):
    check_tables(**tables)
    assert tables["lengths"].size == ModelConfig().num_scales + 1


def test_round_trip_with_escapes(tables):
    values, idx = _sample(tables, 200_000, escapes=300)
    words = rans.encode(values, idx, *_args(tables))
    out, st, fin = _decode(words, idx, tables)
    assert st == rans.OK and fin == rans.OK
    np.testing.assert_array_equal(out, values)


def test_extreme_values_round_trip(tables):
    lim = (1 << 23)
    values = np.array([lim, -lim, 0, lim - 1, -lim + 1, 17, -17], np.int32)
    idx = np.array([0, 0, 64, 63, 63, 64, 64], np.int32)
    out, st, fin = _decode(rans.encode(values, idx, *_args(tables)), idx, tables)
    assert (st, fin) == (rans.OK, rans.OK)
    np.testing.assert_array_equal(out, values)


def test_overhead_against_ideal_code_length(tables):
    values, idx = _sample(tables, 500_000, seed=1)
    words = rans.encode(values, idx, *_args(tables))
    ideal = rans.ideal_bits(values, idx, *_args(tables))
    assert words.size * 32 <= ideal * 1.005 + 64


def test_empty_stream(tables):
    empty = np.empty(0, np.int32)
    words = rans.encode(empty, empty, *_args(tables))
    out, st, fin = _decode(words, empty, tables)
    assert (st, fin) == (rans.OK, rans.OK)


def test_truncated_stream_is_reported(tables):
    values, idx = _sample(tables, 5000, seed=2)
    words = rans.encode(values, idx, *_args(tables))
    _, st, fin = _decode(words[: words.size // 2], idx, tables)
    assert st == rans.ERR_TRUNCATED or fin != rans.OK


def test_bit_flips_are_detected_by_the_final_state(tables):
    """A flipped bit leaves the decoder off the encoder's initial state almost always."""
    values, idx = _sample(tables, 5000, seed=3)
    words = rans.encode(values, idx, *_args(tables))
    rng = np.random.default_rng(4)
    detected = 0
    for _ in range(200):
        bad = words.copy()
        bad[rng.integers(bad.size)] ^= np.uint32(1 << int(rng.integers(32)))
        _, st, fin = _decode(bad, idx, tables)
        detected += st != rans.OK or fin != rans.OK
    assert detected >= 190


def test_bad_table_index(tables):
    words = rans.encode(np.zeros(3, np.int32), np.zeros(3, np.int32), *_args(tables))
    bad = np.array([0, 999, 0], np.int32)
    _, st, _ = _decode(words, bad, tables)
    assert st == rans.ERR_TABLE


def test_malformed_table_is_refused(tables):
    cdfs = tables["cdfs"].copy()
    cdfs[3, 1] = cdfs[3, 0]  # a zero-frequency symbol
    with pytest.raises(ValueError):
        check_tables(cdfs, tables["lengths"], tables["offsets"])
