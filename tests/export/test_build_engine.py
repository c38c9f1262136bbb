"""export/: ONNX round trip, operator check against the TensorRT parser list, MAC counting, the
build_engine.py script end to end, and the TensorRT engine build (skipped without tensorrt + CUDA)."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, TensorProto

from codec import api
from codec.imageio import Photo, read_photo
from codec.lambdas import index_of_lambda, lambda_of_index
from codec.onnx_export import OrtTransforms, export_stamped
from export import graph_checks, parity
from tests.deploy.harness import make_photos
from tests.conftest import PROJECT_ROOT, blade_photos, synthetic_image

SCRIPT = PROJECT_ROOT / "export" / "build_engine.py"


def need_ops_table():
    """The TensorRT parser's operator list lives beside the shared photos, outside the checkout."""
    if not graph_checks.DEFAULT_OPS_TABLE.is_file():
        pytest.skip(f"{graph_checks.DEFAULT_OPS_TABLE} is absent (the shared reference folder is not next to "
                    "this checkout)")


@pytest.fixture(scope="module")
def tiny_graphs(tiny_model, tmp_path_factory):
    return export_stamped(tiny_model, tmp_path_factory.mktemp("tiny_onnx"))


def test_export_round_trip(tiny_model, tiny_graphs):
    image, latent = tiny_graphs
    assert graph_checks.run_checker(image) == {"passed": True, "opset": 17, "error": None}
    assert graph_checks.run_checker(latent)["passed"]
    photo = Photo(synthetic_image(200, 296, seed=1))   # not a multiple of 16: exercises padding
    index = index_of_lambda(700)
    ort = OrtTransforms.from_files(image, latent, lambda_of_index(index))
    enc = api.compress(tiny_model, photo, index, transforms=ort, keep_latents=True)
    ref = api.compress(tiny_model, photo, index, keep_latents=True)
    assert parity.latent_agreement(enc.latents, ref.latents) >= 0.999
    ok, detail = parity.decodes_on_ground(tiny_model, enc)
    assert ok, detail


def test_default_model_matches_torch_on_a_blade_photo(default_model, tmp_path):
    path = blade_photos(1)[0]
    crop = read_photo(path).pixels[:256, :384].copy()
    cropped = tmp_path / "crop.png"
    from PIL import Image
    Image.fromarray(crop).save(cropped)
    image, latent = export_stamped(default_model, tmp_path)
    result = parity.compare(default_model, image, latent, [cropped], lambdas=(512,))
    assert result["passed"], result


def _graph_with(nodes, extra_inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [x], [y], initializer=list(extra_inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_operator_check_names_unsupported_nodes(tiny_graphs):
    need_ops_table()
    m = onnx.load(str(tiny_graphs[0]))
    # a deliberately unsupported operator hung off the real graph
    m.graph.node.append(helper.make_node("Unique", ["y1"], ["uniq"], name="deliberately_unsupported_unique"))
    m.graph.output.append(helper.make_tensor_value_info("uniq", TensorProto.FLOAT, None))
    report = graph_checks.check_tensorrt_ops(m)
    assert not report.ok
    assert [o["node"] for o in report.offences] == ["deliberately_unsupported_unique"]
    assert "not supported" in report.offences[0]["problem"]


def test_operator_check_restrictions_and_unknown_ops():
    need_ops_table()
    zp = helper.make_tensor("zp", TensorProto.INT8, [], [3])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q_with_zero_point_3"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq_with_zero_point_3"),
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Squeeze", ["dq", "shp"], ["sq"], name="squeeze_computed_axes"),
        helper.make_node("FancyOp", ["sq"], ["y"], name="made_up_op"),
    ]
    report = graph_checks.check_tensorrt_ops(_graph_with(nodes, [zp, scale]))
    by_node = {o["node"]: o["problem"] for o in report.offences}
    assert set(by_node) == {"q_with_zero_point_3", "dq_with_zero_point_3", "squeeze_computed_axes", "made_up_op"}
    assert "must be zero" in by_node["q_with_zero_point_3"]
    assert "initializer" in by_node["squeeze_computed_axes"]
    assert "not in the TensorRT ONNX parser list" in by_node["made_up_op"]


