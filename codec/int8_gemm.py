"""Exact 8-bit integer matrix products through ONNX Runtime's MatMulInteger (MLAS kernels on x86 and on
the Jetson's ARM cores): uint8 activations times int8 weights, summed in int32.

Integer sums are exact in any order, so every machine, kernel and thread count gives the same integers,
provided nothing saturates. Weights are kept to |w| <= 63 because x86 CPUs without VNNI multiply uint8 by
int8 in pairs summed into int16 (vpmaddubsw): 2 * 255 * 63 = 32130 fits, 2 * 255 * 127 does not.
"""
from __future__ import annotations

import importlib.util

import numpy as np

ACT_MAX = 255
WEIGHT_MAX = 63
ACC_MAX = (1 << 31) - 1


def available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def fits(weights: np.ndarray, act_max: int, taps: int) -> bool:
    """Whether a layer can run here exactly: 8-bit inputs, 7-bit weights, no int32 overflow with `taps`
    products summed per output."""
    w = np.abs(weights.astype(np.int64))
    return act_max <= ACT_MAX and int(w.max(initial=0)) <= WEIGHT_MAX and taps * ACT_MAX * WEIGHT_MAX <= ACC_MAX


class Int8Matmul:
    """cols (N, K) uint8 -> cols @ weights.T as int32 (N, M), for a fixed int8 weight matrix (M, K)."""

    def __init__(self, weights: np.ndarray):
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        m, k = weights.shape
        b = numpy_helper.from_array(np.ascontiguousarray(weights.T).astype(np.int8), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["cols", "w"], ["acc"])], "int8_gemm",
            [helper.make_tensor_value_info("cols", TensorProto.UINT8, [None, k])],
            [helper.make_tensor_value_info("acc", TensorProto.INT32, [None, m])], [b])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1   # callers run tiles in parallel; exact whatever the count
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, cols: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"cols": cols})[0]
