"""Exact 8-bit products through ONNX Runtime: worst cases against int64 arithmetic."""
import numpy as np

from codec import int8_gemm


def test_the_largest_allowed_values_sum_exactly():
    """All activations 255 and weights +-63 over 3x3x128 taps: the pairs of products stay below 2**15 and
    the sums below 2**31, so nothing saturates on any kernel."""
    rng = np.random.default_rng(0)
    taps = 9 * 128
    w = np.where(rng.random((16, taps)) < 0.5, -63, 63).astype(np.int8)
    w[0], w[1] = 63, -63   # one output all at the top, one all at the bottom
    cols = np.full((7, taps), 255, np.uint8)
    cols[1::2] = rng.integers(0, 256, (3, taps))
    got = int8_gemm.Int8Matmul(w)(cols)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, cols.astype(np.int64) @ w.astype(np.int64).T)
    assert got[0, 0] == 255 * 63 * taps


def test_fits_names_the_limits():
    w = np.full((4, 8, 3, 3), 63)
    assert int8_gemm.fits(w, 255, taps=72)
    assert not int8_gemm.fits(w + 1, 255, taps=72)            # 8-bit weights can saturate on AVX2
    assert not int8_gemm.fits(w, 256, taps=72)                # inputs must fit a byte
    assert not int8_gemm.fits(w, 255, taps=(1 << 31) // (255 * 63) + 1)   # int32 sums
