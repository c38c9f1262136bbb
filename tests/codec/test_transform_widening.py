import pytest
import torch

from codec import weights
from codec.errors import CodecError
from codec.model import ModelConfig, NestedLatentCodec
from codec.train import TrainConfig, train
from codec.transform_widening import sources, widen_transforms
from tests.codec.test_train import TINY, config, equalised_model_files
from tests.conftest import PROJECT_ROOT
from tests.codec.test_quantisation_aware import TINY as DIAGONAL

SMALL = dict(levels=3, channels=8, latent_channels=8, prior_channels=8, prior_lambda=True, context=True,
             z1_channels=12)


def trained_looking(cfg: dict, diagonal: bool) -> NestedLatentCodec:
    """A random model whose FiLMs depend on λ and whose GDNs are diagonal or carry off-diagonal weight."""
    torch.manual_seed(0)
    net = NestedLatentCodec(ModelConfig(**cfg)).eval()
    with torch.no_grad():
        for gdn in [*net.analysis.image.gdns, *net.synthesis.gdns]:
            n = gdn.beta_param.numel()
            gdn.gamma_param.copy_(torch.rand(n, n, 1, 1) * 0.3)
            if diagonal:
                gdn.gamma_param.mul_(torch.eye(n).view(n, n, 1, 1))
            gdn.beta_param.uniform_(0.5, 1.5)
        for film in [*net.analysis.image.films, *net.synthesis.films]:
            film.net[2].weight.normal_(0, 0.3)
    return net


def grown(net: NestedLatentCodec, new_n: int, noise: float = 0.0, fresh: bool = False) -> NestedLatentCodec:
    wide = NestedLatentCodec(ModelConfig(**{**net.cfg.to_dict(), "channels": new_n})).eval()
    wide.load_state_dict(widen_transforms(net.state_dict(), net.cfg.channels, new_n, 1, noise, fresh))
    return wide


def outputs(net, x, lam):
    with torch.no_grad():
        out = net(x, lam, noisy=False)
        return out["ys"], out["x_hat"], out["bpp"]


@pytest.mark.parametrize("fresh", [False, True])
@pytest.mark.parametrize("diagonal", [True, False])
@pytest.mark.parametrize("new_n", [12, 20])   # 20: some channels copied twice
def test_a_widened_model_starts_as_the_same_function(diagonal, new_n, fresh):
    narrow = trained_looking(SMALL, diagonal)
    wide = grown(narrow, new_n, fresh=fresh)
    x, lam = torch.rand(1, 3, 64, 96), torch.tensor([2048.0])
    (ys_a, x_a, bpp_a), (ys_b, x_b, bpp_b) = outputs(narrow, x, lam), outputs(wide, x, lam)
    for a, b in zip(ys_a, ys_b):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert torch.allclose(x_a, x_b, rtol=1e-4, atol=1e-5)
    assert torch.allclose(bpp_a, bpp_b, rtol=1e-4)
    assert wide.analysis.image.convs[1].weight.shape == (new_n, new_n, 5, 5)
    assert wide.synthesis.convs[3].weight.shape == (new_n, 3, 5, 5)


@pytest.mark.parametrize("fresh", [False, True])
def test_a_diagonal_gdn_stays_diagonal_so_the_int8_graph_can_fold_it(fresh):
    wide = grown(trained_looking(SMALL, diagonal=True), 12, fresh=fresh)
    for gdn in [*wide.analysis.image.gdns, *wide.synthesis.gdns]:
        assert gdn.is_diagonal()


def test_noise_sets_the_copies_apart_by_about_its_size_and_changes_the_output_a_little():
    narrow = trained_looking(SMALL, diagonal=True)
    quiet, noisy = grown(narrow, 12), grown(narrow, 12, noise=0.01)
    for a, b, axis in ((quiet.analysis.image.convs[0].weight, noisy.analysis.image.convs[0].weight, 0),
                       (quiet.synthesis.convs[2].weight, noisy.synthesis.convs[2].weight, 1)):
        old, copies = a.narrow(axis, 0, 8), b.narrow(axis, 8, 4) - a.narrow(axis, 8, 4)
        assert torch.equal(b.narrow(axis, 0, 8), old)   # the trained channels keep theirs
        spread = float(copies.std()) / float(a.std())    # the noise, in units of the layer's weight spread
        assert 0.005 < spread < 0.02, spread
    x, lam = torch.rand(1, 3, 64, 96), torch.tensor([2048.0])
    x_quiet, x_noisy = outputs(quiet, x, lam)[1], outputs(noisy, x, lam)[1]
    change = float((x_noisy - x_quiet).abs().max())
    assert 0 < change < 0.05


