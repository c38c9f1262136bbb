"""Explicit INT8 quantisation of the image-analysis graph with ONNX Runtime `quantize_static`.

What TensorRT's explicit quantisation needs, and why each option is set:
- QDQ format (QuantizeLinear/DequantizeLinear pairs), which TensorRT fuses into INT8 kernels and ONNX
  Runtime also runs on CPU;
- symmetric int8 activations and weights, so every zero point is 0 (the parser refuses others);
- per-channel weight scales (axis 0 of each Conv weight): the output channels of a learned transform
  differ by orders of magnitude;
- percentile calibration (symmetric ranges at the 99.99th percentile of |activation|): min/max ranges, kept
  until session 7, let a few outliers stretch the 256 levels (see PERCENTILE below);
- but the input channels that smooth content at the frame edge drives past those ranges are rescaled
  first (flat_field_ranges.py, session 27): the percentile clipped them, and sky at a frame's edge lost
  1.5-1.9 dB at λ 8192 on model c126c68a;
- and the inner Convs' input ranges (all but the first and output Convs') are calibrated on the Nordtank crops
  pooled with 32 varied photos (pooled_ranges.py, session 36): Nordtank alone clipped content of other
  blade photos there, and lineage C lost 0.34 dB (Q/DQ) and 0.41 dB (CPU) on the drone frames, 0.06 and
  0.13 dB pooled;
- only Conv is quantised: the GDN (a Softsign in the exported graph), FiLM and λ embedding stay in float, where
  int8 would cost quality; biases stay float (TensorRT takes no int32 DequantizeLinear); Conv
  outputs are not requantised (the last one is y1, whose rounding to integers is the codec itself);
- the first Conv (over the pixels, 9 % of the MACs) stays in float, which TensorRT runs in FP16: on model
  dfd2b788 (session 9, 10 blade frames) quantising it cost 0.06 dB of the graph's 0.34.
The latent graph (`encoder_latent.onnx`, ~3 % of the MACs) is not quantised.

The graph quantised is already balanced for this: every model export rescales the analysis's channels
(cross-layer equalisation, `codec/activation_equalisation.py`; the same function) so that one scale per
tensor serves all channels. On model 9df5ec27 (session 11, 10 blade frames) that took the Q/DQ graph from
-0.55 to -0.07 dB BD-PSNR and the CPU variant from -0.52 to -0.12 dB. A model file may also carry an image
analysis fine-tuned for INT8 (`codec/quantisation_aware.py`); export/build_engine.py then quantises that one.

ONNX Runtime's CPU provider runs that Q/DQ graph as dequantise + float Conv (no faster than FP32), so a
second, CPU-only variant exists for drones that fall back to ONNX Runtime on the CPU (`target="cpu"`).
Since session 10 its QLinearConv outputs are dequantised per channel (channel_equalisation.py): 10 blade
frames, BD-PSNR -0.32 dB against -0.51 dB with one output range per tensor on model dfd2b788, -0.52 against
-0.77 dB on model 9df5ec27. Since session 13 its FiLM multiply-adds run as one BatchNormalization each
(film_batchnorm.py): the same outputs, one pass fewer over each tensor.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from codec.errors import CodecError
from codec.onnx_export import load_graph
from codec.service.atomic_files import write_bytes

from .calibration_set import CalibrationSet, make_reader
from .channel_equalisation import channel_ranges, divide_outputs, fold_into_dequantize
from .film_batchnorm import PREFIX as FILM_PREFIX
from .film_batchnorm import fuse_film
from .flat_field_ranges import shrink_edge_channels
from .onnx_graph import producers
from .pooled_ranges import pooled_overrides

log = logging.getLogger("calibration")

QUANTIZED_OPS = ["Conv"]
TARGETS = ("tensorrt", "cpu")
CPU_GRAPH = "encoder.int8cpu.onnx"   # conventional name of the CPU variant, next to encoder.onnx
# Calibration per target, measured with `python -m calibration rd` (10 blade frames). Model c781c158 (session
# 5): the CPU variant's uint8 activations lost 0.42 dB BD-PSNR with min/max ranges and 0.22 dB with percentile
# ranges; the symmetric Q/DQ graph lost 0.18 dB with min/max. Model 3d9427f0 (session 7): the Q/DQ graph lost
# 0.37 dB with min/max and 0.17 dB with symmetric ranges at the 99.99th percentile. Model 36621aa3 (session 8):
# the Q/DQ graph 0.21 dB, the CPU variant 0.50 dB (its loss grows with training, most of it at λ 8192), and
# 0.28 dB once its first Conv stayed in float (session 9, float_convs). Model dfd2b788 (session 9, 10,000
# steps further): the Q/DQ graph 0.34 dB, 0.28 with its first Conv in float (now the default); the CPU
# variant 0.51 dB (first Conv in float), 0.31 with the third too. Model 9df5ec27 (session 10, 7,200 steps
# further): the Q/DQ graph 0.55 dB (0.79 at the 99.999th percentile, 0.89 at 99.95), the CPU variant 0.77 dB,
# 0.52 with per-channel output ranges. The same weights equalised (181f9d0b, session 11): 0.07 and 0.12 dB.
# Model 5fb480c3 (session 12, 11,200 steps further, equalised, one GDN γ floored): 0.05 and 0.12 dB; model
# 6a80dd8a (11,500 steps further): 0.15 and 0.20 dB. Calibrating on 256 px crops of Nordtank plus 32 varied
# training photos (5fb480c3): Q/DQ 0.02 dB but CPU 0.17 dB, not adopted (one run each).
# Model 48fcf67e (session 13, nine γ floored): Q/DQ 0.20 dB, CPU 0.98 dB, and 0.09 dB once each channel's
# output range was widened by at most 3x its fitted one (channel_equalisation.HEADROOM, session 14).
DEFAULT_METHOD = {"tensorrt": "percentile", "cpu": "percentile"}
# The percentile the ranges keep. CPU variant, model 213e8884 (session 6): ONNX Runtime's default 99.999 lost
# 0.38 dB, 99.9999 0.65 dB, 99.99 0.29 dB, 99.9 1.33 dB (model 3d9427f0: 0.31 dB at 99.99, 0.34 at 99.98,
# 0.39 at 99.995).
PERCENTILE = 99.99


def quantize_encoder(fp32_path, out_path, calibration_set: CalibrationSet | None = None,
                     method: str | None = None, target: str = "tensorrt", equalise: bool = True,
                     fit_edges: bool = True) -> dict:
    """encoder.onnx -> an INT8 graph; returns the property check of the result.

    target "tensorrt": the Q/DQ graph described above (also runs under ONNX Runtime, without speed-up).
    target "cpu": ONNX Runtime's own QLinearConv operators (uint8 activations with zero points, int8
    per-channel weights), which its CPU kernels run about twice as fast as FP32; TensorRT cannot parse
    it. The last Conv (producing y1) stays in float, so y1 is never squeezed through 8 bits, and so does
    the first (float_convs). equalise: give each QLinearConv output channel its own range
    (channel_equalisation.py). fit_edges: rescale the channels flat fields at the frame edge overdrive
    (flat_field_ranges.py); off only to compare with codec/quantisation_aware.py, which does not model it.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    load_graph(fp32_path, load_external_data=False)   # one line, not a protobuf traceback, for a wrong file
    if target not in TARGETS:
        raise CodecError(f"unknown quantisation target {target!r} ({', '.join(TARGETS)})")
    method = method or DEFAULT_METHOD[target]
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise CodecError(f"unknown calibration method {method!r} ({', '.join(methods)})")
    calibration_set = calibration_set or CalibrationSet()
    varied = calibration_set.varied_set()
    readers = [make_reader(s) for s in (calibration_set, varied) if s is not None]
    log.info("calibrating on %d photos (%s, for %s), %d varied ones pooled in for the inner Conv inputs",
             len(readers[0]), method, target, sum(len(r) for r in readers[1:]))
    common = dict(op_types_to_quantize=QUANTIZED_OPS, per_channel=True, reduce_range=False,
                  weight_type=QuantType.QInt8, calibrate_method=methods[method],
                  calibration_providers=["CPUExecutionProvider"])
    percentile = {"CalibPercentile": PERCENTILE} if method == "percentile" else {}
    with tempfile.TemporaryDirectory() as tmp:
        # quantised from a copy in a scratch folder: the copy is rewritten, and quantize_static writes a
        # temporary `-inferred.onnx` file beside its input (two quantisations of one graph no longer collide)
        src, work = Path(tmp) / "encoder.onnx", Path(tmp) / "encoder.int8.onnx"
        if target == "tensorrt":
            qdq_graph(fp32_path, src, work, readers, common, percentile, fit_edges)
        else:
            cpu_variant(fp32_path, src, work, readers, equalise, common, percentile, fit_edges)
        _copy_metadata(fp32_path, work)
        report = check_qdq(work) if target == "tensorrt" else check_cpu_graph(work)
        # Written whole at the end: -o may name the FP32 input, and a failed pass must not leave an
        # unstamped half-made graph under the final name.
        write_bytes(out_path, work.read_bytes())
    return report


