"""Who writes and who reads each tensor of an ONNX graph: the links the graph rewrites here walk; and
inner tensors made readable as graph outputs."""
from __future__ import annotations

import onnx
from onnx import helper


def producers(m: onnx.ModelProto) -> dict:
    """Tensor name -> the node that writes it (graph inputs and initializers have none)."""
    return {o: n for n in m.graph.node for o in n.output}


def consumers(m: onnx.ModelProto) -> dict:
    """Tensor name -> the nodes that read it, in graph order."""
    readers: dict = {}
    for n in m.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return readers


def with_outputs(m: onnx.ModelProto, tensors) -> onnx.ModelProto:
    """m with `tensors` added to its outputs (in place), so that a session returns them."""
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                          for t in tensors if t not in known)
    return m
