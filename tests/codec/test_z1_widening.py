import pytest
import torch

from codec import weights
from codec.errors import CodecError
from codec.model import ModelConfig, NestedLatentCodec
from codec.train import TrainConfig, train
from codec.z1_widening import widen_z1
from tests.codec.test_train import TINY, config

SMALL = dict(levels=3, channels=16, latent_channels=8, prior_channels=8, prior_lambda=True, context=True)


def narrow_and_wide(old_c1=8, new_c1=12):
    """A narrow model with every z1 reader active (random λ shifts and context output), and its widening."""
    torch.manual_seed(0)
    narrow = NestedLatentCodec(ModelConfig(**SMALL, z1_channels=old_c1)).eval()
    with torch.no_grad():
        for p in [*narrow.prior_lambda.parameters(), *narrow.context.out.parameters()]:
            p.normal_(0.0, 0.5)
    wide = NestedLatentCodec(ModelConfig(**SMALL, z1_channels=new_c1)).eval()
    wide.load_state_dict(widen_z1(narrow.state_dict(), old_c1, new_c1))   # strict: every tensor fits
    return narrow, wide


def test_a_widened_model_starts_as_the_same_function_bits_included():
    narrow, wide = narrow_and_wide()
    x, lam = torch.rand(1, 3, 64, 96), torch.tensor([8192.0])
    with torch.no_grad():
        a, b = narrow(x, lam, noisy=False), wide(x, lam, noisy=False)
        lk_a = narrow.top_down(a["ys"], lam=lam)[1]
        lk_b = wide.top_down(b["ys"], lam=lam)[1]
    assert torch.equal(b["x_hat"], a["x_hat"])
    assert torch.equal(b["z_hat"][0][:, :8], a["z_hat"][0]) and not b["z_hat"][0][:, 8:].any()
    for level in (1, 2):
        assert torch.equal(lk_b[level], lk_a[level])
    assert torch.equal(lk_b[0][:, :8], lk_a[0])
    assert float(b["bpp"] - a["bpp"]) < 1e-4 * float(a["bpp"])   # a 0 at the smallest scale costs ~nothing
    assert wide.synthesis.convs[0].weight[8:].abs().min() > 0    # but the new channels have a gradient


def test_a_half_on_start_writes_the_new_channels_and_prices_them_at_the_given_scale():
    narrow, _ = narrow_and_wide()
    state = narrow.state_dict()
    half = widen_z1(state, 8, 12, analysis_gain=0.3, prior_index=8.0)
    old_spread = float(state["analysis.image.convs.3.weight"].std())
    new_spread = float(half["analysis.image.convs.3.weight"][8:].std())
    assert 0.2 * old_spread < new_spread < 0.4 * old_spread
    assert torch.equal(half["priors.0.layers.2.bias"][8:12], torch.full((4,), 8.0))
    assert torch.equal(half["priors.0.layers.2.bias"][:8], state["priors.0.layers.2.bias"][:8])
    wide = NestedLatentCodec(ModelConfig(**SMALL, z1_channels=12)).eval()
    wide.load_state_dict(half)
    x, lam = torch.rand(1, 3, 64, 96), torch.tensor([8192.0])
    with torch.no_grad():
        new = wide(x, lam, noisy=False)["ys"][0][:, 8:]
    assert new.abs().min() > 0   # written by the analysis from the start (before rounding)


def test_z1_cannot_shrink_and_a_mismatched_axis_is_refused():
    narrow, _ = narrow_and_wide()
    with pytest.raises(ValueError, match="z1 can only grow"):
        widen_z1(narrow.state_dict(), 8, 8)
    with pytest.raises(ValueError, match="does not hold 1 x 6 z1 channels"):
        widen_z1(narrow.state_dict(), 6, 12)


def test_training_from_a_narrower_model_file_widens_it_and_learns_the_new_channels(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders, steps=3)))
    wide = {**TINY, "z1_channels": 12}
    run = config(tmp_path, folders, run_dir=str(tmp_path / "wide"), steps=10, init_from=str(tmp_path / "run" / "last.npz"),
                 model=wide)
    train(TrainConfig(**run))
    assert "z1 widened from 8 to 12 channels" in (tmp_path / "wide" / "train.log").read_text()
    before = weights.float_state_dict(weights.load_arrays(tmp_path / "run" / "last.npz")[0])
    after = torch.load(tmp_path / "wide" / "last.pt", weights_only=False)["model"]
    start = widen_z1(before, 8, 12, seed=0)   # what the run started from (its seed is 0)
    for name in ("analysis.image.convs.3.weight", "analysis.latent.0.conv1.weight"):
        grown = [slice(None)] * (name.count("latent") + 1)
        grown[-1] = slice(8, None)   # output channels of the first, input channels of the second
        assert not torch.equal(after[name][tuple(grown)], start[name][tuple(grown)].float())
    with pytest.raises(CodecError, match="z1 cannot shrink"):
        train(TrainConfig(**config(tmp_path, folders, run_dir=str(tmp_path / "narrow"), steps=4,
                                   init_from=str(tmp_path / "wide" / "last.npz"))))
