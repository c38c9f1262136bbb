"""python -m calibration as engineers run it: real subprocesses, one-line errors, and a long measurement's
result printed before --out is written, so a bad --out path loses nothing."""
import json
import subprocess
import sys

import pytest

from codec.onnx_export import export_stamped
from tests.conftest import PROJECT_ROOT
from tests.deploy.harness import make_photos


def run(*args):
    return subprocess.run([sys.executable, "-m", "calibration", *map(str, args)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600)


def error_line(result) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def graphs(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("graphs")
    image, _ = export_stamped(tiny_model, out)
    (out / "encoder.int8.onnx").write_bytes(image.read_bytes())   # stands in for INT8: the pair is what rd reads
    make_photos(out / "photos", 1)
    return out


def test_quantize_of_a_file_that_is_not_a_graph_is_one_line(tmp_path):
    (tmp_path / "text.onnx").write_text("hello")
    r = run("quantize", "--onnx", tmp_path / "text.onnx", "-o", tmp_path / "q.onnx", "--no-varied")
    assert "not an ONNX graph" in error_line(r) and not (tmp_path / "q.onnx").exists()


def test_rd_with_a_lambda_off_the_grid_is_one_line(tiny_model, graphs):
    r = run("rd", "--onnx-dir", graphs, "--model", tiny_model.path, "--data", graphs / "photos", "--lambdas", "10")
    assert "λ 10 outside" in error_line(r)


def test_rd_prints_its_result_before_a_bad_out_path_fails(tiny_model, graphs, tmp_path):
    r = run("rd", "--onnx-dir", graphs, "--model", tiny_model.path, "--data", graphs / "photos", "--lambdas", "256",
            "--max-images", "1", "--out", tmp_path / "absent" / "rd.json")
    assert "cannot write" in error_line(r)
    printed = json.loads(r.stdout[r.stdout.index("{"):])
    assert printed["int8_graph"] == "encoder.int8.onnx" and printed["photos"] == ["p0000.png"]
