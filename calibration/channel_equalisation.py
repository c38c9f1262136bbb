"""Per-channel output ranges for the CPU variant's QLinearConv layers, at no run-time cost.

A QLinearConv writes uint8 with one scale for the whole tensor, but the output channels of our
convolutions span very different ranges (the Softsign rewrite folds each GDN's γ/β into them), so the
narrow channels get a handful of the 256 levels. Before quantising, each such Conv's output channel c is
divided by its own range r_c (weights and bias; per-channel int8 weights absorb the factor at no loss)
and a Mul by r_c restores the graph's function. After quantisation that Mul follows the DequantizeLinear
of the QLinearConv's output, and both become one DequantizeLinear with a scale per channel (axis 1):
the same memory pass as before, with 256 levels for every channel.

r_c is chosen per channel to lose least after the Softsign that follows (clipping against rounding), on
values sampled from every calibration photo, then widened for photos unlike the calibration set
(with_headroom); fold_into_dequantize then fixes the QLinearConv's output grid so that channel c is
quantised over exactly ±r_c.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_graph import consumers, output_session, producers

MUL_PREFIX = "equalise_"   # the Mul nodes this module inserts and later folds away
# Most a channel's range is widened beyond the one fitted on the calibration photos (with_headroom). Model
# 48fcf67e, `calibration rd`, BD-PSNR of the CPU graph on 10 blade frames / 8 Kodak photos: no cap -0.98 /
# -0.74 dB; cap 1 (fitted ranges) -3.19 dB; 1.5: -0.32; 2: -0.08 / -0.10; 3: -0.09 / -0.08; 4: -0.13 dB.
# Clipping costs far more than rounding, so the cap sits on the wide side of the flat optimum.
HEADROOM = 3.0


def channel_ranges(fp32_path, reader, conv_names, values_per_photo: int = 4096, seed: int = 0) -> dict:
    """Conv name -> r (C,) float32: per output channel, the clipping range whose 256 levels lose least after
    the Softsign that follows (mean squared error over values sampled from every calibration photo)."""
    m = onnx.load(str(fp32_path))
    outputs = {n.name: n.output[0] for n in m.graph.node if n.name in conv_names}
    session = output_session(m, outputs.values())
    names, rng = list(outputs), np.random.default_rng(seed)
    sampled = {n: [] for n in names}
    reader.rewind()
    while (feed := reader.get_next()) is not None:
        for n, v in zip(names, session.run([outputs[n] for n in names], feed)):
            flat = v[0].reshape(v.shape[1], -1)
            sampled[n].append(flat[:, rng.choice(flat.shape[1], min(values_per_photo, flat.shape[1]), False)])
    reader.rewind()
    return {n: with_headroom(best_ranges(np.concatenate(sampled[n], axis=1))) for n in names}


def with_headroom(r: np.ndarray) -> np.ndarray:
    """Each channel's range moved halfway (in log) towards the widest one's, but never past HEADROOM times
    its own.

    Ranges fitted to the calibration photos alone clipped the drone frames (held out, and unlike the
    Nordtank crops: sky, dusk, overlays), where some channels reach 2.3x their calibration range: on model
    dfd2b788, 10 blade frames, the fitted ranges cost far more than one range per tensor (y1 error 0.083 against
    0.026, relative), twice the fitted ranges 0.023, halfway to the widest 0.022, and by `calibration rd` the
    halfway rule -0.32 dB BD-PSNR against -0.51 with one range per tensor.
    The cap: a channel whose GDN γ was floored at export is thousands of times narrower than the widest
    (model 48fcf67e: spreads of 9,223x and 22,828x), and halfway to the widest gave it 45-151x its own range,
    i.e. one or two of its 256 levels: the CPU graph lost 0.98 dB. See HEADROOM for the cap's measurement."""
    return (r * np.minimum(np.sqrt(r.max() / r), HEADROOM)).astype(np.float32)


