"""calibration/pooled_ranges.py: the inner Conv inputs' INT8 ranges over the calibration photos pooled with
varied ones, and only theirs."""
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from calibration.calibration_set import CalibrationSet
from calibration.onnx_graph import producers
from calibration.pooled_ranges import percentile_range
from calibration.quantize import quantize_encoder
from codec.imageio import Photo, write_photo
from codec.onnx_export import export_stamped
from tests.conftest import synthetic_image


def test_percentile_range_cuts_both_tails_or_mirrors_the_larger():
    values = np.linspace(-1.0, 3.0, 400_001)
    lo, hi = percentile_range(values, 99.0, symmetric=False)
    assert np.isclose(lo, -0.98, atol=1e-3) and np.isclose(hi, 2.98, atol=1e-3)
    lo, hi = percentile_range(values, 99.0, symmetric=True)
    assert np.isclose(hi, 2.96, atol=1e-3) and lo == -hi and lo.dtype == np.float32


def _folder(tmp_path, name, pixels) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for i, p in enumerate(pixels):
        write_photo(folder / f"{i}.png", Photo(p))
    return folder


def _input_scales(graph) -> dict:
    """Conv name -> the activation scale of its dequantised input, in a Q/DQ graph (float Convs left out)."""
    m = onnx.load(str(graph))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = producers(m)
    return {n.name: float(init[producer[n.input[0]].input[1]]) for n in m.graph.node
            if n.op_type == "Conv" and n.input[0] in producer and producer[n.input[0]].op_type == "DequantizeLinear"}


def _noise() -> list:
    """Busy photos: uniform noise drives every inner Conv input, where bright smooth photos may leave one
    as it was (they did lineage C step 100,000's second Conv, file e51ce9ba: 1.02x)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (112, 144, 3), dtype=np.uint8) for _ in range(4)]


def _alone_and_pooled(default_model, tmp_path, busy_pixels, target: str, read_scales) -> dict:
    """read_scales of the bundled model's graph for target, calibrated on dim smooth photos alone ("alone") and
    with busy_pixels pooled in as the varied photos ("pooled")."""
    image, _ = export_stamped(default_model, tmp_path)
    dim = _folder(tmp_path, "dim", [(synthetic_image(112, 144, seed=s) // 4).astype(np.uint8) for s in range(4)])
    busy = _folder(tmp_path, "busy", busy_pixels)
    scales = {}
    for name, varied in (("alone", None), ("pooled", busy)):
        graph = tmp_path / f"{name}.onnx"
        cal = CalibrationSet(dim, count=4, crop=(96, 128), varied=varied)
        assert quantize_encoder(image, graph, cal, target=target)["passed"]
        scales[name] = read_scales(graph)
    return scales


def test_varied_photos_widen_the_inner_ranges_and_leave_the_output_convs(default_model, tmp_path):
    """Calibrated on dim, smooth photos, the bundled model's Q/DQ graph gets wider inner Conv input ranges once
    bright busy photos are pooled in; the output Conv's input range (the levels of y1) stays the calibration
    photos' own."""
    scales = _alone_and_pooled(default_model, tmp_path, _noise(), "tensorrt", _input_scales)
    convs = list(scales["alone"])
    assert len(convs) == 3 and scales["pooled"].keys() == scales["alone"].keys()
    for inner in convs[:-1]:
        assert scales["pooled"][inner] > 1.2 * scales["alone"][inner], (inner, scales)
    assert scales["pooled"][convs[-1]] == scales["alone"][convs[-1]]


def _qlinear_input_scales(graph) -> list:
    """The input scale of each QLinearConv (the CPU graph's quantised Convs: all inner ones)."""
    m = onnx.load(str(graph))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return [float(init[n.input[1]]) for n in m.graph.node if n.op_type == "QLinearConv"]


def test_the_cpu_graph_pools_its_inner_ranges_too(default_model, tmp_path):
    scales = _alone_and_pooled(default_model, tmp_path, _noise(), "cpu", _qlinear_input_scales)
    assert len(scales["alone"]) == 2
    assert all(p > 1.2 * a for p, a in zip(scales["pooled"], scales["alone"])), scales
