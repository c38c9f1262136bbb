"""Who writes and who reads each tensor of an ONNX graph: the links the graph rewrites here walk."""
from __future__ import annotations

import onnx


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
