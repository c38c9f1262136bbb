"""The coder, memory, refinement, ceiling, GDN-strength, training-speed and budget benchmarks run and report sane
figures."""
import numpy as np
import pytest
from PIL import Image

from codec.bench import budget, ceiling, coder, gdn_strength, memory, refinement, training_speed
from codec.errors import CodecError
from tests.conftest import synthetic_image


def _folder(tmp_path, n=1, h=64, w=96):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(n):
        Image.fromarray(synthetic_image(h, w, seed=i)).save(d / f"{i}.png")
    return d


@pytest.mark.parametrize("name", ["tiny_model", "context_model"])
def test_coder_benchmark(tmp_path, request, name):
    tiny_model = request.getfixturevalue(name)
    values, tables, latents, mp = coder.photo_symbols(tiny_model, sorted(_folder(tmp_path).glob("*.png")))
    r = coder.throughput(values, tables, tiny_model, repeats=1)
    assert r["symbols"] == values.size > 0
    assert r["encode_msym_s"] > 0 and r["decode_msym_s"] > 0
    assert 0 <= r["overhead_percent"] < 5  # few symbols: the 8-byte flush is a visible share
    assert len(latents) == 3 and mp == 3 * 64 * 96 / 1e6
    priors = coder.prior_speed(tiny_model, latents, mp)   # raises if the two paths (context too) disagree
    assert priors["int8_layers"] == 6 and set(priors["s_per_mp"]) == {"8-bit", "float64 reference"}


def test_memory_benchmark_runs_in_fresh_processes(tiny_model):
    rows = memory.measure(0.05, 1, str(tiny_model.path))
    assert [r["mode"] for r in rows] == ["encode", "decode"]
    assert all(r["peak_rss_mb"] > 50 and r["seconds"] > 0 for r in rows)


def test_refinement_benchmark(tmp_path, tiny_model):
    bd = refinement.run(_folder(tmp_path, h=96, w=96), tmp_path / "out", tiny_model.path, lambdas=(64, 1024, 8192),
                        images=1, size=96, steps=4, checkpoints=(2, 4), presets=("methods",))
    assert {r["config"].split("/")[0] for r in bd} == {"ssl", "linear", "cosine", "atanh", "ste", "noise"}
    assert {r["steps"] for r in bd} == {2, 4}
    assert (tmp_path / "out" / "refine_gain.png").exists()


def test_training_speed_benchmark():
    r = training_speed.measure({"crop": 32, "batch": 1, "threads": 1}, steps=2, warmup=1,
                               model_cfg={"levels": 2, "channels": 8, "latent_channels": 8, "prior_channels": 8})
    assert r["steps_per_s"] > 0 and r["pixels_per_s"] == r["steps_per_s"] * 32 * 32


def test_ceiling_reconstructs_from_unquantised_and_rounded_latents(tmp_path, tiny_model):
    rows = ceiling.run(str(_folder(tmp_path, n=2, h=70, w=100)), tiny_model, lambdas=(64, 8192))
    assert [(r["lambda"], r["images"]) for r in rows] == [(64, 2), (8192, 2)]
    assert all(0 < r["psnr_unquantised"] < 100 and 0 < r["psnr_rounded"] < 100 for r in rows)
    assert rows[0]["psnr_rounded"] != rows[0]["psnr_unquantised"]   # rounding changes the picture


def test_ceiling_crops_to_whole_z1_positions_and_names_a_bad_folder(tmp_path):
    assert ceiling.centre_crop(np.zeros((1100, 70, 3), np.uint8)).shape == (1024, 64, 3)
    with pytest.raises(CodecError, match="smaller than 16 px"):
        ceiling.centre_crop(np.zeros((10, 70, 3), np.uint8))
    with pytest.raises(CodecError, match="no images"):
        ceiling.run(str(tmp_path), None)


def test_gdn_strength_is_zero_for_a_linear_layer_and_scales_with_gamma(tmp_path):
    import argparse

    import torch

    from codec.model import ModelConfig, NestedLatentCodec

    net = NestedLatentCodec(ModelConfig(levels=2, channels=8, latent_channels=8, prior_channels=8)).eval()
    folder = str(_folder(tmp_path, n=2, h=48, w=64))
    before = {r["layer"]: r for r in gdn_strength.run(folder, net, lam=1024.0)}
    assert len(before) == 6 and all(r["channels"] == 8 and r["max"] > 0 for r in before.values())
    with torch.no_grad():
        net.synthesis.gdns[0].gamma_param.zero_()          # a linear layer
        net.analysis.image.gdns[0].gamma_param.mul_(2.0)   # Γ times 4; its input (the first conv) is unchanged
    after = {r["layer"]: r for r in gdn_strength.run(folder, net, lam=1024.0)}
    assert after["synthesis.gdns.0"]["max"] == 0 and after["synthesis.gdns.0"]["bent_share"] == 0
    first = "analysis.image.gdns.0"
    assert after[first]["max"] == pytest.approx(4 * before[first]["max"], rel=1e-5)
    with pytest.raises(CodecError, match="no such model"):
        gdn_strength.main(argparse.Namespace(model=str(tmp_path / "none.npz"), data=folder, lam=1024.0, max_images=1))


def test_budget_benchmark_agrees_with_bisection(tmp_path, tiny_model):
    paths = sorted(_folder(tmp_path, n=2, h=64, w=96).glob("*.png"))
    result = budget.run(tiny_model, paths, bpps=(0.5, 2.0), threads=1)
    assert len(result["rows"]) == 4 and all(r["bisection"]["index"] is not None for r in result["rows"])
    for name, s in result["summary"].items():
        assert s["same_index"] == 4, name
    assert result["summary"]["bisection"]["mean_tries"] >= 8 > result["summary"]["interpolating"]["mean_tries"]
