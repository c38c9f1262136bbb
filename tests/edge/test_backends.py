"""edge/backends: every backend's bitstreams decode on the ground decoder, the fallback order, and a
clear refusal of missing, corrupt or mismatched ONNX graphs and TensorRT engines."""
import json
import logging

import pytest

from codec import api
from codec.imageio import Photo
from codec.lambdas import index_of_lambda, lambda_of_index
from codec.onnx_export import export_stamped
from edge.backends import BACKENDS, BackendError, DEFAULT_ORDER, select_backend
from edge.backends import onnxruntime_backend, tensorrt_backend
from edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge.backends.tensorrt_backend import TensorRTBackend, check_compatible, engine_key, read_sidecar
from export import parity
from tests.conftest import DATA, need_data, synthetic_image


@pytest.fixture(scope="module")
def graphs(tiny_model, tmp_path_factory):
    """The tiny model's FP32 graphs and an INT8 graph calibrated on 4 small blade crops."""
    from calibration.calibration_set import CalibrationSet
    from calibration.quantize import quantize_encoder

    out = tmp_path_factory.mktemp("edge_onnx")
    image, latent = export_stamped(tiny_model, out)
    int8 = out / "encoder.int8.onnx"
    quantize_encoder(image, int8, CalibrationSet(need_data(DATA / "blades" / "dtu_nordtank"), 4, (128, 192),
                                                 need_data(DATA / "train")))
    return {"fp32": image, "int8": int8, "latent": latent}


def _encode(model, backend, lam=600.0):
    photo = Photo(synthetic_image(180, 260, seed=3))
    index = index_of_lambda(lam)
    return api.compress(model, photo, index, transforms=backend.transforms(lambda_of_index(index)),
                        keep_latents=True)


def test_registry_and_order():
    assert set(BACKENDS) == {"torch", "onnxruntime", "tensorrt"}
    assert DEFAULT_ORDER == ("tensorrt", "onnxruntime", "torch")


@pytest.mark.parametrize("kind", ["torch", "fp32", "int8"])
def test_every_backend_decodes_on_the_ground(tiny_model, graphs, kind):
    if kind == "torch":
        backend = BACKENDS["torch"](tiny_model)
    else:
        backend = OnnxRuntimeBackend(tiny_model, onnx=graphs[kind], providers="cpu")
        assert backend.int8 == (kind == "int8") and "CPUExecutionProvider" in backend.describe()
    ok, detail = parity.decodes_on_ground(tiny_model, _encode(tiny_model, backend))
    assert ok, detail


def test_a_model_with_z1_wider_than_z2_decodes_through_onnx_runtime(context_model, tmp_path):
    """The exported latent graph takes z1's channel count, not the other levels'."""
    image, _ = export_stamped(context_model, tmp_path)
    assert context_model.cfg.c1 != context_model.cfg.latent_channels
    backend = OnnxRuntimeBackend(context_model, onnx=image, providers="cpu")
    ok, detail = parity.decodes_on_ground(context_model, _encode(context_model, backend))
    assert ok, detail


def test_cpu_sessions_do_not_spin_between_runs(tiny_model, graphs):
    """The image and latent sessions alternate; a spinning pool would take the cores the other needs."""
    backend = OnnxRuntimeBackend(tiny_model, onnx=graphs["int8"], providers="cpu", threads=2)
    for session in (backend.image_session, backend.latent_session):
        opts = session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert opts.intra_op_num_threads == 2


def test_fallback_skips_tensorrt_and_logs_the_choice(tiny_model, graphs, caplog):
    caplog.set_level(logging.INFO, logger="edge.backends")
    backend = select_backend(tiny_model, onnx=graphs["fp32"], providers="cpu")
    assert backend.name == "onnxruntime"
    assert "encoder backend tensorrt skipped" in caplog.text
    assert "encoder backend: onnxruntime" in caplog.text


def test_the_edge_service_runs_the_configured_int8_graph(tiny_model, graphs, tmp_path):
    """backend.onnx in edge.yaml reaches the backend: the service logs the INT8 graph, skips tensorrt (no
    engine configured) and its spooled bitstream decodes on the ground."""
    from deploy.localrun import Service, drop_photo, free_port, write_yaml
    from tests.deploy.harness import make_photos, wait_until

    cfg = write_yaml(tmp_path / "edge.yaml", {
        "model": tiny_model.path, "inbox": tmp_path / "inbox", "spool": tmp_path / "spool", "processed": None,
        "backend": {"onnx": graphs["int8"], "providers": "cpu"}, "poll_interval_s": 0.05,
        "mqtt": {"port": free_port(), "connect_wait_s": 0}})   # no broker: the photo stays spooled
    (tmp_path / "inbox").mkdir()
    edge = Service("edge", cfg, tmp_path / "edge.log").start()
    try:
        assert edge.wait_log("edge ready", 90), edge.log()
        drop_photo(make_photos(tmp_path / "src", 1)[0], tmp_path / "inbox")
        assert wait_until(lambda: "spooled " in edge.log(), 60), edge.log()
    finally:
        assert edge.stop() == 0
    assert "encoder backend tensorrt skipped: no engine given" in edge.log()
    assert f"encoder backend: onnxruntime (CPUExecutionProvider, INT8 Q/DQ, {graphs['int8']})" in edge.log()
    [bitstream] = (tmp_path / "spool").glob("*.nlic")
    assert api.decompress(tiny_model, bitstream.read_bytes()).pixels.shape == (48, 64, 3)


