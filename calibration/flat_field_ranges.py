"""INT8 ranges that hold smooth content at the frame edge: the Conv input channels flat fields overdrive
are rescaled before calibration.

Why: the convolutions zero-pad, so where a smooth bright region (sky, overcast, a sunlit blade) meets the
frame edge, some channels respond far more strongly than anywhere inside a photo. Those border positions
are well under 1 % of a tensor, so the 99.99th-percentile ranges calibrated on photos clip them, and the
clipped responses come back as a band of error along the edge. Measured in session 27 on model c126c68a
(step 133,900), λ 8192, top-left 240x400 of three blade frames: 98 % of the extra error the Q/DQ graph added
sat in the 32 px border band (most in the right edge's 16 px columns: extra MSE 20 there, about 0.1
elsewhere), and one channel of the second quantised input reached 2.1x its tensor's calibrated range
there, as much as a flat sky-coloured field drives it.

Flat fields are the designed worst case of that: neutral greys from black to white and three daylight-sky
tints, at every calibration λ; their peak is kept whole, not a percentile of it. Each Conv input channel
whose flat-field peak passes its tensor's calibrated range is divided by the excess k_c before the Conv
(a Mul), and the Conv's weights of that channel are multiplied by it (per-channel int8 weight scales absorb
that). Only those channels get coarser levels. Widening the whole tensor's range instead coarsened smooth
sky everywhere: on the CPU variant, widening the second input to hold the flat fields lost more (2.1-2.3 dB
on the sky crops) than the clipping did (1.7 dB); rescaling the channels lost 0.18-0.22 dB.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from codec.errors import CodecError

from .calibration_set import CALIBRATION_LAMBDAS
from .onnx_graph import output_session, tensor_values

SIZE = 128   # px; every position of a 128 px field at stride 16 is within reach of an edge, corners included
GREYS = (0, 64, 128, 192, 255)
SKY_TINTS = ((225, 234, 245), (150, 190, 235), (90, 140, 210))   # hazy, clear, deep blue
PREFIX = "edge_shrink_"   # the Mul nodes shrink_edge_channels inserts


def flat_fields():
    """(1, 3, SIZE, SIZE) float32 fields in [0, 1], one per colour."""
    for rgb in [(g, g, g) for g in GREYS] + list(SKY_TINTS):
        yield np.broadcast_to(np.array(rgb, np.float32)[None, :, None, None] / 255.0, (1, 3, SIZE, SIZE)).copy()


def flat_field_peaks(session, tensors) -> dict:
    """Tensor name -> (C,) each channel's peak |value| over every flat field at every calibration λ;
    session: onnx_graph.output_session of the float graph and these tensors."""
    peaks = {t: 0.0 for t in tensors}
    for x in flat_fields():
        for lam in CALIBRATION_LAMBDAS:
            for t, v in zip(tensors, session.run(list(tensors), {"x": x, "lam": np.array([lam], np.float32)})):
                peaks[t] = np.maximum(peaks[t], np.abs(v[0]).max(axis=(1, 2)))
    return peaks


def shrink_edge_channels(graph_path, conv_names, reader, percentile: float) -> dict:
    """Rescale, in the float graph at graph_path (rewritten in place), each channel of each named Conv's input
    whose flat-field peak |value| passes the tensor's calibrated range (its `percentile` of |value| on the
    calibration photos): a Mul by 1/k_c before the Conv, and the Conv's weights of that input channel times
    k_c, so the function is unchanged. Only those channels get coarser levels; widening the whole tensor
    instead coarsened smooth sky everywhere. Returns tensor -> {channel: k_c} for the channels rescaled."""
    m = onnx.load(str(graph_path))
    init = {i.name: i for i in m.graph.initializer}
    # a Conv whose weights are computed (a full GDN's, in graphs without the Softsign rewrite) cannot absorb k_c
    convs = [n for n in m.graph.node if n.op_type == "Conv" and n.name in conv_names and n.input[1] in init]
    tensors = [c.input[0] for c in convs]
    session = output_session(onnx.load(str(graph_path)), tensors)   # a copy: m itself is rewritten below
    ranges = calibrated_ranges(session, tensors, reader, percentile)
    peaks = flat_field_peaks(session, tensors)
    shrunk = {}
    for conv, tensor in zip(convs, tensors):
        k = np.maximum(peaks[tensor] / ranges[tensor], 1.0).astype(np.float32)
        if not (k > 1.0).any():
            continue
        w = numpy_helper.to_array(init[conv.input[1]])
        if w.shape[1] != k.size:
            raise CodecError(f"{conv.name}: grouped convolution; its input channels cannot be rescaled one by one")
        init[conv.input[1]].CopyFrom(numpy_helper.from_array(w * k.reshape(1, -1, 1, 1), conv.input[1]))
        inverse = PREFIX + conv.name
        m.graph.initializer.append(numpy_helper.from_array((1.0 / k).reshape(1, -1, 1, 1), inverse + "_k"))
        m.graph.node.insert(list(m.graph.node).index(conv),
                            helper.make_node("Mul", [tensor, inverse + "_k"], [inverse], name=inverse))
        conv.input[0] = inverse
        shrunk[tensor] = {int(c): round(float(k[c]), 2) for c in np.flatnonzero(k > 1.0)}
    onnx.save(m, str(graph_path))
    return shrunk


def calibrated_ranges(session, tensors, reader, percentile: float) -> dict:
    """Tensor name -> the `percentile` of |value| over the calibration photos (what quantize_static's
    symmetric percentile calibration sets); session as for flat_field_peaks."""
    values = tensor_values(session, tensors, [reader])
    return {t: float(np.percentile(np.abs(v), percentile)) for t, v in values.items()}
