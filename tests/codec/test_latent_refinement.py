"""SGA+ and its baselines: valid roundings, standard bitstreams, never worse, time budget kept."""
import math
import subprocess
import sys

import pytest
import torch

from codec import api
from codec.imageio import Photo
from codec.latent_refinement import METHODS, RefineConfig, candidate_logits, candidates, sga_round
from codec.photo_refinement import refine_photo
from tests.conftest import PROJECT_ROOT, synthetic_image

SGA = ("ssl", "linear", "cosine", "atanh")


@pytest.mark.parametrize("method", SGA)
def test_logits_fall_with_distance(method):
    d = torch.linspace(0.01, 0.99, 50)
    logits = candidate_logits(method, d, 2.3)
    assert torch.all(logits[1:] < logits[:-1])


@pytest.mark.parametrize("method", SGA)
@pytest.mark.parametrize("classes", [2, 3])
def test_soft_rounding_stays_between_candidates_and_hardens(method, classes):
    g = torch.Generator().manual_seed(0)
    v = torch.empty(4000).uniform_(-5, 5, generator=g)
    cands = candidates(v, classes)
    for tau in (0.5, 0.05, 0.001):
        s = sga_round(v, method, classes, tau, 2.3, g)
        assert torch.all(s >= cands.min(0).values - 1e-6) and torch.all(s <= cands.max(0).values + 1e-6)
    # at a tiny temperature every sample is (almost) a candidate, the nearest integer most often
    assert ((s - s.round()).abs() < 1e-3).float().mean() > 0.995
    nearest = (s.round() == v.round()).float().mean()
    for offset in (-1, 1):
        assert nearest > (s.round() == v.round() + offset).float().mean()


def test_soft_rounding_has_gradients():
    v = torch.tensor([0.3, 1.7, -2.2], requires_grad=True)
    sga_round(v, "ssl", 2, 0.5, 2.3, torch.Generator().manual_seed(1)).sum().backward()
    assert torch.all(v.grad.abs() > 0)


def test_temperature_schedule():
    cfg = RefineConfig(steps=100, tau_max=0.5)
    taus = [cfg.temperature(t) for t in range(100)]
    assert taus[0] == 0.5 and taus[-1] < 0.01 and all(b <= a for a, b in zip(taus, taus[1:]))
    assert RefineConfig(decay=0.01).temperature(300) == pytest.approx(math.exp(-3))


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="method"):
        RefineConfig(method="magic")
    with pytest.raises(ValueError, match="classes"):
        RefineConfig(classes=4)


@pytest.mark.parametrize("method", METHODS)
def test_refined_bitstream_decodes_and_never_loses(tiny_model, method):
    photo = Photo(synthetic_image(64, 96, seed=2))
    result = refine_photo(tiny_model, photo, 200, RefineConfig(method=method, classes=3 if method == "linear" else 2,
                                                               steps=8, lr=0.05))
    assert result.after.loss <= result.before.loss
    out = api.decompress(tiny_model, result.data)
    assert out.pixels.shape == photo.pixels.shape
    assert len(result.data) == result.after.bytes


def test_refinement_lowers_the_objective_of_the_default_model(default_model):
    photo = Photo(synthetic_image(96, 128, seed=4))
    result = refine_photo(default_model, photo, 150, RefineConfig(steps=40))
    assert result.kept_refined and result.after.loss < result.before.loss


def test_one_tile_through_the_tiled_path_equals_whole_photo_refinement(tiny_model):
    photo = Photo(synthetic_image(64, 96, seed=6))
    whole = refine_photo(tiny_model, photo, 200, RefineConfig(steps=8, lr=0.05))
    tiled = refine_photo(tiny_model, photo, 200, RefineConfig(steps=8, lr=0.05), whole_photo_pixels=0)
    assert tiled.data == whole.data and tiled.after == whole.after


def test_large_photos_go_tile_by_tile_and_still_gain(tiny_model, default_model):
    photo = Photo(synthetic_image(96, 1100, seed=5))     # two coding tiles side by side
    calls = []
    result = refine_photo(tiny_model, photo, 200, RefineConfig(steps=6, lr=0.05), whole_photo_pixels=0,
                          on_step=lambda step, *a: calls.append(step))
    assert result.tiles == 2 and result.steps == 12 and calls == list(range(1, 13))
    assert result.after.loss <= result.before.loss
    assert api.decompress(tiny_model, result.data).pixels.shape == photo.pixels.shape
    result = refine_photo(default_model, photo, 150, RefineConfig(steps=30), whole_photo_pixels=0)
    assert result.tiles == 2 and result.kept_refined and result.after.loss < result.before.loss


def test_time_budget_is_kept(tiny_model):
    photo = Photo(synthetic_image(64, 96, seed=3))
    result = refine_photo(tiny_model, photo, 100, RefineConfig(steps=10 ** 6, time_budget=3.0))
    assert 0 < result.steps < 10 ** 6
    assert result.seconds < 3.0 * 1.5 + 1.0
    photo = Photo(synthetic_image(64, 1100, seed=3))   # tile by tile: the budget is shared out
    result = refine_photo(tiny_model, photo, 100, RefineConfig(steps=10 ** 6, time_budget=4.0), whole_photo_pixels=0)
    assert result.tiles == 2 and 0 < result.steps < 10 ** 6
    assert result.seconds < 4.0 * 1.5 + 1.0


def test_cli_refine_writes_a_standard_bitstream(tmp_path, tiny_model):
    from PIL import Image
    src = tmp_path / "p.png"
    Image.fromarray(synthetic_image(48, 64)).save(src)
    out = tmp_path / "r.nlic"
    r = subprocess.run([sys.executable, "-m", "codec", "refine", str(src), "-o", str(out), "--lambda", "300",
                        "--steps", "5", "--model", str(tiny_model.path)], cwd=PROJECT_ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("before: ") and "after 5 steps" in r.stdout
    r = subprocess.run([sys.executable, "-m", "codec", "decompress", str(out), "-o", str(tmp_path / "r.png"),
                        "--model", str(tiny_model.path)], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_refinement_works_through_the_spatial_context(context_model):
    """SGA+ optimises the latents through both checkerboard halves; the result is a standard bitstream."""
    photo = Photo(synthetic_image(64, 96, seed=3))
    result = refine_photo(context_model, photo, 200, RefineConfig(steps=8, lr=0.05))
    assert result.after.loss <= result.before.loss
    assert api.decompress(context_model, result.data).pixels.shape == photo.pixels.shape