def test_fallback_reaches_torch(tiny_model, tmp_path):
    backend = select_backend(tiny_model, onnx=tmp_path / "missing.onnx")
    assert backend.name == "torch"


def test_no_backend_at_all_is_one_clear_error(tiny_model, tmp_path):
    with pytest.raises(BackendError, match="no encoder backend could be loaded: onnxruntime: .*missing.onnx"):
        select_backend(tiny_model, ("onnxruntime",), onnx=tmp_path / "missing.onnx")


def test_onnx_without_a_path_exports_once_into_the_cache(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(onnxruntime_backend, "CACHE_DIR", tmp_path)
    backend = OnnxRuntimeBackend(tiny_model, providers="cpu")
    assert backend.image_path.parent == tmp_path / tiny_model.model_id.hex()
    ok, detail = parity.decodes_on_ground(tiny_model, _encode(tiny_model, backend))
    assert ok, detail


def test_missing_corrupt_and_foreign_onnx_files(tiny_model, default_model, graphs, tmp_path):
    with pytest.raises(BackendError, match="missing.onnx: no such ONNX file"):
        OnnxRuntimeBackend(tiny_model, onnx=tmp_path / "missing.onnx")
    corrupt = tmp_path / "encoder.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(BackendError, match="encoder.onnx: not a usable ONNX model"):
        OnnxRuntimeBackend(tiny_model, onnx=corrupt, latent_onnx=graphs["latent"])
    with pytest.raises(BackendError, match="no such ONNX file"):  # latent graph not beside the image graph
        OnnxRuntimeBackend(tiny_model, onnx=graphs["fp32"], latent_onnx=tmp_path / "nope.onnx")
    with pytest.raises(BackendError, match="exported from model"):
        OnnxRuntimeBackend(default_model, onnx=graphs["fp32"])
    with pytest.raises(BackendError, match="inputs"):  # graphs swapped
        OnnxRuntimeBackend(tiny_model, onnx=graphs["latent"], latent_onnx=graphs["fp32"])
    with pytest.raises(BackendError, match="CUDAExecutionProvider is not in this onnxruntime build"):
        OnnxRuntimeBackend(tiny_model, onnx=graphs["fp32"], providers="cuda")


IDENTITY = {"tensorrt": "10.3.0", "device": "Orin (nvgpu)", "compute_capability": "8.7"}


def _engine(tmp_path, model, **changes):
    path = tmp_path / "encoder.fp16.engine"
    path.write_bytes(b"not really an engine")
    (tmp_path / "encoder_latent.fp16.engine").write_bytes(b"x")
    meta = {**IDENTITY, "model_id": model.model_id.hex(), "precision": "fp16",
            "latent_engine": "encoder_latent.fp16.engine", **changes}
    for p in (path, tmp_path / "encoder_latent.fp16.engine"):
        tensorrt_backend.sidecar_path(p).write_text(json.dumps(meta))
    return path


def test_engine_key_names_version_and_device():
    assert engine_key(IDENTITY) == "trt10.3.0_orin-nvgpu_sm87"


def test_missing_and_corrupt_engine_files(tiny_model, tmp_path):
    with pytest.raises(BackendError, match="missing.engine: no such TensorRT engine file"):
        TensorRTBackend(tiny_model, engine=tmp_path / "missing.engine")
    lone = tmp_path / "lone.engine"
    lone.write_bytes(b"\x00" * 64)
    with pytest.raises(BackendError, match="no lone.engine.json next to it"):
        TensorRTBackend(tiny_model, engine=lone)
    (tmp_path / "lone.engine.json").write_text("{not json")
    with pytest.raises(BackendError, match="unreadable engine description"):
        read_sidecar(lone)
    (tmp_path / "lone.engine.json").write_text("{}")
    with pytest.raises(BackendError, match="lacks tensorrt, device"):
        read_sidecar(lone)


def test_engine_built_elsewhere_is_refused(tiny_model, default_model, tmp_path):
    path = _engine(tmp_path, tiny_model)
    meta = read_sidecar(path)
    check_compatible(meta, IDENTITY, tiny_model.model_id, path)  # same everything: accepted
    with pytest.raises(BackendError, match="built for tensorrt 10.3.0, this machine has 10.7.0; rebuild"):
        check_compatible(meta, {**IDENTITY, "tensorrt": "10.7.0"}, tiny_model.model_id, path)
    with pytest.raises(BackendError, match="built for device Orin .*has NVIDIA GeForce"):
        check_compatible(meta, {**IDENTITY, "device": "NVIDIA GeForce RTX 4090"}, tiny_model.model_id, path)
    with pytest.raises(BackendError, match="built from model"):
        check_compatible(meta, IDENTITY, default_model.model_id, path)


def test_tensorrt_backend_without_tensorrt_says_so(tiny_model, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    path = _engine(tmp_path, tiny_model)
    with pytest.raises(BackendError, match="tensorrt is not installed"):
        TensorRTBackend(tiny_model, engine=path)
    (tmp_path / "encoder_latent.fp16.engine").unlink()
    with pytest.raises(BackendError, match="latent engine 'encoder_latent.fp16.engine' is missing"):
        TensorRTBackend(tiny_model, engine=path)
    path = _engine(tmp_path, tiny_model, latent_engine=None)
    with pytest.raises(BackendError, match="latent engine None is missing"):
        TensorRTBackend(tiny_model, engine=path)
    with pytest.raises(BackendError, match="tensorrt is not installed"):  # a directory is an engine cache
        TensorRTBackend(tiny_model, engine=tmp_path)