def _incoming(net: NestedLatentCodec) -> torch.Tensor:
    return net.analysis.image.convs[1].weight.detach().flatten(1)   # (out channel, in x taps)


def test_fresh_channels_are_random_unread_and_the_trained_ones_keep_their_weights_whole():
    narrow = trained_looking(SMALL, diagonal=True)
    wide = grown(narrow, 12, fresh=True)
    new, trained = _incoming(wide)[8:], _incoming(wide)[:8, :8 * 25]
    assert torch.equal(_incoming(wide)[:8].view(8, 12, 5, 5)[:, :8], narrow.analysis.image.convs[1].weight)
    cosine = torch.nn.functional.normalize(new[:, :8 * 25], dim=1) @ torch.nn.functional.normalize(trained, dim=1).T
    assert float(cosine.abs().max()) < 0.5   # not copies of anything
    assert 0.7 < float(new.std()) / float(trained.std()) < 1.4   # the layer's spread
    assert torch.count_nonzero(wide.analysis.image.convs[1].bias[8:]) == 0
    # no trained channel reads them yet (new channels may read new ones: they are not read themselves)
    assert torch.count_nonzero(wide.analysis.image.convs[1].weight[:8, 8:]) == 0
    assert torch.count_nonzero(wide.synthesis.convs[2].weight[8:, :8]) == 0
    assert torch.count_nonzero(wide.synthesis.convs[3].weight[8:]) == 0
    assert torch.equal(wide.synthesis.convs[3].weight[:8], narrow.synthesis.convs[3].weight)


def _gradients(net: NestedLatentCodec) -> dict:
    net.zero_grad()
    torch.manual_seed(3)
    out = net(torch.rand(2, 3, 64, 64), torch.tensor([256.0, 4096.0]), noisy=False)
    (out["bpp"].mean() + 100 * out["x_hat"].square().mean()).backward()
    return {"incoming": net.analysis.image.convs[1].weight.grad.flatten(1),
            "read": net.analysis.image.convs[2].weight.grad[:8].transpose(0, 1).flatten(1)}   # by trained ones


def test_copies_get_their_originals_gradient_and_fresh_channels_their_own():
    """Why lineage D's copies never parted (cosine >= 0.998 after 10,000 steps) and what fresh channels change."""
    narrow = trained_looking(SMALL, diagonal=True)
    g = _gradients(grown(narrow, 12).train())
    generator = torch.Generator().manual_seed(1)
    source = [sources(8, 12, generator) for _ in range(2)][1]   # hidden layer 1's, which convs[1] writes
    for copy in range(8, 12):
        assert torch.allclose(g["incoming"][copy], g["incoming"][source[copy]], rtol=1e-4, atol=1e-7)
    g = _gradients(grown(narrow, 12, fresh=True).train())
    read = g["read"][8:]   # the next layer's weights on each new channel: a gradient at once ...
    assert float(read.norm(dim=1).min()) > 0 and torch.linalg.matrix_rank(read) == 4   # ... each its own
    assert torch.count_nonzero(g["incoming"][8:]) == 0   # theirs follow once they are read


def test_sources_copy_every_channel_once_before_any_twice():
    s = sources(8, 20, torch.Generator().manual_seed(0))
    assert torch.equal(s[:8], torch.arange(8))
    counts = torch.bincount(s[8:], minlength=8)
    assert counts.min() >= 1 and counts.max() <= 2 and int(counts.sum()) == 12


def test_the_transforms_cannot_shrink_and_residual_blocks_are_refused():
    narrow = trained_looking(SMALL, diagonal=True)
    with pytest.raises(ValueError, match="can only grow"):
        widen_transforms(narrow.state_dict(), 8, 8)
    blocks = NestedLatentCodec(ModelConfig(**{**SMALL, "synthesis_blocks": 1}))
    with pytest.raises(ValueError, match="residual blocks"):
        widen_transforms(blocks.state_dict(), 8, 12)


