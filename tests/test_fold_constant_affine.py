"""fold_constant_affine: the PP-LCNet block (Conv -> scalar Mul -> scalar Add -> written-out
hard-swish -> scalar Mul -> scalar Add -> Conv) as paddle2onnx writes it, built with onnx.helper.
Structure: which Mul/Add are folded (the one before a zero-padded depthwise Conv keeps its shift
and is left, with the reason), the hard-swish chain becomes HardSwish (opset 14) or
x * HardSigmoid(x) (older opsets). Numerics: the rewritten graph against the original one in ONNX
Runtime with optimizations off, fp32 tolerance."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.converters.cleanup_graph import cleanup_graph
from edgepack.converters.fold_constant_affine import fold_constant_affine

RTOL, ATOL = 1e-5, 1e-5


def lcnet_block(opset: int, depthwise_pad: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def affine(x, tag, s, t):
        nodes.append(helper.make_node("Mul", [const(f"{tag}_s", [s]), x], [f"{tag}_m"]))
        nodes.append(helper.make_node("Add", [f"{tag}_m", const(f"{tag}_t", [t])], [f"{tag}_a"]))
        return f"{tag}_a"

    def hardswish(x, tag):
        nodes.append(helper.make_node("Add", [x, const(f"{tag}_3", [3.0])], [f"{tag}_p"]))
        nodes.append(helper.make_node("Clip", [f"{tag}_p", const(f"{tag}_lo", 0.0), const(f"{tag}_hi", 6.0)], [f"{tag}_c"]))
        nodes.append(helper.make_node("Mul", [x, f"{tag}_c"], [f"{tag}_xm"]))
        nodes.append(helper.make_node("Div", [f"{tag}_xm", const(f"{tag}_6", [6.0])], [f"{tag}_hs"]))
        return f"{tag}_hs"

    w1 = const("w1", rng.normal(0, 0.5, (8, 3, 1, 1)))
    nodes.append(helper.make_node("Conv", ["x", w1, const("b1", rng.normal(0, 0.1, 8))], ["c1"]))
    h = hardswish(affine("c1", "lab1", 1.7, 0.4), "hs1")
    h = affine(h, "lab2", 0.3, -0.2)  # before a 1x1 Conv: folds into it
    nodes.append(helper.make_node("Conv", [h, const("w2", rng.normal(0, 0.5, (8, 8, 1, 1))), const("b2", np.zeros(8))], ["c2"]))
    h = hardswish(affine("c2", "lab3", 2.1, -0.5), "hs2")
    h = affine(h, "lab4", 0.6, 0.25)  # before a zero-padded depthwise Conv: the shift cannot fold
    nodes.append(helper.make_node("Conv", [h, const("w3", rng.normal(0, 0.5, (8, 1, 3, 3)))], ["y"], group=8,
                                  pads=[depthwise_pad] * 4))
    side = 6 - 2 + 2 * depthwise_pad
    graph = helper.make_graph(nodes, "lcnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, side, side])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def rewrite(proto: onnx.ModelProto):
    model = ir.serde.deserialize_model(proto)
    cleanup_graph(model)  # shapes, as in the pipeline
    result = fold_constant_affine(model)
    cleanup_graph(model)
    return result, ir.serde.serialize_model(model)


@pytest.mark.parametrize("opset, pad", [(14, 1), (12, 1), (14, 0)])
def test_lcnet_block_folds_and_stays_exact(opset, pad):
    proto = lcnet_block(opset, pad)
    result, out = rewrite(proto)
    ops = Counter(n.op_type for n in out.graph.node)
    # lab1 and lab3 fold into their producing Conv, lab2 into the 1x1 Conv after it; lab4 only when
    # the depthwise Conv does not pad.
    assert result.counts["affines_folded"] == (3 if pad else 4)
    assert result.counts["hardswish_fused"] == 2
    assert ops["Conv"] == 3 and ops["Clip"] == 0 and ops["Div"] == 0
    if opset >= 14:
        assert ops["HardSwish"] == 2 and ops["Mul"] == (1 if pad else 0) and ops["Add"] == (1 if pad else 0)
    else:
        assert ops["HardSigmoid"] == 2 and ops["Mul"] == (3 if pad else 2)
    if pad:
        assert [s["node"] for s in result.skipped] == ["lab4_m"]
        assert len(result.skipped) == 1 and "zero-pads its input" in result.skipped[0]["why"]
    x = np.random.default_rng(1).normal(0, 2, (1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(proto, x), rtol=RTOL, atol=ATOL)


def test_affine_on_a_graph_output_or_a_non_channel_constant_is_left():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(1, 1, 1, 5)).astype(np.float32), "per_w"),
             numpy_helper.from_array(np.float32([2.0]), "two")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Mul", ["c", "per_w"], ["m"]),  # per column, not per channel: not an affine we fold
             helper.make_node("Conv", ["x", "w"], ["c2"]),
             helper.make_node("Mul", ["c2", "two"], ["y2"])]  # a graph output keeps its node
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 4, 5, 5]),
                               helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 4, 5, 5])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    result, out = rewrite(proto)
    assert result.counts["affines_folded"] == 0 and not result.modified
    assert Counter(n.op_type for n in out.graph.node) == {"Conv": 2, "Mul": 2}


def test_export_folds_for_int8_only(tmp_path):
    """In an export the fp32 artifact keeps the graph as given (bit-exact floors), while the int8
    ONNX and its calibration come from the folded graph: fewer tensors rounded to int8."""
    import edgepack

    src = tmp_path / "lcnet.onnx"
    onnx.save(lcnet_block(14, 1), src)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(2).normal(0, 1, (40, 3, 6, 6)).astype(np.float32))
    report = edgepack.export(src, output_dir=tmp_path / "out", formats=("onnx",), int8=True, calib=calib)
    passes = report["calibration"]["int8_graph_passes"]
    assert passes[0]["name"] == "fold_constant_affine" and passes[0]["counts"] == {"affines_folded": 3, "hardswish_fused": 2}
    fp32, int8 = (onnx.load(str(tmp_path / "out" / a["path"])) for a in report["artifacts"])
    ops = Counter(n.op_type for n in fp32.graph.node)
    assert ops["Mul"] == 6 and ops["Div"] == 2 and ops["Clip"] == 2  # 4 affines + 2 written-out hard-swish, as given
    q = Counter(n.op_type for n in int8.graph.node)
    assert q["HardSwish"] == 2 and q["Clip"] == 0 and q["Mul"] == 1
    assert all(a["ok"] for a in report["artifacts"]), [a["error"] for a in report["artifacts"]]
    off = edgepack.export(src, output_dir=tmp_path / "off", formats=("onnx",), int8=True, calib=calib, fold_affine=False)
    assert off["calibration"]["int8_graph_passes"][0]["skipped"][0]["why"] == "disabled by --no-fold-affine"
    q_off = Counter(n.op_type for n in onnx.load(str(tmp_path / "off" / off["artifacts"][1]["path"])).graph.node)
    assert q_off["HardSwish"] == 0 and q_off["Div"] == 2 and q_off["QuantizeLinear"] > q["QuantizeLinear"]
