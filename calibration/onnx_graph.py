"""Who writes and who reads each tensor of an ONNX graph: the links the graph rewrites here walk; and
a session that returns inner tensors."""
from __future__ import annotations

import numpy as np
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


def output_session(m: onnx.ModelProto, tensors):
    """A CPU ONNX Runtime session of m with `tensors` added to its outputs (m is changed in place), so that
    session.run can fetch them."""
    import onnxruntime as ort

    known = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                          for t in tensors if t not in known)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def tensor_values(session, tensors, readers) -> dict:
    """Tensor name -> every value it takes over the samples of each calibration reader, flattened into one
    array (session: output_session with those tensors); each reader is rewound after."""
    values = {t: [] for t in tensors}
    for reader in readers:
        reader.rewind()
        while (feed := reader.get_next()) is not None:
            for t, v in zip(tensors, session.run(list(tensors), feed)):
                values[t].append(v.ravel())
        reader.rewind()
    return {t: np.concatenate(v) for t, v in values.items()}