def best_ranges(x: np.ndarray, candidates: int = 48) -> np.ndarray:
    """x (C, N) -> r (C,): for each channel the range among `candidates` (from 2 % of its largest |value|
    to all of it) minimising the squared error after Softsign of uint8 quantisation over ±r."""
    softsign = lambda a: a / (1 + np.abs(a))
    top = np.abs(x).max(axis=1, keepdims=True) + 1e-12
    target = softsign(x)
    best_err, best_r = np.full(x.shape[0], np.inf), top[:, 0].copy()
    for f in np.geomspace(0.02, 1.0, candidates):
        step = top * f / 127
        q = np.clip(np.round(x / step), -128, 127) * step
        err = np.mean((softsign(q) - target) ** 2, axis=1)
        better = err < best_err
        best_err[better], best_r[better] = err[better], (top * f)[better, 0]
    return best_r.astype(np.float32)


def divide_outputs(fp32_path, out_path, ranges: dict):
    """A copy of the graph in which each named Conv's output channel c is divided by r_c and multiplied
    back by a Mul named MUL_PREFIX + conv name: the same function."""
    m = onnx.load(str(fp32_path))
    init = {i.name: i for i in m.graph.initializer}
    nodes = []
    for node in m.graph.node:
        nodes.append(node)
        if node.op_type != "Conv" or node.name not in ranges:
            continue
        r = ranges[node.name]
        for k, shape in ((1, (-1, 1, 1, 1)), (2, (-1,))):
            if len(node.input) > k and node.input[k] not in init:
                raise ValueError(f"{node.name}: input {k} is not a constant; export the rewritten analysis")
            if len(node.input) > k:
                arr = numpy_helper.to_array(init[node.input[k]])
                init[node.input[k]].CopyFrom(numpy_helper.from_array(arr / r.reshape(shape), node.input[k]))
        out = node.output[0]
        node.output[0] = out + "_divided"
        scale = MUL_PREFIX + node.name + "_r"
        m.graph.initializer.append(numpy_helper.from_array(r.reshape(1, -1, 1, 1), scale))
        nodes.append(helper.make_node("Mul", [node.output[0], scale], [out], name=MUL_PREFIX + node.name))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, str(out_path))


def fold_into_dequantize(path):
    """Each inserted Mul that follows a DequantizeLinear becomes that node's per-channel scale, and the
    QLinearConv before it writes the divided channels on the fixed grid [-128/127, 1]: channel c is then
    quantised over exactly ±r_c. (quantize_static's own range for the divided tensor would be set by the
    channel with the heaviest tail past its r_c, and every channel would pay for it.)"""
    m = onnx.load(str(path))
    init = {i.name: i for i in m.graph.initializer}
    producer, readers = producers(m), consumers(m)
    removed = []
    for mul in [n for n in m.graph.node if n.name.startswith(MUL_PREFIX)]:
        dq = producer.get(mul.input[0])
        conv = dq is not None and producer.get(dq.input[0])
        if not conv or conv.op_type != "QLinearConv" or len(readers[mul.input[0]]) != 1 \
                or len(readers[dq.input[0]]) != 1:
            raise ValueError(f"{mul.name}: expected QLinearConv -> DequantizeLinear -> {mul.name}")
        r = numpy_helper.to_array(init[mul.input[1]]).reshape(-1)
        zero = numpy_helper.to_array(init[dq.input[2]])
        grid = {"_y_scale_eq": np.array(1 / 127, np.float32), "_y_zero_eq": np.array(128, np.uint8),
                "_scale_c": (r / 127).astype(np.float32), "_zero_c": np.full(r.size, 128, zero.dtype)}
        m.graph.initializer.extend(numpy_helper.from_array(v, conv.name + k) for k, v in grid.items())
        conv.input[6], conv.input[7] = conv.name + "_y_scale_eq", conv.name + "_y_zero_eq"
        dq.input[1], dq.input[2] = conv.name + "_scale_c", conv.name + "_zero_c"
        dq.attribute.append(helper.make_attribute("axis", 1))
        dq.output[0] = mul.output[0]
        removed.append(mul.name)
    kept = [n for n in m.graph.node if n.name not in removed]
    del m.graph.node[:]
    m.graph.node.extend(kept)
    _drop_unused_initializers(m)
    onnx.save(m, str(path))
    return len(removed)


def _drop_unused_initializers(m):
    used = {i for n in m.graph.node for i in n.input}
    kept = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
