"""calibration/film_batchnorm.py: FiLM's multiply-add as one BatchNormalization, the same function."""
import shutil

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from calibration.calibration_set import centre_crop
from calibration.film_batchnorm import PREFIX, fuse_film
from codec.onnx_export import export_stamped
from tests.conftest import synthetic_image


def _film_graph(path, batch: int):
    """y = softsign(x)·gain + shift, gain and shift per channel: the FiLM pattern alone."""
    c = 4
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, 5, 6]),
              helper.make_tensor_value_info("gain", TensorProto.FLOAT, [batch, c, 1, 1]),
              helper.make_tensor_value_info("shift", TensorProto.FLOAT, [batch, c, 1, 1])]
    nodes = [helper.make_node("Softsign", ["x"], ["s"], name="softsign"),
             helper.make_node("Mul", ["s", "gain"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "shift"], ["y"], name="add")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, c, 5, 6])
    graph = helper.make_graph(nodes, "film", inputs, [output])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_one_image_film_becomes_one_batchnorm_with_the_same_output(tmp_path):
    path = _film_graph(tmp_path / "film.onnx", batch=1)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(0, 3, (1, 4, 5, 6)).astype(np.float32),
             "gain": rng.uniform(-2, 2, (1, 4, 1, 1)).astype(np.float32),
             "shift": rng.normal(0, 1, (1, 4, 1, 1)).astype(np.float32)}
    before = _run(path, feeds)
    assert fuse_film(path) == 1
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "BatchNormalization" in ops and ops.count("Add") == 1   # the Add left derives the unit variance
    np.testing.assert_allclose(_run(path, feeds), before, rtol=1e-6, atol=1e-6)


def test_a_batch_of_several_images_is_left_alone(tmp_path):
    """Flattened, a (2, C, 1, 1) gain would not be one value per channel."""
    path = _film_graph(tmp_path / "film2.onnx", batch=2)
    assert fuse_film(path) == 0
    assert "BatchNormalization" not in [n.op_type for n in onnx.load(str(path)).graph.node]


def test_the_exported_analysis_keeps_its_latents(default_model, tmp_path):
    """Every FiLM of the real image analysis is fused, and y1 is unchanged at both ends of the λ range."""
    image, _ = export_stamped(default_model, tmp_path)
    fused = tmp_path / "fused.onnx"
    shutil.copyfile(image, fused)
    films = sum(n.op_type == "Softsign" for n in onnx.load(str(image)).graph.node)   # one FiLM after each GDN
    assert films == 3 and fuse_film(fused) == films
    nodes = onnx.load(str(fused)).graph.node
    assert sum(n.op_type == "BatchNormalization" and n.name.startswith(PREFIX) for n in nodes) == films
    x = centre_crop(synthetic_image(96, 128, seed=3), (96, 128))
    for lam in (64.0, 8192.0):
        feeds = {"x": x, "lam": np.array([lam], np.float32)}
        np.testing.assert_allclose(_run(fused, feeds), _run(image, feeds), rtol=1e-5, atol=1e-5)


def test_a_graph_whose_shapes_cannot_be_inferred_is_left_valid_and_unfused(tmp_path, monkeypatch, caplog):
    path = _film_graph(tmp_path / "film.onnx", batch=1)

    def fail(*args, **kwargs):
        raise onnx.shape_inference.InferenceError("[ShapeInferenceError] made to fail")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fail)
    with caplog.at_level("WARNING", logger="calibration"):
        assert fuse_film(path) == 0
    assert "FiLM fusion skipped: shape inference failed" in caplog.text
    onnx.checker.check_model(onnx.load(str(path)))
