"""The float model: the learned prior of the top level zL; residual blocks added to a trained synthesis."""
import math

import pytest
import torch

from codec.model import ModelConfig, NestedLatentCodec, TopPrior

SMALL = {"levels": 2, "channels": 8, "latent_channels": 4, "prior_channels": 8}


def top_bits(net, z):
    return float(-net.top_likelihood(z).detach().log2().sum())


def test_an_unused_top_channel_costs_almost_nothing_once_its_scale_is_learned():
    zeros = torch.zeros(1, 4, 8, 8)
    legacy = NestedLatentCodec(ModelConfig(**SMALL, top_prior="logistic"))
    assert top_bits(legacy, zeros) / zeros.numel() == pytest.approx(-math.log2(1 / (1 + math.exp(-0.5)) * 2 - 1),
                                                                    rel=1e-4)   # 2.03 bits, whatever it learns
    net = NestedLatentCodec(ModelConfig(**SMALL))
    assert top_bits(net, zeros) / zeros.numel() > 1.0   # starts as wide as the logistic
    net.top_prior.set_index(torch.zeros(4))              # the narrowest scale of the table
    assert top_bits(net, zeros) / zeros.numel() < 1e-3


def test_the_top_scale_learns_even_from_beyond_the_table():
    """A hard clamp would have zero gradient there and leave the channel stuck (as the GDN zeros were)."""
    net = NestedLatentCodec(ModelConfig(**SMALL))
    net.top_prior.set_index(torch.full((4,), -5.0))
    z = torch.full((1, 4, 8, 8), 1.0)   # a channel in use: the scale should grow
    (-net.top_likelihood(z).log().sum()).backward()
    assert torch.all(net.top_prior.index_param.grad < 0)
    assert torch.all(net.top_prior.index() == 0)   # while the coder's index stays inside the table


def test_model_config_names_a_bad_top_prior_and_reads_old_files_as_logistic():
    with pytest.raises(ValueError, match="top_prior must be one of gaussian, logistic, got 'laplace'"):
        ModelConfig(top_prior="laplace")
    old = {k: v for k, v in ModelConfig().to_dict().items() if k != "top_prior"}
    assert ModelConfig.from_dict(old).top_prior == "logistic"
    assert ModelConfig.from_dict(ModelConfig().to_dict()).top_prior == "gaussian"
    assert NestedLatentCodec(ModelConfig.from_dict(old)).top_prior is None
    assert isinstance(NestedLatentCodec(ModelConfig()).top_prior, TopPrior)


@pytest.mark.parametrize("bound", [False, True])
def test_bf16_autocast_keeps_the_rate_and_the_distortion_in_float32(bound):
    """Training with bf16: true runs the convolutions in bfloat16; likelihoods in bfloat16 would lose the
    small bit counts of well-predicted elements, so the model hands float32 to the rate and the loss."""
    net = NestedLatentCodec(ModelConfig(**SMALL))
    x, lam = torch.rand(2, 3, 64, 64), torch.tensor([64.0, 8192.0])
    torch.manual_seed(0)
    ref = net(x, lam, bound=bound)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, lam, bound=bound)
    assert out["x_hat"].dtype == out["bpp"].dtype == torch.float32
    assert all(y.dtype == torch.float32 for y in out["ys"])
    assert torch.allclose(out["bpp"], ref["bpp"], rtol=0.05)
    assert (out["x_hat"] - ref["x_hat"]).abs().max() < 0.05
    (out["bpp"].mean() + (out["x_hat"] - x).square().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.analysis.parameters())


def switched_on(part: str, small: dict, x, lam):
    """A model with `part` switched on, loaded from one without it: it must lack only that part's weights and
    start as the same function (the same likelihoods). Returns (plain, switched, latents)."""
    torch.manual_seed(0)
    plain = NestedLatentCodec(ModelConfig(**small))
    switched = NestedLatentCodec(ModelConfig(**small, **{part: True}))
    missing, _ = switched.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith(f"{part}.") for k in missing)
    with torch.no_grad():
        ys = plain.analysis(x, lam)
        for a, b in zip(plain.top_down(ys, lam=lam)[1], switched.top_down(ys, lam=lam)[1]):
            assert torch.equal(a, b)
    return plain, switched, ys


def test_priors_conditioned_on_lambda_start_as_the_unconditioned_model_and_then_depend_on_it():
    _, conditioned, ys = switched_on("prior_lambda", SMALL, torch.rand(1, 3, 64, 64), torch.tensor([300.0]))
    with torch.no_grad():
        with pytest.raises(ValueError, match="conditioned on λ: top_down needs lam"):
            conditioned.top_down(ys)
        for p in conditioned.prior_lambda.parameters():
            p.normal_()
        low = conditioned.top_down(ys, lam=torch.tensor([64.0]))[1][0]
        high = conditioned.top_down(ys, lam=torch.tensor([8192.0]))[1][0]
    assert not torch.equal(low, high)


def test_synthesis_blocks_added_to_trained_weights_decode_the_same_picture():
    torch.manual_seed(0)
    trained = NestedLatentCodec(ModelConfig(**SMALL))
    deeper = NestedLatentCodec(ModelConfig(**SMALL, synthesis_blocks=2))
    missing, unexpected = deeper.load_state_dict(trained.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("synthesis.blocks.") for k in missing)
    z, lam = torch.randn(1, 4, 3, 5) * 4, torch.tensor([1024.0])
    with torch.no_grad():
        assert torch.equal(deeper.synthesis(z, lam), trained.synthesis(z, lam))
    with pytest.raises(ValueError, match="synthesis_blocks must be >= 0, got -1"):
        ModelConfig(synthesis_blocks=-1)
