"""TensorRT 10 backend: deserialised engines run with execute_async_v3 and explicit tensor addresses.

An engine runs only on the TensorRT version and GPU that built it. Every engine therefore travels with a
JSON sidecar (`<engine>.json`, written by export/build_engine.py) naming TensorRT version, device and
compute capability, the model id and the companion latent engine; engines live in a cache directory
keyed by TensorRT version + device. A mismatch is refused with a message saying how to rebuild, before
TensorRT ever sees the bytes (it would otherwise fail with an opaque deserialisation error).

Device memory and the CUDA stream come from PyTorch (the JetPack torch wheel is CUDA-enabled), so no
extra CUDA binding is needed. Nothing here imports tensorrt until a backend is created.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from . import BackendError, register

log = logging.getLogger("edge.backends")

SIDECAR_SUFFIX = ".json"
PRECISIONS = ("int8", "fp16", "fp32")   # preference when picking from a cache directory
REBUILD_HINT = "rebuild it on this device with `python export/build_engine.py --output-dir DIR [--int8]`"


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise BackendError(f"tensorrt is not installed ({e}); on a Jetson it comes with JetPack 6") from None
    return tensorrt


def cuda_device() -> dict:
    """Name and compute capability of CUDA device 0, or a clear error when there is none."""
    import torch
    if not torch.cuda.is_available():
        raise BackendError("no CUDA device (torch.cuda.is_available() is False)")
    major, minor = torch.cuda.get_device_capability(0)
    return {"device": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def runtime_identity() -> dict:
    """What an engine must have been built for to run here: TensorRT version + device."""
    trt = import_tensorrt()
    return {"tensorrt": trt.__version__, **cuda_device()}


def engine_key(identity: dict) -> str:
    """Cache directory name, e.g. trt10.3.0.30_orin_sm87."""
    device = re.sub(r"[^a-z0-9]+", "-", identity["device"].lower()).strip("-")
    return f"trt{identity['tensorrt']}_{device}_sm{identity['compute_capability'].replace('.', '')}"


def sidecar_path(engine_path) -> Path:
    return Path(str(engine_path) + SIDECAR_SUFFIX)


def read_sidecar(engine_path) -> dict:
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise BackendError(f"{engine_path}: no such TensorRT engine file")
    side = sidecar_path(engine_path)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise BackendError(f"{engine_path}: no {side.name} next to it saying which TensorRT and GPU built it; "
                           + REBUILD_HINT) from None
    except (OSError, ValueError) as e:
        raise BackendError(f"{side}: unreadable engine description ({e})") from None
    missing = [k for k in ("tensorrt", "device", "compute_capability", "model_id", "precision") if k not in meta]
    if missing:
        raise BackendError(f"{side}: engine description lacks {', '.join(missing)}")
    return meta


def check_compatible(meta: dict, identity: dict, model_id: bytes, engine_path) -> None:
    """Refuse an engine built elsewhere or for another model, naming what differs."""
    for key in ("tensorrt", "device", "compute_capability"):
        if str(meta[key]) != str(identity[key]):
            raise BackendError(f"{engine_path}: built for {key} {meta[key]}, this machine has {identity[key]}; "
                               + REBUILD_HINT)
    if meta["model_id"] != model_id.hex():
        raise BackendError(f"{engine_path}: built from model {meta['model_id']}, this encoder has model "
                           f"{model_id.hex()}; " + REBUILD_HINT)


def find_in_cache(cache_dir, identity: dict) -> Path:
    """The image engine for this TensorRT + device in a cache directory (INT8 preferred, then FP16)."""
    keyed = Path(cache_dir) / engine_key(identity)
    for precision in PRECISIONS:
        path = keyed / f"encoder.{precision}.engine"
        if path.is_file():
            return path
    raise BackendError(f"{cache_dir}: no engine for {engine_key(identity)}; " + REBUILD_HINT)


def latent_engine_of(path: Path, meta: dict) -> Path:
    """The latent-chain engine named in the image engine's description, next to it."""
    name = meta.get("latent_engine")
    latent = path.with_name(name) if name else None
    if latent is None or not latent.is_file():
        raise BackendError(f"{path}: its latent engine {name!r} is missing next to it")
    return latent


class EngineRunner:
    """One deserialised engine with its execution context; numpy in, numpy out."""

    def __init__(self, trt, path: Path):
        import torch

        self.torch = torch
        self.path = path
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendError(f"{path}: TensorRT could not deserialise this engine (corrupt, or built by "
                               "another TensorRT version or GPU); " + REBUILD_HINT)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream()

    def _check_profile(self, name: str, shape: tuple):
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise BackendError(f"{self.path}: input {name} of shape {shape} is outside the engine's "
                               f"optimisation profile {tuple(lo)}..{tuple(hi)}; rebuild with a larger --max-size")

    def run(self, feeds: dict) -> list:
        torch = self.torch
        keep = []  # device tensors must outlive the asynchronous execution
        for name in self.inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=np.float32)
            if len(arr.shape) == 4:
                self._check_profile(name, arr.shape)
            self.context.set_input_shape(name, arr.shape)
            dev = torch.from_numpy(arr).to("cuda", non_blocking=False)
            keep.append(dev)
            self.context.set_tensor_address(name, dev.data_ptr())
        results = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dev = torch.empty(shape, dtype=torch.float32, device="cuda")
            results.append(dev)
            self.context.set_tensor_address(name, dev.data_ptr())
        # inputs were copied on the default stream: make ours wait for them
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError(f"{self.path}: TensorRT execution failed")
        self.stream.synchronize()
        del keep
        return [r.cpu().numpy() for r in results]


class TrtTransforms:
    def __init__(self, image: EngineRunner, latent: EngineRunner, lam: float):
        self.image_runner, self.latent_runner = image, latent
        self.lam = np.array([lam], dtype=np.float32)

    def image(self, x: np.ndarray) -> np.ndarray:
        return self.image_runner.run({"x": x, "lam": self.lam})[0]

    def latent(self, y1: np.ndarray) -> list:
        return self.latent_runner.run({"y1": y1, "lam": self.lam})


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, model, engine=None, engine_cache=None, **_):
        if engine is not None and Path(engine).is_dir():  # --engine DIR means an engine cache directory
            engine, engine_cache = None, engine
        if engine is None and engine_cache is None:
            raise BackendError("no engine given (--engine PATH or an engine cache directory)")
        identity_first = engine is None  # a cache lookup needs the identity before any file
        identity = runtime_identity() if identity_first else None
        path = Path(engine) if engine is not None else find_in_cache(engine_cache, identity)
        meta = read_sidecar(path)            # file problems are reported even without a GPU
        latent_path = latent_engine_of(path, meta)
        identity = identity or runtime_identity()
        check_compatible(meta, identity, model.model_id, path)
        check_compatible(read_sidecar(latent_path), identity, model.model_id, latent_path)
        trt = import_tensorrt()
        self.meta = meta
        self.image_runner = EngineRunner(trt, path)
        self.latent_runner = EngineRunner(trt, latent_path)

    def describe(self) -> str:
        return f"tensorrt {self.meta['tensorrt']} ({self.meta['device']}, {self.meta['precision']}, {self.image_runner.path})"

    def transforms(self, lam: float):
        return TrtTransforms(self.image_runner, self.latent_runner, lam)


register("tensorrt", TensorRTBackend)
