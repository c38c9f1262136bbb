"""The analysis side as ONNX graphs, and an ONNX Runtime backend for the tiled encoder.

Two graphs, because the image analysis runs window by window while the latent chain runs once on the
whole (small) y1 grid:
- image analysis: x (1,3,H,W) float32 in [0,1], lam (1,) -> y1 (1,C,H/16,W/16); H, W dynamic;
- latent analysis: y1 (1,C,h,w), lam (1,) -> y2, ..., yL.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .inference_analysis import inference_image_analysis

OPSET = 17


class _LatentChain(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = blocks

    def forward(self, y1, lam):
        ys, y = [], y1
        for block in self.blocks:
            y = block(y, lam)
            ys.append(y)
        return tuple(ys)


def export_image_analysis(image, path, opset: int = OPSET):
    """image: an ImageAnalysis module (the model's, or its INT8-tuned twin)."""
    x = torch.rand(1, 3, 64, 96)
    lam = torch.tensor([256.0])
    graph = inference_image_analysis(image)   # an exact rewrite with fewer memory passes
    torch.onnx.export(graph, (x, lam), str(path), input_names=["x", "lam"], output_names=["y1"],
                      dynamic_axes={"x": {2: "height", 3: "width"}, "y1": {2: "h1", 3: "w1"}},
                      opset_version=opset, dynamo=False)


def export_latent_analysis(net, path, opset: int = OPSET):
    levels = len(net.analysis.latent) + 1
    y1 = torch.randn(1, net.cfg.c1, 8, 12)
    lam = torch.tensor([256.0])
    outputs = [f"y{l}" for l in range(2, levels + 1)]
    dyn = {"y1": {2: "h1", 3: "w1"}}
    dyn.update({name: {2: f"h{name[1:]}", 3: f"w{name[1:]}"} for name in outputs})
    torch.onnx.export(_LatentChain(net.analysis.latent), (y1, lam), str(path), input_names=["y1", "lam"],
                      output_names=outputs, dynamic_axes=dyn, opset_version=opset, dynamo=False)


def export_analysis(net, out_dir) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_path, latent_path = out_dir / "encoder.onnx", out_dir / "encoder_latent.onnx"
    export_image_analysis(net.analysis.image, image_path)
    export_latent_analysis(net, latent_path)
    return image_path, latent_path


def session_options(ort, threads: int = 0):
    """Session options for the encoder graphs on the CPU provider.

    Spinning off: the image and latent sessions each keep a pool of intra-op threads, and with spinning on
    (ONNX Runtime's default) one pool's idle threads spin on the cores the other needs. Measured on 2
    threads (session 6, INT8 CPU graph, blade frames): image analysis 0.225 -> 0.163 s/MP, latent chain
    0.049 -> 0.013 s/MP; one thread is unaffected (no pool).
    """
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OrtTransforms:
    """The analysis through ONNX Runtime sessions (CPU or CUDA provider), same interface as TorchTransforms."""

    def __init__(self, image_session, latent_session, lam: float):
        self.image_session = image_session
        self.latent_session = latent_session
        self.lam = np.array([lam], dtype=np.float32)

    @classmethod
    def from_files(cls, image_path, latent_path, lam: float, providers=("CPUExecutionProvider",), threads=0):
        import onnxruntime as ort

        opts = session_options(ort, threads)
        make = lambda p: ort.InferenceSession(str(p), opts, providers=list(providers))
        return cls(make(image_path), make(latent_path), lam)

    def image(self, x: np.ndarray) -> np.ndarray:
        return self.image_session.run(None, {"x": x, "lam": self.lam})[0]

    def latent(self, y1: np.ndarray) -> list:
        return self.latent_session.run(None, {"y1": y1, "lam": self.lam})


# --- Added for the edge backends (issue 4): tie exported graphs to the model that made them. ---
MODEL_ID_KEY = "bladecodec.model_id"


def stamp_model_id(path, model_id: bytes):
    """Record the model id in the graph's metadata, so a backend can refuse a graph from another model
    (its bitstreams would carry this model's id but decode to garbage)."""
    import onnx

    m = onnx.load(str(path))
    del m.metadata_props[:]  # replace, never duplicate, the key
    m.metadata_props.add(key=MODEL_ID_KEY, value=model_id.hex())
    onnx.save(m, str(path))


def load_graph(path, load_external_data: bool = True):
    """onnx.load, with one line instead of protobuf's DecodeError when the file is not a graph."""
    import onnx

    from .errors import CodecError, first_line
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except FileNotFoundError:
        raise CodecError(f"{path}: no such ONNX file") from None
    except Exception as e:   # protobuf's DecodeError and friends
        raise CodecError(f"{path}: not an ONNX graph ({first_line(e)})") from None


def stamp_mismatch(path, stamped: str | None, model) -> str | None:
    """Why a graph stamped `stamped` must not run with `model` (its latents would be coded under this model's
    priors), or None when it may. Unstamped graphs pass."""
    if stamped is None or stamped == model.model_id.hex():
        return None
    return (f"{path}: exported from model {stamped}, not from {model.model_id.hex()} "
            "(export the graphs again from this model)")


def check_stamp(path, model) -> None:
    """stamp_mismatch for a graph file, as a CodecError."""
    from .errors import CodecError
    props = load_graph(path, load_external_data=False).metadata_props
    problem = stamp_mismatch(path, next((p.value for p in props if p.key == MODEL_ID_KEY), None), model)
    if problem:
        raise CodecError(problem)


def export_stamped(model, out_dir) -> tuple[Path, Path]:
    """export_analysis for a loaded CodecModel, both graphs stamped with its model id."""
    paths = export_analysis(model.torch_model, out_dir)
    for p in paths:
        stamp_model_id(p, model.model_id)
    return paths


INT8_SOURCE_GRAPH = "encoder.qat.onnx"


def export_int8_source(model, out_dir) -> Path | None:
    """The float graph of the model's INT8-tuned image analysis (quantisation_aware.py), stamped, which
    INT8 graphs are calibrated and quantised from; None when the model has no such analysis (then INT8
    graphs come from encoder.onnx). It feeds the same encoder_latent.onnx."""
    if model.int8_image_analysis is None:
        return None
    path = Path(out_dir) / INT8_SOURCE_GRAPH
    export_image_analysis(model.int8_image_analysis, path)
    stamp_model_id(path, model.model_id)
    return path