def qdq_graph(fp32_path, src, out_path, readers, common: dict, percentile: dict, fit_edges: bool):
    """The Q/DQ graph for TensorRT, every Conv but the first quantised. readers: the calibration set's, then
    the varied photos' if any (pooled for the inner Conv inputs)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    shutil.copyfile(fp32_path, src)
    first = first_conv(onnx.load(str(fp32_path))).name   # left in float: FP16 in TensorRT
    if fit_edges:
        fit_frame_edges(src, readers[0], [first], percentile)
    quantize_static(str(src), str(out_path), readers[0], quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, nodes_to_exclude=[first], **common,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": False, "CalibTensorRangeSymmetric": True,
                                   "OpTypesToExcludeOutputQuantization": QUANTIZED_OPS, **percentile,
                                   **pool_inner_ranges(src, readers, [first], percentile, symmetric=True)})


def cpu_variant(fp32_path, src, out_path, readers, equalise: bool, common: dict, percentile: dict,
                fit_edges: bool):
    """The QLinearConv graph, quantised from src (a scratch path); readers as for qdq_graph."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    excluded = float_convs(fp32_path)
    if equalise:
        convs = [n.name for n in onnx.load(str(fp32_path)).graph.node
                 if n.op_type == "Conv" and n.name not in excluded]
        divide_outputs(fp32_path, src, channel_ranges(fp32_path, readers[0], convs))
    else:
        shutil.copyfile(fp32_path, src)
    if fit_edges:
        fit_frame_edges(src, readers[0], excluded, percentile)
    quantize_static(str(src), str(out_path), readers[0], quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, nodes_to_exclude=excluded, **common,
                    extra_options={**percentile,
                                   **pool_inner_ranges(src, readers, excluded, percentile, symmetric=False)})
    if equalise:
        log.info("%d QLinearConv outputs dequantised per channel", fold_into_dequantize(out_path))
    log.info("%d FiLM multiply-adds run as one BatchNormalization each", fuse_film(out_path))


