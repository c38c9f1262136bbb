"""`python -m edge encode`: the container `python -m codec decompress` reads, for every backend here,
and one-line errors for bad input."""
import subprocess
import sys

import pytest
from PIL import Image

from codec import api
from codec.imageio import read_photo
from codec.onnx_export import export_stamped
from edge.encode_cli import main
from tests.conftest import PROJECT_ROOT, synthetic_image


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("encode_cli")
    photo = d / "photo.png"
    Image.fromarray(synthetic_image(150, 230, seed=6)).save(photo)
    image, _ = export_stamped(tiny_model, d / "onnx")
    return {"dir": d, "photo": photo, "onnx": image, "model": str(tiny_model.path)}


@pytest.fixture(autouse=True)
def _private_onnx_cache(tmp_path, monkeypatch):
    """--backend auto exports graphs into a cache: keep it out of the user's home during tests."""
    from edge.backends import onnxruntime_backend
    monkeypatch.setattr(onnxruntime_backend, "CACHE_DIR", tmp_path / "onnx_cache")


def _encode(setup, out, *extra):
    return main([str(setup["photo"]), "-o", str(out), "--lambda", "500", "--model", setup["model"], *extra])


@pytest.mark.parametrize("backend", [["--backend", "torch"], ["--backend", "onnxruntime", "--onnx", None],
                                     ["--backend", "auto"]])
def test_encode_decodes_on_the_ground(tiny_model, setup, backend, capsys):
    args = [a if a is not None else str(setup["onnx"]) for a in backend]
    out = setup["dir"] / f"out_{backend[1]}.nlic"
    assert _encode(setup, out, *args) == 0
    assert f"backend {'onnxruntime' if backend[1] == 'auto' else backend[1]}" in capsys.readouterr().out
    data = out.read_bytes()
    zq, _ = api.decode_latents(tiny_model, api.read_container(tiny_model, data))
    assert len(zq) == tiny_model.cfg.levels
    assert api.decompress(tiny_model, data).pixels.shape == (150, 230, 3)


def test_python_m_edge_encode_then_codec_decompress(setup):
    out, png = setup["dir"] / "cli.nlic", setup["dir"] / "cli.png"
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=PROJECT_ROOT, capture_output=True, text=True)
    enc = run("edge", "encode", str(setup["photo"]), "-o", str(out), "--lambda", "500", "--backend", "onnxruntime",
              "--onnx", str(setup["onnx"]), "--model", setup["model"])
    assert enc.returncode == 0, enc.stderr
    assert "encoder backend: onnxruntime" in enc.stderr
    dec = run("codec", "decompress", str(out), "-o", str(png), "--model", setup["model"])
    assert dec.returncode == 0, dec.stderr
    assert read_photo(png).pixels.shape == (150, 230, 3)


@pytest.mark.parametrize("extra, message", [
    (["--backend", "onnxruntime", "--onnx", "MISSING"], "no such ONNX file"),
    (["--backend", "onnxruntime", "--onnx", "CORRUPT"], "not a usable ONNX model"),
    (["--backend", "tensorrt"], "--backend tensorrt needs --engine PATH"),
    (["--backend", "tensorrt", "--engine", "MISSING"], "no such TensorRT engine file"),
    (["--backend", "torch", "--engine", "MISSING"], "--engine is for the tensorrt backend"),
])
def test_bad_input_is_one_error_line(setup, extra, message, capsys):
    corrupt = setup["dir"] / "corrupt.onnx"
    corrupt.write_bytes(b"garbage" * 20)
    subst = {"MISSING": str(setup["dir"] / "missing.file"), "CORRUPT": str(corrupt)}
    assert _encode(setup, setup["dir"] / "x.nlic", *[subst.get(a, a) for a in extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]


def test_bad_lambda_and_missing_photo(setup, capsys):
    assert main([str(setup["photo"]), "-o", str(setup["dir"] / "x.nlic"), "--lambda", "5", "--backend", "torch"]) == 1
    assert "outside" in capsys.readouterr().err
    assert main([str(setup["dir"] / "nope.jpg"), "-o", str(setup["dir"] / "x.nlic"), "--lambda", "500"]) == 1
    assert "no such file" in capsys.readouterr().err
