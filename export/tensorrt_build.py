"""TensorRT 10 engine building (`build_serialized_network`), written against the TensorRT 10 Python API.

Two engines, as the analysis has two graphs: the image engine, whose optimisation profile spans the
analysis windows (16 px up to the 576 px a 512 px window with 32 px context needs, capped by --max-size),
and the latent engine, whose profile spans y1 grids up to the largest photo (--max-size / 16).
Precision: FP16 by default; with a Q/DQ graph, INT8 where the Q/DQ nodes say so (explicit quantisation)
and FP16 elsewhere. The timing cache is loaded before and saved after every build, so rebuilding on
the same device takes seconds instead of minutes. Engines land in a directory keyed by TensorRT version
+ device, each with the JSON description edge/backends/tensorrt_backend.py checks before loading.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from codec.tiling import STRIDE, WINDOW_PX   # WINDOW_PX: the largest input the image engine gets
from edge.backends.tensorrt_backend import engine_key, import_tensorrt, runtime_identity, sidecar_path


class EngineBuildError(Exception):
    pass


def toolchain() -> dict:
    """TensorRT + CUDA device, or raises BackendError saying which is missing."""
    return runtime_identity()


def image_profile(max_hw) -> dict:
    h, w = (min(WINDOW_PX, math.ceil(v / STRIDE) * STRIDE) for v in max_hw)
    return {"x": ((1, 3, STRIDE, STRIDE), (1, 3, h, w), (1, 3, h, w))}


def latent_profile(max_hw, channels: int) -> dict:
    h1, w1 = (math.ceil(v / STRIDE) for v in max_hw)
    return {"y1": ((1, channels, 1, 1), (1, channels, h1, w1), (1, channels, h1, w1))}


def build_engine(onnx_path, engine_path, profile: dict, int8: bool, workspace_mb: int, timing_cache: Path,
                 meta: dict) -> dict:
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"{onnx_path}: TensorRT parser failed: " + " | ".join(errors[:5]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes, no calibrator
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: build_serialized_network failed (see TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = {**meta, "profile": {k: [list(s) for s in v] for k, v in profile.items()},
            "workspace_mb": workspace_mb, "build_seconds": round(time.perf_counter() - t0, 1)}
    sidecar_path(engine_path).write_text(json.dumps(meta, indent=1))
    return {"engine": str(engine_path), **meta}


def build_engines(image_onnx, latent_onnx, out_dir, model, max_hw, int8: bool, workspace_mb: int = 1024) -> dict:
    """Both engines into out_dir/engines/<TensorRT version + device>/."""
    identity = toolchain()
    keyed = Path(out_dir) / "engines" / engine_key(identity)
    keyed.mkdir(parents=True, exist_ok=True)
    timing_cache = keyed / "timing.cache"
    base = {**identity, "model_id": model.model_id.hex()}
    precision = "int8" if int8 else "fp16"
    latent_name = "encoder_latent.fp16.engine"
    latent = build_engine(latent_onnx, keyed / latent_name, latent_profile(max_hw, model.cfg.c1),
                          False, workspace_mb, timing_cache, {**base, "precision": "fp16", "onnx": str(latent_onnx)})
    image = build_engine(image_onnx, keyed / f"encoder.{precision}.engine", image_profile(max_hw), int8,
                         workspace_mb, timing_cache, {**base, "precision": precision, "onnx": str(image_onnx),
                                                      "latent_engine": latent_name})
    return {"passed": True, "key": engine_key(identity), "image": image, "latent": latent}