def test_a_start_from_a_narrower_equalised_file_undoes_equalisation_then_widens(tmp_path):
    """The bundled model file is INT8-equalised: the channels are copied at the scales training had."""
    from codec.train import _load_state
    trained = equalised_model_files(tmp_path)
    wide_cfg = {**DIAGONAL, "channels": 12}
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), init_from=str(tmp_path / "new.npz"), model=wide_cfg,
                      widen_noise=0.0)
    model = NestedLatentCodec(ModelConfig(**wide_cfg)).eval()
    assert _load_state(cfg, tmp_path / "run", model, None, None)[0] == 5
    ours = model.analysis.image
    close = lambda a, b: torch.allclose(a, b, rtol=2e-3, atol=2e-3)   # float16 file
    for k, (gdn, film) in enumerate(zip(trained.analysis.image.gdns, trained.analysis.image.films)):
        # the equalisation rescaled exactly these
        assert close(ours.gdns[k].beta_param[:8], gdn.beta_param), k
        assert close(ours.gdns[k].gamma_param[:8, :8], gdn.gamma_param), k
        assert close(ours.films[k].net[2].weight[:8], film.net[2].weight[:8]), k
    x, lam = torch.rand(1, 3, 64, 96), torch.tensor([2048.0])
    assert torch.allclose(outputs(trained.eval(), x, lam)[1], outputs(model, x, lam)[1], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("fresh", [False, True])
def test_training_from_a_narrower_model_file_grows_its_transforms(tmp_path, folders, fresh):
    train(TrainConfig(**config(tmp_path, folders, steps=3)))
    run = config(tmp_path, folders, run_dir=str(tmp_path / "wide"), steps=6, model={**TINY, "channels": 12},
                 init_from=str(tmp_path / "run" / "last.npz"), widen_fresh=fresh)
    train(TrainConfig(**run))
    how = "fresh channels" if fresh else "copies, noise 0.01"
    assert f"transforms widened from 8 to 12 channels (transform_widening.py, {how})" in \
        (tmp_path / "wide" / "train.log").read_text()
    state = torch.load(tmp_path / "wide" / "last.pt", weights_only=False)
    assert state["step"] == 6 and state["model"]["synthesis.convs.1.weight"].shape == (12, 12, 5, 5)
    if fresh:   # the trained channels now read the new ones: they learnt a use for them
        assert torch.count_nonzero(state["model"]["synthesis.convs.2.weight"][8:, :8]) > 0
    before = weights.float_state_dict(weights.load_arrays(tmp_path / "run" / "last.npz")[0])
    assert not torch.equal(state["model"]["analysis.image.convs.0.weight"][:8],
                           before["analysis.image.convs.0.weight"].float())   # and it trains
    with pytest.raises(CodecError, match="do not fit"):   # narrowing is refused in one line
        train(TrainConfig(**config(tmp_path, folders, run_dir=str(tmp_path / "narrow"), steps=4,
                                   init_from=str(tmp_path / "wide" / "last.npz"))))


def _started(tmp_path, name: str):
    """The model a config starts on a new machine (no checkpoint), and the step it starts at."""
    from codec.train import _load_state, build_model
    cfg = TrainConfig.from_yaml(PROJECT_ROOT / "codec" / "configs" / name)
    model = build_model(cfg).eval()
    return model, _load_state(cfg, tmp_path / name, model, None, None)[0]


@pytest.mark.parametrize("name", ["lineage_n160.yaml", "lineage_n160_fresh.yaml"])
def test_lineage_d_grows_its_start_model_and_starts_near_its_pictures(tmp_path, name):
    """configs/lineage_n160*.yaml on a new machine: their start file (b7f73249, INT8-equalised, bundled until
    session 52), its transforms grown to 160 channels, at the file's step; against the 128-channel start from
    the same file (ablation/regrow_n128.yaml), the decoded picture moves by the copies' noise alone, and not at
    all with fresh channels."""
    model, step = _started(tmp_path, name)
    narrow, narrow_step = _started(tmp_path, "ablation/regrow_n128.yaml")
    assert model.cfg.channels == 160 and narrow.cfg.channels == 128 and step == narrow_step == 150_600
    x, lam = torch.rand(1, 3, 64, 64), torch.tensor([1024.0])
    (_, x_a, bpp_a), (_, x_b, bpp_b) = outputs(narrow, x, lam), outputs(model, x, lam)
    moved = float((x_a - x_b).abs().mean())
    assert (moved < 1e-5) if "fresh" in name else (1e-4 < moved < 0.01), moved
    assert abs(float(bpp_b / bpp_a) - 1) < (1e-4 if "fresh" in name else 0.05)
