"""calibration/flat_field_ranges.py: Conv input channels that flat fields overdrive, rescaled without changing
the graph's function."""
import shutil

import numpy as np
import onnx
import onnxruntime as ort

from calibration.calibration_set import CalibrationSet, centre_crop, make_reader
from calibration.flat_field_ranges import PREFIX, calibrated_ranges, flat_field_peaks, flat_fields, shrink_edge_channels
from calibration.onnx_graph import output_session
from codec.imageio import Photo, write_photo
from codec.onnx_export import export_stamped
from tests.conftest import synthetic_image


def _run(path, x, lam):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "lam": np.array([lam], np.float32)})[0]


def _conv_inputs(path) -> dict:
    return {n.name: n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"}


def test_flat_fields_span_black_to_white():
    fields = list(flat_fields())
    assert all(f.shape == (1, 3, 128, 128) and f.min() == f.max() for f in fields[:5])
    assert fields[0].max() == 0.0 and fields[4].min() == 1.0 and len(fields) == 8


def test_shrunk_channels_hold_flat_fields_and_keep_the_function(default_model, tmp_path):
    """On synthetic calibration photos (no flat border in them), the bundled model's edge channels are rescaled:
    afterwards every quantised Conv input's flat-field peak sits within its tensor's calibrated range, and the
    graph computes what it did."""
    image, _ = export_stamped(default_model, tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(4):
        write_photo(photos / f"{seed}.png", Photo(synthetic_image(112, 144, seed=seed)))
    reader = make_reader(CalibrationSet(photos, count=4, crop=(96, 128)))
    inputs = _conv_inputs(image)
    convs = list(inputs)[1:]   # the first Conv, over the pixels, stays in float
    tensors = [inputs[c] for c in convs]
    before = calibrated_ranges(output_session(onnx.load(str(image)), tensors), tensors, reader, 99.99)
    shrunk_graph = tmp_path / "shrunk.onnx"
    shutil.copyfile(image, shrunk_graph)
    shrunk = shrink_edge_channels(shrunk_graph, convs, reader, 99.99)

    assert shrunk, "no channel of the bundled model passes its range on flat fields"
    after = _conv_inputs(shrunk_graph)
    assert {after[c] for c in convs if inputs[c] in shrunk} == {PREFIX + c for c in convs if inputs[c] in shrunk}
    shrunk_tensors = [after[c] for c in convs]
    peaks = flat_field_peaks(output_session(onnx.load(str(shrunk_graph)), shrunk_tensors), shrunk_tensors)
    for c in convs:
        assert peaks[after[c]].max() <= before[inputs[c]] * 1.0001, c
    x = centre_crop(synthetic_image(96, 128, seed=9), (96, 128))
    for lam in (64.0, 8192.0):
        assert np.allclose(_run(shrunk_graph, x, lam), _run(image, x, lam), rtol=1e-4, atol=1e-4)
