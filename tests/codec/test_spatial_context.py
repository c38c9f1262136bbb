import numpy as np
import pytest
import torch

from codec import api, spatial_context
from codec.errors import CodecError
from codec.imageio import Photo
from codec.lambdas import GRID_SIZE, index_of_lambda, lambda_of_index
from codec.model import ModelConfig, NestedLatentCodec, anchor_mask
from codec.runtime import CodecModel
from tests.codec.test_model import switched_on
from tests.conftest import synthetic_image

SMALL = dict(levels=3, channels=16, latent_channels=8, prior_channels=8)


def test_anchors_are_a_checkerboard_in_both_forms():
    a = spatial_context.anchors(3, 4)
    assert a.tolist() == [[True, False, True, False], [False, True, False, True], [True, False, True, False]]
    assert np.array_equal(anchor_mask(3, 4)[0, 0].numpy().astype(bool), a)


def test_a_model_switched_to_the_context_starts_as_the_same_function_and_then_uses_it():
    lam = torch.tensor([300.0])
    plain, ctx, ys = switched_on("context", SMALL, torch.rand(1, 3, 64, 96), lam)   # zero output layer
    with torch.no_grad():
        ctx.context.out.weight.normal_(0.0, 0.3)
        changed = ctx.top_down(ys, lam=lam)[1][0] != plain.top_down(ys, lam=lam)[1][0]
    second = ~anchor_mask(*ys[0].shape[-2:]).bool()
    assert changed.any() and not changed[second.expand_as(changed).logical_not()].any()   # non-anchors only


@pytest.mark.parametrize("lam", [64.0, 8192.0])
def test_the_integer_context_follows_the_float_one(context_model, lam):
    """Converted after training: index corrections within one step, mean corrections within one grid step
    (each rounds once), at the non-anchors, for an image inside the calibrated range (one of the tiny
    model's calibration images: beyond it the hidden layer clips by design)."""
    net, index = context_model.torch_model, index_of_lambda(lam)
    lam_t = torch.tensor([lambda_of_index(index)])
    x = torch.from_numpy(synthetic_image(64, 96, seed=1).transpose(2, 0, 1).copy()).float().div(255)[None]
    with torch.no_grad():
        z1 = net.top_down(net.analysis(x, lam_t), noisy=False, lam=lam_t)[0][0]
        du, dmean = net.context(z1 * anchor_mask(*z1.shape[-2:]))
    grid = context_model.cfg.mean_grid
    zq = (z1[0].numpy() * grid).round().astype(np.int64)
    second = ~spatial_context.anchors(*zq.shape[-2:])
    du_q, dmean_q = context_model.context(np.where(~second, zq, 0))
    assert np.abs(du[0].numpy()[:, second]).max() > 1   # the corrections are not trivially zero
    assert np.mean(np.abs(du_q - np.round(du[0].numpy()[:, second])) <= 1) > 0.99
    assert np.abs(dmean_q / grid - dmean[0].numpy()[:, second]).max() <= 1.0 / grid + 1e-6


def test_context_bitstreams_decode_to_the_encoders_latents_and_need_the_context(context_model, tmp_path):
    photo = Photo(synthetic_image(100, 150, seed=1))
    for index in (0, GRID_SIZE // 2, GRID_SIZE - 1):
        enc = api.compress(context_model, photo, index, keep_latents=True)
        decoded, _ = api.decode_latents(context_model, api.read_container(context_model, enc.data))
        assert all(np.array_equal(a, b) for a, b in zip(decoded, enc.latents))
    arrays = {k: v for k, v in context_model._arrays.items() if not k.startswith("context/")}
    with pytest.raises(CodecError, match="model has no spatial context under context/"):
        CodecModel(arrays, context_model.meta, tmp_path / "m.npz")


def test_the_context_saves_bits_once_trained_a_little():
    """150 prior-only steps on one synthetic image at one λ: z1's rate falls 3 % below that of the same
    model without the context (same start, same steps), so the gradient reaches it end to end."""
    x = torch.from_numpy(synthetic_image(128, 128, seed=2).transpose(2, 0, 1).copy()).float().div(255)[None]
    lam, bits = torch.tensor([1024.0]), {}
    for context in (False, True):
        torch.manual_seed(0)
        net = NestedLatentCodec(ModelConfig(**SMALL, context=context))
        for p in net.parameters():
            p.requires_grad_(False)
        parts = list(net.priors.parameters()) + (list(net.context.parameters()) if context else [])
        for p in parts:
            p.requires_grad_(True)
        opt = torch.optim.Adam(parts, lr=3e-3)
        with torch.no_grad():
            ys = net.analysis(x, lam)
        for _ in range(150):
            _, lk = net.top_down(ys, lam=lam)
            loss = -lk[0].log().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            bits[context] = float(-net.top_down(ys, lam=lam)[1][0].log2().sum())
    assert bits[True] < 0.97 * bits[False]


def test_the_8_bit_path_gives_the_reference_integers_over_the_whole_input_range(context_model):
    layers = context_model.context.layers
    fast, reference = spatial_context.IntegerContext(layers), spatial_context.IntegerContext(layers, int8=False)
    assert fast._hidden_int8 is not None and fast._out_int8 is not None and reference._hidden_int8 is None
    rng = np.random.default_rng(5)
    zq = rng.integers(-(1 << 15), 1 << 15, (context_model.cfg.c1, 9, 14))
    zq[:, 0, :3] = [-(1 << 15), (1 << 15) - 1, 40000]   # the ends, and beyond them (clipped)
    for got, want in zip(fast(zq), reference(zq)):
        np.testing.assert_array_equal(got, want)
