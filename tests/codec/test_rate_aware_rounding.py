"""Rate-aware rounding of z1: which residuals move, and what it does to real files."""
import numpy as np
import pytest

from codec import api, latent_coding
from codec.errors import CodecError
from codec.imageio import Photo
from codec.lambdas import index_of_lambda, lambda_of_index
from codec.rans import TOTAL
from codec.rate_aware_rounding import PSNR_BETA, symbol_bits
from codec.tiling import TileGeometry, analyse
from codec.transforms import TorchTransforms
from tests.conftest import synthetic_image


def _round(model, t, table, beta=PSNR_BETA):
    t = np.asarray(t, np.float64)
    return latent_coding._round_z1(t, np.full(t.shape, table, np.int64), model, beta)


def test_symbol_bits_are_the_coders_frequencies(default_model):
    cdfs, lengths = default_model.tables["cdfs"], default_model.tables["lengths"]
    bits = symbol_bits(cdfs, lengths)
    for table in (0, 20, 63):
        n = lengths[table] - 1   # the last symbol is the escape
        freq = np.diff(cdfs[table, : n + 1].astype(np.int64))
        np.testing.assert_allclose(2.0 ** -bits[table, :n], freq / TOTAL)
        assert np.all(np.isinf(bits[table, n:]))


def test_plain_rounding_when_beta_is_zero(default_model):
    t = np.random.default_rng(0).normal(0, 3, 1000)
    np.testing.assert_array_equal(_round(default_model, t, 20, beta=0.0), latent_coding._round(t))


def test_a_costly_residual_near_the_bin_edge_moves_towards_the_mean(default_model):
    # table 0 (σ 0.11): a ±1 costs ~18 bits, a 0 almost none
    np.testing.assert_array_equal(_round(default_model, [0.55, -0.57, 0.7, 1.2], 0), [0, 0, 1, 1])
    # table 40 (σ ~15): neighbouring values cost about the same, so nothing moves
    np.testing.assert_array_equal(_round(default_model, [0.55, -1.52, 3.51], 40), [1, -2, 4])


def test_moves_are_one_step_towards_the_mean_and_never_past_it(default_model):
    rng = np.random.default_rng(1)
    for table in (0, 8, 16, 24, 32):
        t = rng.normal(0, 2.0, 5000)
        plain, rounded = latent_coding._round(t), _round(default_model, t, table)
        moved = plain != rounded
        assert np.all(np.abs(plain[moved] - rounded[moved]) == 1)
        assert np.all(np.abs(rounded[moved]) < np.abs(plain[moved]))
        assert np.all(rounded[plain == 0] == 0)


def test_residuals_past_the_tables_support_are_left_alone(default_model):
    # table 0 covers -1..1; 40.6 is coded with the escape code and must stay exactly what it was
    np.testing.assert_array_equal(_round(default_model, [40.6, -3.55, 2.51], 0), [41, -4, 3])


def _latents(model, pixels, lam_index):
    h, w = pixels.shape[:2]
    t = TorchTransforms(model.torch_model, lambda_of_index(lam_index))
    return analyse(t.image, t.latent, pixels, TileGeometry(w, h, api.DEFAULT_TILE_PX, model.cfg.levels))


def test_real_files_get_smaller_and_decode_to_what_the_encoder_chose(default_model):
    pixels = synthetic_image(256, 384, seed=3)
    for lam in (64, 1024, 8192):
        index = index_of_lambda(lam)
        ys = _latents(default_model, pixels, index)
        plain = api.compress_latents(default_model, ys, Photo(pixels), index, keep_latents=True)
        rounded = api.compress_latents(default_model, ys, Photo(pixels), index, keep_latents=True, beta=PSNR_BETA)
        assert len(rounded.data) < len(plain.data)
        decoded, _ = api.decode_latents(default_model, api.read_container(default_model, rounded.data))
        for a, b in zip(rounded.latents, decoded):
            np.testing.assert_array_equal(a, b)
        # only z1 is rounded differently; z2 and up are the same integers
        for a, b in zip(rounded.latents[1:], plain.latents[1:]):
            np.testing.assert_array_equal(a, b)
        assert np.any(rounded.latents[0] != plain.latents[0])


def test_plain_rounding_is_the_default_and_a_wrong_beta_is_refused(default_model):
    """Plain rounding keeps faint defects' bits (session 24), so every encoder uses it unless told otherwise."""
    photo = Photo(synthetic_image(96, 128, seed=5))
    index = index_of_lambda(1024)
    default = api.compress(default_model, photo, index).data
    assert default == api.compress(default_model, photo, index, beta=0.0).data
    assert len(api.compress(default_model, photo, index, beta=PSNR_BETA).data) < len(default)
    for beta in (-0.01, 2.0):
        with pytest.raises(CodecError, match=r"outside \[0, 1\]"):
            api.compress(default_model, photo, index, beta=beta)
