"""Static checks of an exported graph: onnx.checker, TensorRT ONNX parser support, and MAC counting.

The TensorRT check reads `tensorrt-onnx-parser-ops.tsv` (operator, supported Y/N, types, restrictions)
and reports every offending node by name: an operator the parser lacks, an input type it does not take,
or a listed restriction the node breaks. Restrictions this code cannot decide are returned as warnings,
never silently passed.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from codec.errors import first_line
from codec.onnx_export import load_graph

DEFAULT_OPS_TABLE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tensorrt-onnx-parser-ops.tsv"

# ONNX element types under the names the parser table uses.
TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.INT8: "INT8", onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.FLOAT8E4M3FN: "FP8", onnx.TensorProto.INT4: "INT4",
}


class GraphCheckError(Exception):
    """A graph file that cannot be read or checked at all."""


@dataclass
class OpRule:
    supported: bool
    types: set
    restriction: str


@dataclass
class OpReport:
    offences: list = field(default_factory=list)   # {"node", "op", "problem"}
    warnings: list = field(default_factory=list)
    ops: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.offences

    def as_dict(self) -> dict:
        return {"passed": self.ok, "offences": self.offences, "warnings": self.warnings, "ops": self.ops}


def run_checker(path) -> dict:
    """onnx.checker with full shape inference; a dict for report.json."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        return {"passed": False, "error": first_line(e, 300)}
    m = load_graph(path)
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {"passed": opset >= 17, "opset": opset, "error": None if opset >= 17 else f"opset {opset} < 17"}