def test_operator_check_input_types():
    need_ops_table()
    nodes = [helper.make_node("Cast", ["x"], ["i8"], to=TensorProto.INT8, name="cast_to_int8"),
             helper.make_node("Abs", ["i8"], ["y"], name="abs_on_int8")]
    report = graph_checks.check_tensorrt_ops(_graph_with(nodes))
    assert [o["node"] for o in report.offences] == ["abs_on_int8"]
    assert "INT8" in report.offences[0]["problem"]


def test_mac_count_of_a_known_convolution():
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 5, 5], np.zeros(8 * 3 * 25, np.float32))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[2, 2, 2, 2], name="c")
    m = helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    assert graph_checks.count_macs(m, {"x": (1, 3, 64, 96)}) == 32 * 48 * 8 * 3 * 25


def test_macs_report_of_the_default_model(default_model, tmp_path):
    image, latent = export_stamped(default_model, tmp_path)
    r = graph_checks.macs_report(image, latent, default_model.cfg.c1, tflops=5.0)
    n, c = default_model.cfg.channels, default_model.cfg.c1
    # counted by hand from the exported graph: the first conv as 3x3 over SpaceToDepth (12 channels at half
    # resolution), three strided 5x5 convolutions; the diagonal GDNs are element-wise (Softsign), not counted
    convs = 12 * n * 9 / 4 + n * n * 25 / 16 + n * n * 25 / 64 + n * c * 25 / 256
    assert abs(r["image_graph_macs_per_pixel"] - convs) <= 1
    assert r["within_budget"] and r["projected_photo"]["assumed_tflops"] == 5.0


def _run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=PROJECT_ROOT, capture_output=True, text=True)


def test_build_engine_script_without_tensorrt(tiny_model, tmp_path):
    blade_photos(1)
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here: the no-engine exit status is not reachable")
    except ImportError:
        pass
    out = _run_script("--output-dir", str(tmp_path), "--model", str(tiny_model.path), "--num-photos", "1",
                      "--lambdas", "512", "--max-size", "480x853")
    assert out.returncode == 3, out.stderr
    assert "engine NOT built" in out.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["engine"]["built"] is False and "tensorrt" in report["engine"]["reason"]
    for name in ("onnx_checker", "tensorrt_operators", "macs", "ort_vs_torch_fp32", "fp16_storage"):
        assert report["checks"][name]["passed"], name
    assert report["checks"]["ort_vs_torch_fp32"]["worst_agreement"] >= 0.999
    # the tiny model's GDNs have a full Γ, so its analysis is not folded; the check itself: test_half_precision
    assert report["checks"]["fp16_storage"]["folded"] is False
    assert "does not fold" in report["checks"]["fp16_storage"]["detail"]
    assert (tmp_path / "encoder.onnx").is_file() and (tmp_path / "encoder_latent.onnx").is_file()


