import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codec import api
from codec.imageio import Photo
from codec.integer_prior import BytePlaneConv, IntegerPrior, conv2d_exact, conv_transpose2x_exact
from codec.lambdas import GRID_SIZE, index_of_lambda, lambda_of_index
from tests.conftest import PROJECT_ROOT, build_tiny_model, synthetic_image


def _ints(shape, lo, hi, seed):
    return np.random.default_rng(seed).integers(lo, hi, shape).astype(np.float64)


def test_conv_is_exact_against_integer_reference():
    x = _ints((8, 9, 11), -(1 << 15), 1 << 15, 0)
    w = _ints((5, 8, 3, 3), -2047, 2048, 1)
    ref = F.conv2d(torch.from_numpy(x).long()[None].double(), torch.from_numpy(w).double(), padding=1)[0]
    got = conv2d_exact(x, w, pad=1)
    # an int64 reference: sum of products computed exactly with Python-sized integers
    xi, wi = x.astype(np.int64), w.astype(np.int64)
    xp = np.pad(xi, ((0, 0), (1, 1), (1, 1)))
    exact = np.zeros((5, 9, 11), np.int64)
    for dy in range(3):
        for dx in range(3):
            exact += np.einsum("oc,chw->ohw", wi[:, :, dy, dx], xp[:, dy:dy + 9, dx:dx + 11])
    np.testing.assert_array_equal(got, exact)
    np.testing.assert_array_equal(ref.numpy(), exact)


def test_transposed_conv_matches_torch():
    x = _ints((4, 5, 7), -1000, 1000, 2)
    w = _ints((4, 6, 4, 4), -2047, 2048, 3)
    ref = F.conv_transpose2d(torch.from_numpy(x)[None], torch.from_numpy(w), stride=2, padding=1)[0]
    got = conv_transpose2x_exact(x, w)
    assert got.shape == (6, 10, 14)
    np.testing.assert_array_equal(got, ref.numpy())


def test_byte_planes_give_the_reference_transposed_conv_over_the_whole_input_range():
    rng = np.random.default_rng(4)
    w = rng.integers(-63, 64, (6, 5, 4, 4))
    x = rng.integers(-(1 << 15) + 1, 1 << 15, (6, 7, 9))
    x[0, 0, :3] = [-(1 << 15) + 1, (1 << 15) - 1, 0]
    np.testing.assert_array_equal(BytePlaneConv(w)(x), conv_transpose2x_exact(x, w))


def test_the_8_bit_path_gives_the_reference_integers(tiny_model):
    """Every layer of an exported model runs 8-bit; a prior forced onto float64 gives the same integers,
    also for latents too large for the byte planes (the first layer then falls back)."""
    rng = np.random.default_rng(5)
    for prior in tiny_model.priors:
        assert prior.int8_layers == len(prior.layers) and prior.act_max == 255
        reference = IntegerPrior(prior.layers, prior.num_scales, prior.act_max, int8=False)
        assert reference.int8_layers == 0
        for scale in (8, 400, 1 << 16):
            z = rng.integers(-scale, scale, (tiny_model.cfg.latent_channels, 6, 11))
            for got, want in zip(prior(z, (12, 21)), reference(z, (12, 21))):
                np.testing.assert_array_equal(got, want)


def test_models_with_12_bit_layers_keep_the_reference_path(tiny_model):
    layers = [dict(layer) for layer in tiny_model.priors[0].layers]
    layers[1]["w"] = layers[1]["w"] * 20   # beyond 7 bits, as models exported before session 3
    prior = IntegerPrior(layers, tiny_model.cfg.num_scales, act_max=4095)
    assert prior.int8_layers == 1   # the first layer's 7-bit weights still qualify; 12-bit activations don't
    reference = IntegerPrior(layers, tiny_model.cfg.num_scales, act_max=4095, int8=False)
    z = np.random.default_rng(6).integers(-300, 300, (tiny_model.cfg.latent_channels, 5, 8))
    for got, want in zip(prior(z, (10, 16)), reference(z, (10, 16))):
        np.testing.assert_array_equal(got, want)


