"""Quantisation-aware fine-tuning: the emulated INT8 analysis against the real Q/DQ graph under ONNX Runtime,
and training that moves the analysis alone."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from calibration.calibration_set import CalibrationSet
from calibration.onnx_graph import output_session, producers
from codec import weights
from calibration.quantize import PERCENTILE, quantize_encoder
from codec.errors import CodecError
from codec.export_model import int8_analysis_arrays
from codec.model import ModelConfig, NestedLatentCodec
from codec.onnx_export import OrtTransforms, export_stamped
from codec.runtime import CodecModel
from codec.quantisation_aware import (LEVELS, Calibration, QuantisationAwareImageAnalysis, fake_quantise,
                                      make_quantisation_aware, percentile, weight_scale)
from codec.train import TrainConfig, export_float_model, load_float, train
from tests.codec.test_train import TINY, config
from tests.deploy.harness import make_photos
from tests.conftest import synthetic_image


def diagonal_model(seed: int = 0) -> NestedLatentCodec:
    """A tiny random model whose GDNs are diagonal (what the INT8 graph folds), with FiLMs that depend on λ."""
    torch.manual_seed(seed)
    net = NestedLatentCodec(ModelConfig(**TINY))
    with torch.no_grad():
        for gdn in net.analysis.image.gdns:
            gdn.gamma_param.mul_(torch.eye(8).view(8, 8, 1, 1))
            gdn.beta_param.uniform_(0.5, 1.5)
        for film in net.analysis.image.films:
            film.net[2].weight.normal_(0, 0.3)
    return net


def test_fake_quantise_rounds_to_the_int8_grid_and_passes_gradients_inside_it():
    scale = torch.tensor(0.1)
    x = torch.tensor([0.04, 0.06, -0.26, 12.8, -13.0, 3.0], requires_grad=True)
    y = fake_quantise(x, scale)
    assert torch.allclose(y, torch.tensor([0.0, 0.1, -0.3, 12.7, -12.8, 3.0]))   # activations: [-128, 127]
    assert torch.allclose(fake_quantise(x, scale, -LEVELS)[4], torch.tensor(-12.7))   # weights: [-127, 127]
    assert torch.allclose(y / scale, (y / scale).round())
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]   # clamped values get no gradient


def test_percentile_is_the_calibrators_histogram_edge():
    values = torch.from_numpy(np.random.default_rng(0).exponential(1.0, 200_000).astype(np.float32))
    got = percentile(values, 99.9)
    exact = float(np.percentile(values.numpy(), 99.9))
    assert abs(got - exact) <= float(values.max()) / 2048 + 1e-6
    assert percentile(torch.zeros(10), 99.99) > 0   # an all-zero tensor still gets a usable scale


def test_without_quantisation_it_is_the_image_analysis():
    net = diagonal_model()
    qat = QuantisationAwareImageAnalysis.from_analysis(net.analysis.image, net.cfg,
                                                       quantise_weights=False, quantise_activations=False)
    assert qat.state_dict().keys() == net.analysis.image.state_dict().keys()   # checkpoints unchanged
    x = torch.rand(2, 3, 64, 96)
    for lam in (64.0, 8192.0):
        lam_t = torch.full((2,), lam)
        assert torch.allclose(qat(x, lam_t), net.analysis.image(x, lam_t), rtol=1e-4, atol=1e-5)


def test_quantisation_changes_y1_and_every_quantised_input_is_on_its_grid():
    net = diagonal_model()
    qat = make_quantisation_aware(net)
    x = torch.rand(1, 3, 64, 96)
    samples = [(x, torch.tensor([lam])) for lam in (64.0, 1024.0, 8192.0)]
    scales = qat.calibrate(samples, PERCENTILE)
    assert len(scales) == 3 and all(s > 0 for s in scales)
    lam = torch.tensor([1024.0])
    quantised = qat(x, lam)
    qat.quantise_weights = qat.quantise_activations = False
    assert not torch.allclose(quantised, qat(x, lam))
    qat.quantise_weights = True
    for i in (1, 2, 3):   # the Convs the Q/DQ graph quantises: int8 multiples of one scale per output channel
        steps = qat._weights(i)[0] / weight_scale(qat.folded(i)[0])
        assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= LEVELS + 1e-3
    assert torch.equal(qat._weights(0)[0], qat.folded(0)[0])   # the first stays in float (FP16 in TensorRT)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("calibration_photos")
    make_photos(d, 8, 96, 128)
    return d


def quantised_convs(m) -> list:
    """Each quantised Conv of the Q/DQ graph m as (pre-quantiser input, scale, dequantised input, output)."""
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = producers(m)
    rows = []
    for conv in (n for n in m.graph.node if n.op_type == "Conv"):
        dq = producer.get(conv.input[0])
        if dq is not None and dq.op_type == "DequantizeLinear":
            q = producer[dq.input[0]]
            rows.append((q.input[0], float(init[q.input[1]]), conv.input[0], conv.output[0]))
    return rows


def qdq_activation_scales(path) -> list:
    """The per-tensor scales of the quantised Conv inputs in the Q/DQ graph, in graph order."""
    return [scale for _, scale, _, _ in quantised_convs(onnx.load(str(path)))]


def test_it_computes_what_onnx_runtime_runs_in_the_qdq_graph(default_model, photo_dir, tmp_path):
    """The bundled model, quantised by the real calibration code on real files: the emulation picks the
    calibrator's activation scales and lands far closer to the INT8 graph's y1 than the float analysis does.
    (Without the frame-edge channel rescaling of calibration/flat_field_ranges.py and the pooled ranges of
    calibration/pooled_ranges.py, which it does not model.) Error against the graph's y1, emulated over plain,
    4 synthetic images x λ 64 / 1024 / 8192: f9518dda 0.15-0.25, b7f73249 (session 48) 0.34-0.53 (0.31-0.53 once
    activations clamped at -128 as the graph's do, session 49). Given the same
    inputs each quantised Conv computes what the graph's does (to 1e-8); what is left comes from float noise
    that rounds 0.01-0.02 % of the second Conv's inputs to the other level, and those flips spread: 5 % of the
    last Conv's inputs flip for b7f73249, 0.4 % for f9518dda (seed 99, λ 8192). A TensorRT engine's own float
    order would flip others, so the bound asks for a clear gain over the plain analysis, not one model's margin."""
    image_onnx, latent_onnx = export_stamped(default_model, tmp_path)
    cal = CalibrationSet(photo_dir, count=8, crop=(96, 128), varied=None)   # nor pooled ranges
    quantize_encoder(image_onnx, tmp_path / "encoder.int8.onnx", cal, fit_edges=False)
    net = NestedLatentCodec(default_model.torch_model.cfg)
    net.load_state_dict(default_model.torch_model.state_dict())
    qat = make_quantisation_aware(net)
    for gdn, ref in zip(qat.gdns, default_model.torch_model.analysis.image.gdns):
        gdn.elementwise = ref.elementwise
    scales = Calibration(cal)(qat)
    assert np.allclose(scales, qdq_activation_scales(tmp_path / "encoder.int8.onnx"), rtol=0.01)
    x = synthetic_image(96, 128, seed=99).transpose(2, 0, 1)[None].astype(np.float32) / 255
    for lam in (64.0, 8192.0):
        ort_int8 = OrtTransforms.from_files(tmp_path / "encoder.int8.onnx", latent_onnx, lam).image(x)
        with torch.no_grad():
            emulated = qat(torch.from_numpy(x), torch.tensor([lam])).numpy()
            qat.quantise_weights = qat.quantise_activations = False
            plain = qat(torch.from_numpy(x), torch.tensor([lam])).numpy()
            qat.quantise_weights = qat.quantise_activations = True
        err = lambda a: float(np.sqrt(np.mean((a - ort_int8) ** 2)))
        assert err(emulated) < 0.6 * err(plain), (lam, err(emulated), err(plain))


def test_each_quantised_conv_computes_what_the_graph_does_given_the_graphs_own_input(default_model, photo_dir,
                                                                                       tmp_path):
    """The arithmetic, Conv by Conv, without the float noise that the y1 test above lets spread from layer to
    layer: fed the tensor the graph quantises, the emulation's quantiser (at the graph's scale) gives the
    graph's dequantised input, and its folded, per-channel quantised weights give the graph's Conv output."""
    image_onnx, _ = export_stamped(default_model, tmp_path)
    cal = CalibrationSet(photo_dir, count=8, crop=(96, 128), varied=None)
    quantize_encoder(image_onnx, tmp_path / "encoder.int8.onnx", cal, fit_edges=False)
    graph = onnx.load(str(tmp_path / "encoder.int8.onnx"))
    rows = quantised_convs(graph)
    assert len(rows) == 3   # every Conv but the first, which stays in float
    names = sorted({n for row in rows for n in (row[0], row[2], row[3])})
    session = output_session(graph, names)
    qat = QuantisationAwareImageAnalysis.from_analysis(default_model.torch_model.analysis.image,
                                                       default_model.torch_model.cfg)
    x = synthetic_image(96, 128, seed=99).transpose(2, 0, 1)[None].astype(np.float32) / 255
    lowest = []
    for lam in (64.0, 8192.0):
        got = dict(zip(names, session.run(names, {"x": x, "lam": np.array([lam], np.float32)})))
        for i, (before, scale, dequantised, out) in enumerate(rows, start=1):
            lowest.append(float(np.round(got[dequantised] / scale).min()))
            quantised = fake_quantise(torch.from_numpy(got[before]), torch.tensor(scale)).numpy()
            assert np.mean(quantised != got[dequantised]) < 1e-4, (lam, i)   # ties may round either way
            with torch.no_grad():
                u = F.conv2d(torch.from_numpy(got[dequantised]), *qat._weights(i), stride=2, padding=2).numpy()
            rms = float(np.sqrt(np.mean((u - got[out]) ** 2)))
            assert rms < 1e-5 * float(np.abs(got[out]).mean()), (lam, i, rms)
    assert min(lowest) == -128   # the graph uses the level a symmetric [-127, 127] clamp would not have


def test_quantisation_aware_training_moves_only_the_analysis(tmp_path, folders):
    start = diagonal_model()
    export_float_model(start, tmp_path / "start.npz", {"step": 0})
    train(TrainConfig(**config(tmp_path, folders, steps=4, lift_stuck_gdn=False, init_from=str(tmp_path / "start.npz"),
                               quantisation_aware=True, recalibrate_every=2, train_only=["analysis."],
                               calibration_dir=str(folders[0]), val_coded=False)))
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("INT8 activation scales") >= 3   # at the start, at step 2, before the validation at 3
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    before = load_float(tmp_path / "start.npz")[0].state_dict()   # model files hold float16
    assert state.keys() == before.keys()   # the same model file: the decoder takes its bitstreams
    moved = {k for k in state if not torch.equal(state[k], before[k])}
    assert moved and all(k.startswith("analysis.") for k in moved)
    assert any(k.startswith("analysis.image.convs.3") for k in moved)


def test_quantisation_aware_training_needs_folded_gdns_and_a_matching_train_only(tmp_path, folders):
    with pytest.raises(CodecError, match="diagonal GDNs"):   # a fresh model's Γ has a pedestal off the diagonal
        train(TrainConfig(**config(tmp_path, folders, steps=2, quantisation_aware=True,
                                   calibration_dir=str(folders[0]))))
    with pytest.raises(CodecError, match="matches no parameter"):
        train(TrainConfig(**config(tmp_path, folders, steps=2, train_only=["encoder."])))


def model_with_int8_analysis(tmp_path, perturb: str = "analysis.image.convs.1.weight"):
    """A small model file and a twin of its weights with `perturb` changed, as a quantisation-aware run
    would leave them; returns (arrays of the model, path of the twin's weights, the twin)."""
    from codec.export_model import build_model_arrays

    net = diagonal_model()
    images = [torch.from_numpy(synthetic_image(64, 96, s).transpose(2, 0, 1).copy()).float().div(255)[None]
              for s in range(2)]
    arrays = build_model_arrays(net.eval(), images)
    twin = NestedLatentCodec(net.cfg)
    twin.load_state_dict(weights.float_state_dict(arrays))
    with torch.no_grad():
        dict(twin.named_parameters())[perturb].add_(0.05)
    export_float_model(twin, tmp_path / "tuned.npz", {"step": 7})
    return arrays, tmp_path / "tuned.npz", twin


def test_a_model_file_carries_the_int8_analysis_beside_the_float_one(tmp_path):
    arrays, tuned_path, twin = model_with_int8_analysis(tmp_path)
    plain_path = tmp_path / "plain.npz"
    weights.save_arrays(plain_path, arrays, {"config": twin.cfg.to_dict()})
    assert CodecModel.load(plain_path).int8_image_analysis is None
    int8_arrays, info = int8_analysis_arrays(arrays, tuned_path)
    assert info["step"] == 7 and all(k.startswith("int8/analysis.image.") for k in int8_arrays)
    weights.save_arrays(tmp_path / "both.npz", {**arrays, **int8_arrays}, {"config": twin.cfg.to_dict()})
    model = CodecModel.load(tmp_path / "both.npz")
    tuned = model.int8_image_analysis
    expected = twin.analysis.image.convs[1].weight.half().float()
    assert torch.equal(tuned.convs[1].weight, expected)
    assert not torch.equal(model.torch_model.analysis.image.convs[1].weight, expected)   # the float one stays


def test_an_int8_analysis_tuned_against_other_weights_is_refused(tmp_path):
    arrays, tuned_path, _ = model_with_int8_analysis(tmp_path, perturb="synthesis.convs.0.weight")
    with pytest.raises(CodecError, match="not tuned against these weights .synthesis.convs.0.weight"):
        int8_analysis_arrays(arrays, tuned_path)