def test_build_engine_quantises_the_int8_analysis_when_the_model_has_one(tmp_path):
    """A model file with an INT8-tuned image analysis (codec/quantisation_aware.py): --int8 exports it as
    encoder.qat.onnx and quantises that, while encoder.onnx stays the float analysis."""
    need_ops_table()
    import torch

    from codec import weights
    from codec.export_model import int8_analysis_arrays
    from codec.runtime import CodecModel
    from tests.codec.test_quantisation_aware import model_with_int8_analysis

    arrays, tuned_path, twin = model_with_int8_analysis(tmp_path)
    weights.save_arrays(tmp_path / "model.npz", {**arrays, **int8_analysis_arrays(arrays, tuned_path)[0]},
                        {"config": twin.cfg.to_dict()})
    photos = tmp_path / "photos"
    make_photos(photos, 4, 96, 128)
    out = tmp_path / "out"
    result = _run_script("--output-dir", str(out), "--model", str(tmp_path / "model.npz"), "--int8",
                         "--photos", str(photos), "--num-photos", "1", "--lambdas", "512",
                         "--calibration-dir", str(photos), "--calibration-count", "4",
                         "--varied-dir", str(photos))
    assert result.returncode in (0, 3), result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["encoder_int8_source"] == str(out / "encoder.qat.onnx")
    assert report["checks"]["int8_quantisation"]["passed"] and report["checks"]["ort_int8_decodes"]["passed"]
    model = CodecModel.load(tmp_path / "model.npz")
    x = synthetic_image(96, 128, seed=9).transpose(2, 0, 1)[None].astype(np.float32) / 255
    run = lambda graph: OrtTransforms.from_files(out / graph, out / "encoder_latent.onnx", 512.0).image(x)
    with torch.no_grad():
        tuned = model.int8_image_analysis(torch.from_numpy(x), torch.tensor([512.0])).numpy()
        plain = model.torch_model.analysis.image(torch.from_numpy(x), torch.tensor([512.0])).numpy()
    assert np.allclose(run("encoder.qat.onnx"), tuned, atol=1e-4)
    assert np.allclose(run("encoder.onnx"), plain, atol=1e-4) and not np.allclose(tuned, plain, atol=1e-3)


def test_build_engine_script_fails_on_an_unsupported_operator(tiny_model, tmp_path):
    need_ops_table()
    table = (graph_checks.DEFAULT_OPS_TABLE.read_text().replace("\nConv\tY", "\nConv\tN"))
    ops = tmp_path / "ops.tsv"
    ops.write_text(table)
    out = _run_script("--output-dir", str(tmp_path), "--model", str(tiny_model.path), "--ops-table", str(ops),
                      "--photos", str(tmp_path / "absent"))
    assert out.returncode == 1
    report = json.loads((tmp_path / "report.json").read_text())
    offences = report["checks"]["tensorrt_operators"]["encoder"]["offences"]
    assert offences and all(o["op"] == "Conv" and o["node"].endswith("Conv") for o in offences)
    assert "photo folder not found" in report["checks"]["ort_vs_torch_fp32"]["error"]
    assert report["engine"]["built"] is False


def test_build_engine_script_usage_errors(tmp_path):
    out = _run_script("--output-dir", str(tmp_path), "--max-size", "big")
    assert out.returncode == 2 and "expected HxW" in out.stderr
    (tmp_path / "report.json").write_text('{"passed": true}')   # an earlier run's
    out = _run_script("--output-dir", str(tmp_path), "--model", str(tmp_path / "missing.npz"))
    assert out.returncode == 1 and out.stderr.strip().startswith("error:") and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "report.json").exists()   # it no longer says this failed run passed


def _cuda_reason():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (no TensorRT on this machine)"
    import torch
    if not torch.cuda.is_available():
        return "no CUDA device on this machine"
    return None


@pytest.mark.skipif(_cuda_reason() is not None, reason=f"TensorRT engine build needs tensorrt and a CUDA "
                                                        f"device: {_cuda_reason()}")
def test_tensorrt_engine_build_and_run(tiny_model, tiny_graphs, tmp_path):
    from edge.backends.tensorrt_backend import TensorRTBackend
    from export import tensorrt_build

    result = tensorrt_build.build_engines(*tiny_graphs, tmp_path, tiny_model, (480, 853), int8=False)
    backend = TensorRTBackend(tiny_model, engine=result["image"]["engine"])
    photo = Photo(synthetic_image(300, 500, seed=2))
    index = index_of_lambda(512)
    enc = api.compress(tiny_model, photo, index, transforms=backend.transforms(lambda_of_index(index)),
                       keep_latents=True)
    ok, detail = parity.decodes_on_ground(tiny_model, enc)
    assert ok, detail
