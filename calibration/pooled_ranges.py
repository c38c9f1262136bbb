"""INT8 ranges of the inner Conv inputs, calibrated on the blade calibration photos pooled with varied photos.

Why: the calibration set is 32 crops of four DJI frames of one turbine (Nordtank). The inputs of the inner
Convs (GDN outputs inside the analysis, between the float first Conv and the output Conv) respond to content
those frames lack, and their 99.99th-percentile ranges clipped it on other blade photos. Measured in session 36
with `python -m calibration rd` (10 held-out drone frames, λ 64..8192) on lineage C (z1 192, the decay of step
80,000): the Q/DQ graph lost 0.34 dB BD-PSNR (0.60 dB at λ 64), the CPU graph 0.41 dB. With the second and
third Convs' input ranges calibrated on Nordtank pooled with 32 varied training photos: 0.06 and 0.13 dB; the
bundled model e888c596 went from 0.066 to 0.050 and 0.091 to 0.082 dB (README, "Edge acceleration"). In a
probe that pooled one input at a time, the output Conv's input changed nothing (0.33 dB) and the third Conv's
alone took the Q/DQ graph to 0.06 dB.

Why not every range: pooling the output Conv's input too (the whole Q/DQ graph calibrated on the pool) lost
0.03 dB on the drone frames but up to 0.56 dB on smooth sky at λ 8192 (tests/calibration's sky crops; 0.31
with Nordtank alone): that range sets the levels of y1 itself, and varied photos widened it. The output
Conv's input keeps Nordtank's range; in the CPU graph that Conv is float anyway.

The ranges are what quantize_static's percentile calibration computes (symmetric: the percentile of |value|;
otherwise the two tails cut equally), over both sets' samples, passed to it as TensorQuantOverrides.
"""
from __future__ import annotations

import numpy as np
import onnx

from .onnx_graph import output_session, tensor_values


def pooled_overrides(graph_path, conv_names, readers, percentile: float, symmetric: bool) -> dict:
    """quantize_static's TensorQuantOverrides: each named Conv's input range (rmin, rmax) at `percentile` over
    the samples of every reader together (the blade calibration set and the varied photos)."""
    m = onnx.load(str(graph_path))
    tensors = [n.input[0] for n in m.graph.node if n.op_type == "Conv" and n.name in conv_names]
    values = tensor_values(output_session(m, tensors), tensors, readers)
    return {t: [dict(zip(("rmin", "rmax"), percentile_range(v, percentile, symmetric)))]
            for t, v in values.items()}


def percentile_range(values: np.ndarray, percentile: float, symmetric: bool) -> tuple:
    """(rmin, rmax) as float32 scalars: ±the percentile of |value|, or the (100 - percentile) / 2 % tails."""
    if symmetric:
        a = np.percentile(np.abs(values), percentile)
        return np.float32(-a), np.float32(a)
    tail = (100.0 - percentile) / 2
    return np.float32(np.percentile(values, tail)), np.float32(np.percentile(values, 100.0 - tail))