def load_ops_table(path=DEFAULT_OPS_TABLE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GraphCheckError(f"{path}: TensorRT operator table not found")
    table = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = (line.split("\t") + ["", "", ""])[:4]
        types = {t.strip().replace("INF64", "INT64") for t in cols[2].split(",") if t.strip()}
        table[cols[0].strip()] = OpRule(cols[1].strip() == "Y", types, cols[3].strip())
    return table


def _constants(m: onnx.ModelProto) -> dict:
    """Tensor name -> numpy value for initializers and Constant node outputs (the parser folds both)."""
    values = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
                elif a.name in ("value_float", "value_int"):
                    values[n.output[0]] = np.array(onnx.helper.get_attribute_value(a))
                elif a.name in ("value_floats", "value_ints"):
                    values[n.output[0]] = np.array(onnx.helper.get_attribute_value(a))
    return values


def _elem_types(m: onnx.ModelProto) -> dict:
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:  # an invalid graph still gets checked with what is declared
        inferred = m
    g = inferred.graph
    types = {i.name: i.data_type for i in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def _input_names(op: str, opset: int) -> list:
    try:
        return [i.name for i in onnx.defs.get_schema(op, opset, "").inputs]
    except Exception:
        return []


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


def _restriction_problems(node, rule: OpRule, consts: dict, opset: int) -> tuple[list, bool]:
    """(problems, decided): what the node breaks, and whether every listed restriction was checked."""
    text, problems, decided = rule.restriction, [], True
    if not text:
        return problems, True
    inputs = _input_names(node.op_type, opset)
    named = dict(zip(inputs, node.input))
    handled = 0
    for name in re.findall(r"`(\w+)` must be (?:an initializer|a constant tensor|a build-time constant)", text):
        handled += 1
        tensor = named.get(name, "")
        if tensor and tensor not in consts:  # absent optional inputs and attributes are fine
            problems.append(f"input `{name}` ({tensor}) must be an initializer/constant")
    for name in re.findall(r"`(\w+)` must be (?:zero|0)\b", text):
        handled += 1
        tensor = named.get(name, "")
        if tensor:
            if tensor not in consts:
                problems.append(f"`{name}` ({tensor}) must be a constant zero, it is computed")
            elif np.any(consts[tensor] != 0):
                problems.append(f"`{name}` must be zero, found {np.unique(consts[tensor])[:4].tolist()}")
    if node.op_type == "Constant":
        handled += 1
        bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
        if bad:
            problems.append(f"Constant attribute {bad[0]} unsupported")
    for name in re.findall(r"`(\w+)` must be empty or all ones", text):
        handled += 1
        value = _attr(node, name)
        if value and any(v != 1 for v in value):
            problems.append(f"attribute `{name}` must be empty or all ones, is {list(value)}")
    if node.op_type == "Resize":
        handled += 1
        mode = _decode(_attr(node, "mode", b"nearest"))
        coord = _decode(_attr(node, "coordinate_transformation_mode", b"half_pixel"))
        nearest = _decode(_attr(node, "nearest_mode", b"round_prefer_floor"))
        if mode not in ("nearest", "linear"):
            problems.append(f"Resize mode {mode!r} unsupported")
        if coord not in RESIZE_COORD:
            problems.append(f"Resize coordinate_transformation_mode {coord!r} unsupported")
        if mode == "nearest" and nearest not in RESIZE_NEAREST:
            problems.append(f"Resize nearest_mode {nearest!r} unsupported")
        if _attr(node, "antialias", 0):
            problems.append("Resize antialias unsupported")
        if _decode(_attr(node, "keep_aspect_ratio_policy", b"stretch")) != "stretch":
            problems.append("Resize keep_aspect_ratio_policy must be stretch")
    if node.op_type == "TopK":
        handled += 1
        if _attr(node, "sorted", 1) != 1:
            problems.append("TopK `sorted` must be 1")
    # A restriction sentence none of the rules above understood stays a warning.
    sentences = [s for s in re.split(r"\.\s|<br />", text) if s.strip()]
    decided = handled >= len(sentences) or node.op_type in ("Resize",)
    return problems, decided


def check_tensorrt_ops(path_or_model, table=None) -> OpReport:
    """Every node against the parser table; offences name the node."""
    m = load_graph(path_or_model) if not isinstance(path_or_model, onnx.ModelProto) else path_or_model
    table = table if table is not None else load_ops_table()
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=17)
    consts, types = _constants(m), _elem_types(m)
    report = OpReport(ops=dict(Counter(n.op_type for n in m.graph.node)))
    unchecked = set()
    for i, node in enumerate(m.graph.node):
        name = node.name or f"<unnamed {node.op_type} #{i}>"
        where = {"node": name, "op": node.op_type}
        if node.domain not in ("", "ai.onnx"):
            report.offences.append({**where, "problem": f"custom domain {node.domain!r} (needs a TensorRT plugin)"})
            continue
        rule = table.get(node.op_type)
        if rule is None:
            report.offences.append({**where, "problem": "operator not in the TensorRT ONNX parser list"})
            continue
        if not rule.supported:
            report.offences.append({**where, "problem": "operator not supported by the TensorRT ONNX parser"})
            continue
        if node.input and node.input[0] and node.op_type != "Constant":
            t = TYPE_NAMES.get(types.get(node.input[0]), None)
            if t == "DOUBLE":
                report.warnings.append(f"{name}: DOUBLE input is cast down to FP32 by TensorRT")
            elif t and rule.types and t not in rule.types:
                report.offences.append({**where, "problem": f"input type {t} not supported "
                                                            f"(parser takes {', '.join(sorted(rule.types))})"})
        problems, decided = _restriction_problems(node, rule, consts, opset)
        report.offences += [{**where, "problem": p} for p in problems]
        if not decided:
            unchecked.add(node.op_type)
    report.warnings += [f"{op}: restriction not checked automatically: {table[op].restriction}"
                        for op in sorted(unchecked)]
    return report


# ---------------------------------------------------------------------------------------------------
# Multiply-accumulates counted from the graph (Conv, ConvTranspose, Gemm, MatMul; element-wise ops are
# ignored: they are a few per pixel next to tens of thousands).

def _with_static_inputs(m: onnx.ModelProto, dims: dict) -> onnx.ModelProto:
    m = onnx.ModelProto.FromString(m.SerializeToString())
    for inp in m.graph.input:
        shape = dims.get(inp.name)
        if shape is None:
            continue
        for d, v in zip(inp.type.tensor_type.shape.dim, shape):
            d.Clear()
            d.dim_value = v
    return onnx.shape_inference.infer_shapes(m, data_prop=True)


def _known(dims):
    """A shape with the batch dimension taken as 1 (every input here has batch 1), or None if unknown."""
    if not dims:
        return None
    dims = [1 if i == 0 and d is None else d for i, d in enumerate(dims)]
    return None if any(d is None for d in dims) else dims


def _conv_out_shape(node, inp, w):
    """Conv output shape from the input shape when shape inference stopped (e.g. at a graph output)."""
    if inp is None:
        return None
    k = w[2:]
    strides = _attr(node, "strides", [1] * len(k))
    pads = _attr(node, "pads", [0] * 2 * len(k))
    dil = _attr(node, "dilations", [1] * len(k))
    spatial = [(inp[2 + i] + pads[i] + pads[i + len(k)] - dil[i] * (k[i] - 1) - 1) // strides[i] + 1
               for i in range(len(k))]
    return [inp[0], w[0]] + spatial


def count_macs(m: onnx.ModelProto, input_dims: dict) -> int:
    """MACs of one run with the given input shapes (name -> tuple)."""
    m = _with_static_inputs(m, input_dims)
    shapes = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    # weights may be initializers, Constant nodes or (for GDN's squared parameters) computed tensors
    weights = {k: list(v.shape) for k, v in _constants(m).items()}
    weights.update({k: v for k, v in shapes.items() if k not in weights and _known(v)})
    total = 0
    for node in m.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        out = _known(shapes.get(node.output[0]))
        if out is None and node.op_type == "Conv":
            out = _conv_out_shape(node, _known(shapes.get(node.input[0])), weights[node.input[1]])
        if out is None:
            raise GraphCheckError(f"cannot infer the output shape of {node.name} to count its MACs")
        if node.op_type == "Conv":
            w = weights[node.input[1]]   # (Cout, Cin/group, kh, kw)
            total += math.prod(out) * math.prod(w[1:])
        elif node.op_type == "ConvTranspose":
            w = weights[node.input[1]]   # (Cin, Cout/group, kh, kw): every input element hits the kernel once
            inp = shapes[node.input[0]]
            total += math.prod(inp) * math.prod(w[1:])
        else:
            a = shapes.get(node.input[0]) or weights.get(node.input[0])
            k = a[-1] if not (node.op_type == "Gemm" and _attr(node, "transA", 0)) else a[-2]
            total += math.prod(out) * k
    return total


def window_overhead(height: int, width: int) -> float:
    """Pixels the image analysis computes per photo pixel, with the 32 px context of every 512 px window."""
    from codec.tiling import MARGIN, STRIDE, WINDOW, _windows

    h1, w1 = math.ceil(height / STRIDE), math.ceil(width / STRIDE)
    rows = sum(a1 - a0 for _, _, a0, a1 in _windows(h1, WINDOW, MARGIN))
    cols = sum(b1 - b0 for _, _, b0, b1 in _windows(w1, WINDOW, MARGIN))
    return rows * cols / (h1 * w1)


def macs_report(image_path, latent_path, z1_channels: int, photo_hw=(3648, 5472), tflops: float = 5.0,
                probe=512) -> dict:
    """MACs per pixel of both graphs and the projected time of one photo at a stated throughput."""
    img = count_macs(load_graph(image_path), {"x": (1, 3, probe, probe), "lam": (1,)})
    h1 = probe // 16
    lat = count_macs(load_graph(latent_path), {"y1": (1, z1_channels, h1, h1), "lam": (1,)})
    per_px = (img + lat) / probe ** 2
    overhead = window_overhead(*photo_hw)
    pixels = photo_hw[0] * photo_hw[1]
    total = img / probe ** 2 * overhead * pixels + lat / probe ** 2 * pixels
    return {
        "macs_per_pixel": round(per_px), "image_graph_macs_per_pixel": round(img / probe ** 2),
        "latent_graph_macs_per_pixel": round(lat / probe ** 2), "budget_macs_per_pixel": 100_000,
        "within_budget": per_px <= 100_000, "counted": "Conv, ConvTranspose, Gemm, MatMul (element-wise ops ignored)",
        "window_context_overhead": round(overhead, 3),
        "projected_photo": {"height": photo_hw[0], "width": photo_hw[1], "megapixels": round(pixels / 1e6, 1),
                            "gmacs": round(total / 1e9, 1), "assumed_tflops": tflops,
                            "seconds": round(2 * total / (tflops * 1e12), 3),
                            "note": "2 FLOP per MAC at the stated sustained throughput; memory traffic and "
                                    "host-side tiling/entropy coding not included"},
    }
