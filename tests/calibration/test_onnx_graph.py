"""calibration/onnx_graph.py: which node writes and which nodes read each tensor."""
from onnx import TensorProto, helper

from calibration.onnx_graph import consumers, producers


def test_links_of_a_small_graph():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    nodes = [helper.make_node("Softsign", ["x"], ["s"], name="a"),
             helper.make_node("Mul", ["s", "x"], ["m"], name="b"),
             helper.make_node("Add", ["m", "s"], ["y"], name="c")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    assert {k: n.name for k, n in producers(m).items()} == {"s": "a", "m": "b", "y": "c"}
    assert {k: [n.name for n in v] for k, v in consumers(m).items()} == {"x": ["a", "b"], "s": ["b", "c"], "m": ["c"]}
