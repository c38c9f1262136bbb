"""`python -m export.bench` end to end on one small photo (speed is measured by the command, not here)."""
from PIL import Image

from codec.onnx_export import export_stamped
from export import bench
from tests.conftest import synthetic_image


def test_bench_runs_every_backend_and_the_anchors(tiny_model, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(synthetic_image(128, 192, seed=8)).save(photos / "a.png")
    export_stamped(tiny_model, tmp_path / "onnx")   # no INT8 graph: that backend is skipped, not fatal
    result = bench.run(tiny_model, tmp_path / "onnx", photos, max_images=1, lam=512, threads=1, repeats=2)
    assert set(result["summary"]) == {"torch", "ort_fp32", "AVIF", "HEIC"}
    assert "ort_int8: skipped" in capsys.readouterr().err
    row = result["rows"][0]
    assert abs(row["torch"]["bpp"] / row["ort_fp32"]["bpp"] - 1) < 0.01   # same analysis, two runtimes
    for name in ("AVIF", "HEIC"):
        assert 1 <= row[name]["quality"] <= 100 and row[name]["s_per_mp"] > 0
    assert "| ort_fp32 |" in bench.markdown(result) and "fastest of 2 encodes each" in bench.markdown(result)


def test_bench_refuses_zero_repeats(tmp_path, capsys):
    assert bench.main(["--onnx-dir", str(tmp_path), "--repeats", "0"]) == 1
    assert "--repeats must be at least 1" in capsys.readouterr().err
