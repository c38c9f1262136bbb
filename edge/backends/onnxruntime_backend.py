"""ONNX Runtime backend: the exported analysis graphs (FP32 or Q/DQ INT8) on the CUDA or CPU provider.

Without an explicit graph it exports the model's own graphs once into a cache directory keyed by the
model id, so `--backend onnxruntime` works with nothing but the model file.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from codec.errors import first_line

from . import BackendError, register

log = logging.getLogger("edge.backends")

LATENT_NAME = "encoder_latent.onnx"
CACHE_DIR = Path(os.environ.get("BLADECODEC_CACHE", Path.home() / ".cache" / "bladecodec")) / "onnx"
PROVIDERS = {"cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu": ["CPUExecutionProvider"]}


def _import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError(f"onnxruntime is not installed ({e})") from None
    return onnxruntime


def choose_providers(ort, providers: str) -> list:
    """'auto' takes CUDA when this onnxruntime build has it, else CPU; 'cuda' insists on CUDA."""
    available = ort.get_available_providers()
    if providers == "auto":
        providers = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if providers not in PROVIDERS:
        raise BackendError(f"unknown ONNX Runtime provider choice {providers!r} (auto, cuda or cpu)")
    if PROVIDERS[providers][0] not in available:
        raise BackendError(f"{PROVIDERS[providers][0]} is not in this onnxruntime build (has {available})")
    return PROVIDERS[providers]


def open_session(ort, path, providers: list, threads: int = 0):
    """An InferenceSession, or one clear line saying why the file cannot be one."""
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"{path}: no such ONNX file")
    from codec.onnx_export import session_options
    opts = session_options(ort, threads)
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        raise BackendError(f"{path}: not a usable ONNX model ({first_line(e)})") from None


def check_graph(session, path, model, inputs: tuple, what: str):
    """Refuse a graph with the wrong inputs or one exported from another model."""
    names = tuple(i.name for i in session.get_inputs())
    if names != inputs:
        raise BackendError(f"{path}: inputs {names} are not those of the {what} graph {inputs}")
    from codec.onnx_export import MODEL_ID_KEY, stamp_mismatch
    problem = stamp_mismatch(path, session.get_modelmeta().custom_metadata_map.get(MODEL_ID_KEY), model)
    if problem:
        raise BackendError(problem)


def exported_graphs(model, cache_dir=None) -> tuple[Path, Path]:
    """The model's FP32 graphs, exported once per model id."""
    from codec.onnx_export import export_stamped

    out = Path(cache_dir or CACHE_DIR) / model.model_id.hex()
    image, latent = out / "encoder.onnx", out / LATENT_NAME
    if not (image.is_file() and latent.is_file()):
        log.info("exporting the analysis to ONNX in %s", out)
        # export beside, then rename: a crash mid-export must not leave a half-written cache entry
        tmp = out.with_name(f"{out.name}.part{os.getpid()}")
        export_stamped(model, tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first; its graphs are the same
            shutil.rmtree(tmp, ignore_errors=True)
    return image, latent


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model, onnx=None, latent_onnx=None, providers="auto", threads=0, **_):
        ort = _import_ort()
        self.model = model
        if onnx is None:
            image_path, latent_path = exported_graphs(model)
        else:
            image_path = Path(onnx)
            latent_path = Path(latent_onnx) if latent_onnx else image_path.with_name(LATENT_NAME)
        self.providers = choose_providers(ort, providers)
        self.image_session = open_session(ort, image_path, self.providers, threads)
        self.latent_session = open_session(ort, latent_path, self.providers, threads)
        check_graph(self.image_session, image_path, model, ("x", "lam"), "image analysis")
        check_graph(self.latent_session, latent_path, model, ("y1", "lam"), "latent analysis")
        self.image_path, self.latent_path = image_path, latent_path
        ops = _op_types(image_path)
        self.int8 = "DequantizeLinear" in ops or "QLinearConv" in ops
        self.precision = ("INT8 QLinearConv" if "QLinearConv" in ops else "INT8 Q/DQ" if self.int8 else "FP32")

    def describe(self) -> str:
        return f"onnxruntime ({self.providers[0]}, {self.precision}, {self.image_path})"

    def transforms(self, lam: float):
        from codec.onnx_export import OrtTransforms
        return CheckedTransforms(OrtTransforms(self.image_session, self.latent_session, lam), self.image_path)


class CheckedTransforms:
    """ONNX Runtime's own exceptions (out of memory, a shape the graph refuses) derive from no Python error
    type the service could tell from a bug: they leave as BackendError, the encoder's fault, not the photo's."""

    def __init__(self, inner, path):
        self.inner, self.path = inner, path

    def image(self, x):
        return self._run(self.inner.image, x)

    def latent(self, y1):
        return self._run(self.inner.latent, y1)

    def _run(self, fn, arr):
        try:
            return fn(arr)
        except Exception as e:
            raise BackendError(f"{self.path}: ONNX Runtime failed on an input of shape {arr.shape} "
                               f"({first_line(e)})") from None


def _op_types(path) -> set:
    """Operator types of a graph, read without loading weights into a second session."""
    try:
        import onnx
        return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    except Exception:  # onnx missing or unreadable: the session already loaded, so only the label suffers
        return set()


register("onnxruntime", OnnxRuntimeBackend)