def fit_frame_edges(src, reader, excluded: list, percentile: dict):
    """Shrink, in src, the input channels of the Convs to be quantised that flat fields at the frame edge
    drive past their tensor's calibrated range (flat_field_ranges.py)."""
    convs = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv" and n.name not in excluded]
    shrunk = shrink_edge_channels(src, convs, reader, percentile.get("CalibPercentile", 100.0))
    for tensor, k in shrunk.items():
        log.info("%s: %d channels shrunk for flat fields at the frame edge (up to %.2fx)", tensor, len(k),
                 max(k.values()))


def pool_inner_ranges(src, readers, excluded: list, percentile: dict, symmetric: bool) -> dict:
    """quantize_static's extra option TensorQuantOverrides: the inputs of the Convs quantised but the output
    one, with ranges over every reader's samples (pooled_ranges.py); nothing without varied photos or
    percentile calibration."""
    if len(readers) < 2 or not percentile:
        return {}
    skip = set(excluded) | {output_conv(src)}
    inner = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv" and n.name not in skip]
    overrides = pooled_overrides(src, inner, readers, percentile["CalibPercentile"], symmetric)
    for tensor, (r,) in overrides.items():
        log.info("%s: range [%.4g, %.4g] over the calibration and varied photos", tensor, r["rmin"], r["rmax"])
    return {"TensorQuantOverrides": overrides}