def assert_follows_the_float_prior(model, lam_index: int):
    """Converted after training: scale indices within one step of the float network's, means close."""
    net = model.torch_model
    x = torch.from_numpy(synthetic_image(96, 128, seed=9).transpose(2, 0, 1).copy()).float().div(255)[None]
    lam = torch.tensor([lambda_of_index(lam_index)])
    with torch.no_grad():
        ys = net.analysis(x, lam)
        z_hat, _ = net.top_down(ys, noisy=False, lam=lam)
        u, mean = net.priors[0](z_hat[1], ys[0].shape[-2:], net.prior_shifts(0, lam))
    grid = model.cfg.mean_grid
    z = (z_hat[1][0].numpy() * grid).round().astype(np.int64)
    index, mean_q = model.priors[0](z, ys[0].shape[-2:], lam_index)
    u_ref = np.clip(np.round(u[0].numpy()), 0, model.cfg.num_scales - 1)
    assert np.mean(np.abs(index - u_ref) <= 1) > 0.99
    assert np.abs(mean_q / grid - mean[0].numpy()).max() <= 1.0 / grid


def test_integer_prior_follows_the_float_prior(tiny_model):
    assert_follows_the_float_prior(tiny_model, index_of_lambda(512.0))


@pytest.fixture(scope="module")
def lambda_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_lambda") / "tiny.npz", prior_lambda=True)


@pytest.mark.parametrize("lam", [64.0, 700.0, 8192.0])
def test_lambda_conditioned_priors_follow_the_float_prior_at_every_rate(lambda_model, lam):
    assert all(p.lambda_conditioned for p in lambda_model.priors)
    assert_follows_the_float_prior(lambda_model, index_of_lambda(lam))


def test_lambda_conditioned_priors_take_their_row_from_the_index_and_need_it(lambda_model, tiny_model):
    prior = lambda_model.priors[0]
    assert prior.layers[0]["b"].shape == (GRID_SIZE, lambda_model.cfg.prior_channels)
    z = np.random.default_rng(3).integers(-60, 60, (lambda_model.cfg.latent_channels, 4, 6))
    low, high = prior(z, (8, 12), 0), prior(z, (8, 12), GRID_SIZE - 1)
    assert not (np.array_equal(low[0], high[0]) and np.array_equal(low[1], high[1]))
    with pytest.raises(ValueError, match="conditioned on λ: it needs the λ index"):
        prior(z, (8, 12))
    assert not tiny_model.priors[0].lambda_conditioned   # older models: one bias row, any index
    np.testing.assert_array_equal(tiny_model.priors[0](z, (8, 12))[0], tiny_model.priors[0](z, (8, 12), 7)[0])


def test_bias_tables_that_miss_lambda_rows_are_refused(lambda_model):
    arrays = lambda_model.priors[0].arrays("p/")
    arrays["p/1/b"] = arrays["p/1/b"][:10]
    with pytest.raises(ValueError, match=f"bias tables must all have {GRID_SIZE} λ rows or none"):
        IntegerPrior.from_arrays(arrays, "p/", lambda_model.cfg.num_scales)


def test_lambda_conditioned_bitstreams_decode_to_the_encoders_latents(lambda_model):
    photo = Photo(synthetic_image(100, 150, seed=1))
    for index in (0, GRID_SIZE // 2, GRID_SIZE - 1):
        enc = api.compress(lambda_model, photo, index, keep_latents=True)
        decoded, _ = api.decode_latents(lambda_model, api.read_container(lambda_model, enc.data))
        assert all(np.array_equal(a, b) for a, b in zip(decoded, enc.latents))


def test_bounds_check_refuses_an_overflowing_layer(tiny_model):
    layers = [dict(layer) for layer in tiny_model.priors[0].layers]
    layers[1]["w"] = np.full_like(layers[1]["w"], 2047)
    layers[1]["b"] = np.full_like(layers[1]["b"], 1 << 45)
    with pytest.raises(ValueError, match="exact range"):
        IntegerPrior(layers, tiny_model.cfg.num_scales).check_bounds()


SCRIPT = """
import hashlib, sys, numpy as np
from codec.runtime import CodecModel
m = CodecModel.load(sys.argv[1])
rng = np.random.default_rng(0)
z = rng.integers(-400, 400, (m.cfg.latent_channels, 40, 56)).astype(np.int64)
h = hashlib.sha256()
for prior in m.priors:
    index, mean = prior(z, (80, 112))
    h.update(index.tobytes()); h.update(mean.tobytes())
print(h.hexdigest())
"""


def test_same_integers_with_any_blas_thread_count(tiny_model):
    digests = set()
    for threads in ("1", "2"):
        env = {"OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "PATH": "/usr/bin:/bin"}
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model.path)], cwd=PROJECT_ROOT, env=env,
                             capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1
