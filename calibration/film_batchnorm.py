"""FiLM's per-channel multiply-add as one BatchNormalization, in the CPU variant of the INT8 graph.

After each GDN (a Softsign in the exported graph) the FiLM layer computes h·gain + shift, with one gain and
one shift per channel that depend on λ. λ is a graph input, so they cannot fold into the weights, and ONNX
Runtime's CPU provider runs the Mul and the Add as two passes over the whole tensor: at half resolution
18 ms of a 480x864 window's ~104 ms (session 12's profile, model 5fb480c3). BatchNormalization with mean 0,
variance 1 and ε 0 is the same function, h·scale + bias per channel, in one pass. Its four parameters may
be computed tensors, so the λ-dependent gain and shift feed it directly (flattened to one value per
channel); the zero mean and unit variance are derived from the gain at run time, so no channel count has to
be known here.

Only the CPU variant gets this: TensorRT fuses element-wise layers into the convolutions anyway, and its
ONNX parser wants BatchNormalization's parameters as initializers.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from codec.errors import first_line

from .onnx_graph import consumers, producers

PREFIX = "film_bn"
log = logging.getLogger("calibration")


def _dims(value_info) -> list | None:
    """Static dims of a tensor (None where unknown), or None when its rank is unknown."""
    if value_info is None or not value_info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def _per_channel(dims) -> bool:
    """(?, C, 1, 1): one value per channel, which BatchNormalization can take once flattened."""
    return dims is not None and len(dims) == 4 and dims[2] == 1 and dims[3] == 1


def film_pairs(m: onnx.ModelProto) -> list:
    """(Mul, Add) pairs h·gain + shift after a Softsign, with per-channel gain and shift, in a graph whose
    inputs are one image and one λ (a flattened gain of several images would not be one value per channel)."""
    if not all((_dims(i) or [None])[0] == 1 for i in m.graph.input):
        return []
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception as e:   # onnx raises its own types; without shapes nothing is fused, the graph stays valid
        log.warning("FiLM fusion skipped: shape inference failed (%s)", first_line(e))
        return []
    shapes = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    producer, readers = producers(m), consumers(m)
    pairs = []
    for mul in m.graph.node:
        if mul.op_type != "Mul" or getattr(producer.get(mul.input[0]), "op_type", None) != "Softsign":
            continue
        after = readers.get(mul.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add":
            continue
        add = after[0]
        shift = next(i for i in add.input if i != mul.output[0])
        if _per_channel(_dims(shapes.get(mul.input[1]))) and _per_channel(_dims(shapes.get(shift))):
            pairs.append((mul, add, shift))
    return pairs


def _batchnorm(k: int, h: str, gain: str, shift: str, out: str, flat: str) -> list:
    """Nodes computing out = h·gain + shift as BatchNormalization (mean 0, variance 1, ε 0)."""
    scale, bias, zero, one = (f"{PREFIX}{k}_{s}" for s in ("scale", "bias", "mean", "var"))
    return [
        helper.make_node("Reshape", [gain, flat], [scale], name=f"{PREFIX}{k}_scale"),
        helper.make_node("Reshape", [shift, flat], [bias], name=f"{PREFIX}{k}_bias"),
        helper.make_node("Mul", [scale, f"{PREFIX}_zero"], [zero], name=f"{PREFIX}{k}_mean"),
        helper.make_node("Add", [zero, f"{PREFIX}_one"], [one], name=f"{PREFIX}{k}_var"),
        helper.make_node("BatchNormalization", [h, scale, bias, zero, one], [out], name=f"{PREFIX}{k}",
                         epsilon=0.0),
    ]


def fuse_film(path) -> int:
    """Rewrite every FiLM multiply-add of the graph at path in place; returns how many were fused."""
    path = Path(path)
    m = onnx.load(str(path))
    pairs = film_pairs(m)
    if not pairs:
        return 0
    flat = f"{PREFIX}_flat"
    m.graph.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), flat),
                                numpy_helper.from_array(np.array(0.0, np.float32), f"{PREFIX}_zero"),
                                numpy_helper.from_array(np.array(1.0, np.float32), f"{PREFIX}_one")])
    # keyed by output name: node names may be empty
    replaced = {add.output[0]: _batchnorm(k, mul.input[0], mul.input[1], shift, add.output[0], flat)
                for k, (mul, add, shift) in enumerate(pairs)}
    dropped = {mul.output[0] for mul, _, _ in pairs}
    nodes = []
    for n in m.graph.node:   # the BatchNormalization takes the Add's place: its inputs all exist by then
        if n.output[0] in replaced:
            nodes.extend(replaced[n.output[0]])
        elif n.output[0] not in dropped:
            nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return len(pairs)