def float_convs(path) -> list:
    """The Convs the CPU variant leaves in float: the output one and the first one.

    A QLinearConv's output is uint8 too, and the first one's (pre-GDN responses to raw pixels) is where
    256 levels cost most. Measured in session 9 on model 36621aa3, 6 blade frames, BD-PSNR of the CPU variant with
    one more Conv left in float: none -0.56 dB, the first -0.27 dB, the second -0.23 dB, the third -0.43 dB;
    ONNX Runtime's window speed-up over FP32 stayed 2.7x with the first in float (9 % of the MACs) and fell
    to 1.2x with the second.
    """
    first, last = first_conv(onnx.load(str(path))).name, output_conv(path)
    return [last] if first == last else [last, first]


def first_conv(m: onnx.ModelProto):
    """The graph's first Conv node (over the pixels), quantised (QLinearConv) or not."""
    return next(n for n in m.graph.node if n.op_type in ("Conv", "QLinearConv"))


def output_conv(path) -> str:
    """Name of the last Conv before the graph output y1 (directly, or through the rate-gain Mul)."""
    m = onnx.load(str(path))
    producer = producers(m)
    for output in m.graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type == "Mul":   # y1 = conv(h) * sqrt(λ / λref)
            node = next((producer[i] for i in node.input if i in producer and producer[i].op_type in ("Conv", "Mul")),
                        None)
        if node is not None and node.op_type == "Conv":
            return node.name
    raise CodecError(f"{path}: no Conv produces a graph output; is this the image-analysis graph?")


def check_cpu_graph(path) -> dict:
    """The CPU variant: the output Conv is float and at least one Conv became QLinearConv."""
    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    try:
        output_conv(path)
        problems = []
    except CodecError:
        problems = ["the y1 Conv is not float"]
    if not ops.count("QLinearConv"):
        problems.append("no QLinearConv in the graph")
    film = sum(n.op_type == "BatchNormalization" and n.name.startswith(FILM_PREFIX) for n in m.graph.node)
    return {"passed": not problems, "qlinearconv_nodes": ops.count("QLinearConv"),
            "float_conv_nodes": ops.count("Conv"), "film_batchnorm_nodes": film, "problems": problems}


def _copy_metadata(src: Path, dst: Path):
    """quantize_static drops metadata_props; keep the model id stamp so backends can check it."""
    a, b = onnx.load(str(src)), onnx.load(str(dst))
    del b.metadata_props[:]
    for p in a.metadata_props:
        b.metadata_props.add(key=p.key, value=p.value)
    onnx.save(b, str(dst))


def check_qdq(path) -> dict:
    """The Q/DQ properties TensorRT requires, checked on the saved graph.

    Every zero point is a zero int8 constant; weights are int8 within [-127, 127] (symmetric) with one
    scale per output channel on axis 0; activation scales are per tensor; every Conv but the first reads
    dequantised input and weight.
    """
    m = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = producers(m)
    problems, n_q, n_dq, per_channel = [], 0, 0, 0
    for node in m.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        n_q += node.op_type == "QuantizeLinear"
        n_dq += node.op_type == "DequantizeLinear"
        zp = init.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
            problems.append(f"{node.name}: zero point must be an int8 constant 0")
        scale = init.get(node.input[1])
        if scale is None or np.any(scale <= 0):
            problems.append(f"{node.name}: scale must be a positive constant")
            continue
        weight = init.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if weight is not None and weight.ndim == 4:
            per_channel += 1
            if weight.dtype != np.int8 or weight.min() < -127:
                problems.append(f"{node.name}: weights must be int8 in [-127, 127]")
            if scale.size != weight.shape[0] or axis != 0:
                problems.append(f"{node.name}: weight scales must be per output channel (axis 0)")
        elif scale.size != 1:
            problems.append(f"{node.name}: activation scale must be per tensor")
    first = first_conv(m).name
    for node in m.graph.node:
        if node.op_type == "Conv" and node.name != first:
            for i in (0, 1):
                src = producer.get(node.input[i])
                if src is None or src.op_type != "DequantizeLinear":
                    problems.append(f"{node.name}: input {i} is not dequantised (Conv left in float)")
    return {"passed": not problems and n_dq > 0, "quantize_nodes": n_q, "dequantize_nodes": n_dq,
            "per_channel_weights": per_channel, "problems": problems[:50]}
