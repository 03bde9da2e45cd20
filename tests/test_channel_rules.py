"""The channel-rule table of remove_pruned_channels: a custom op gets a rule through the hook."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.converters.channel_rules import CHANNEL_RULES, channel_rule, find_removable
from edgepack.converters.remove_pruned_channels import remove_pruned_channels


def _model() -> ir.Model:
    """Conv(3->8, 1x1, filters 2 and 5 zero, bias 0) -> my.Scale (custom, per-element) -> Conv(8->4)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 1, 1)).astype(np.float32)
    w1[[2, 5]] = 0
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1"),
             helper.make_node("Scale", ["a"], ["s"], domain="my", name="scale"),
             helper.make_node("Conv", ["s", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
         numpy_helper.from_array(w2, "w2")],
        value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8, 4, 4]) for n in ("a", "s")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("my", 1)])
    return ir.from_proto(proto)


def test_an_op_without_a_rule_keeps_its_channels_and_says_why():
    an = find_removable(_model())
    assert an.removable_roots == set()
    assert any("my.Scale" in why or "Scale" in why for why in an.blocked.values())


def test_a_registered_rule_for_a_custom_op_lets_its_channels_go(monkeypatch):
    monkeypatch.setattr("edgepack.converters.channel_rules.CHANNEL_RULES", dict(CHANNEL_RULES))

    @channel_rule("my.Scale")
    def _scale(an, node, ins, c_out, approx):  # x * 2 per element: a constant channel stays constant
        x = ins[0]
        out = an.new(node.outputs[0], c_out, x.const * 2.0)
        an.union_range(out, x, np.arange(c_out))

    model = _model()
    result = remove_pruned_channels(model)
    convs = [n for n in model.graph if n.op_type == "Conv"]
    assert convs[0].inputs[1].const_value.numpy().shape[0] == 6  # 8 -> 6 filters
    assert convs[1].inputs[1].const_value.numpy().shape[1] == 6
    assert result.modified
    with pytest.raises(ValueError, match="already registered"):
        channel_rule("my.Scale")(_scale)
    onnx.checker.check_model(ir.to_proto(model))
