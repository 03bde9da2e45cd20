"""fold_shape_subgraphs: shape arithmetic on a graph with symbolic input dims (the form TorchScript
models such as torchcrepe and Paddle exports such as PP-OCR take) becomes constants once the
input shape is fixed; the folded graph exports to TFLite and matches ONNX Runtime."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from edgepack.converters.export_tflite import export_tflite
from edgepack.converters.fold_shape_subgraphs import SHAPE_OPS, fold_shape_subgraphs
from edgepack.options import InputSpec
from edgepack.pipeline import _with_static_inputs

SHAPE = (1, 4, 6)


def _i64(name: str, values) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def shape_model() -> onnx.ModelProto:
    """x [N, 4, T]: pad with ConstantOfShape([N, 4, 2]) (0.5), add Range(T + 2), flatten with a
    computed Reshape shape [N, -1], add a constant Expanded to the shape of the result."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Gather", ["s", "two"], ["t"], axis=0),
        helper.make_node("Concat", ["n", "four_two"], ["pad_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["pad_shape"], ["pad"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Concat", ["x", "pad"], ["xp"], axis=2),
        helper.make_node("Add", ["t", "two"], ["t2"]),
        helper.make_node("Squeeze", ["t2"], ["t2s"]),
        helper.make_node("Cast", ["t2s"], ["t2f"], to=TensorProto.FLOAT),
        helper.make_node("Range", ["start", "t2f", "step"], ["r"]),
        helper.make_node("Add", ["xp", "r"], ["y"]),
        helper.make_node("Concat", ["n", "minus_one"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["y", "flat_shape"], ["flat"]),
        helper.make_node("Shape", ["flat"], ["fs"]),
        helper.make_node("Expand", ["bias", "fs"], ["b"]),
        helper.make_node("Mul", ["flat", "b"], ["out"]),
    ]
    inits = [_i64("zero", [0]), _i64("two", [2]), _i64("four_two", [4, 2]), _i64("minus_one", [-1]),
             helper.make_tensor("start", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("step", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("bias", TensorProto.FLOAT, [1], [1.5])]
    graph = helper.make_graph(nodes, "shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "T"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "F"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _ort(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_shape_subgraph_folds_to_constants_and_exports_to_tflite(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    proto = shape_model()
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    expected = _ort(proto, x)
    model = ir.from_proto(_with_static_inputs(proto, [InputSpec("x", SHAPE)]))
    result = fold_shape_subgraphs(model)
    ops = Counter(n.op_type for n in model.graph)
    assert not any(ops.get(op) for op in (*SHAPE_OPS, "Gather", "Cast", "Squeeze")), ops
    assert ops == {"Concat": 1, "Add": 1, "Reshape": 1, "Mul": 1}, ops  # only the data path is left
    assert result.modified and result.counts["folded_Shape"] == 2 and result.counts["folded_ConstantOfShape"] == 1
    assert result.counts["folded_Range"] == 1 and result.counts["folded_Expand"] == 1
    assert result.skipped == []
    assert tuple(model.graph.outputs[0].shape) == (1, 32)
    folded = _ort(ir.to_proto(model), x)
    np.testing.assert_allclose(folded, expected, rtol=1e-6, atol=0)

    export_tflite(model, tmp_path / "m.tflite", "fp32")
    it = Interpreter(model_path=str(tmp_path / "m.tflite"))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_data_dependent_shape_is_left_and_reported():
    """Shape(NonZero(x)) depends on the values: it stays, with the reason in `skipped`."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Shape", ["nz"], ["out"])]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.INT64, [2])])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    result = fold_shape_subgraphs(model)
    assert [n.op_type for n in model.graph] == ["NonZero", "Shape"]
    assert [s["op"] for s in result.skipped] == ["Shape"]
    assert "depends on the data" in result.skipped[0]["why"]


@pytest.mark.heavy
def test_ppocr_v4_rec_exports_to_tflite(tmp_path):
    """PP-OCRv4's recogniser (rapidocr-onnxruntime's real weights) failed TFLite on `Shape`."""
    rapidocr = pytest.importorskip("rapidocr_onnxruntime", reason="pip install rapidocr-onnxruntime==1.4.4 (benchmark extra)")
    from pathlib import Path

    path = Path(rapidocr.__file__).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    proto = onnx.load(str(path))
    x = np.random.default_rng(0).random((1, 3, 48, 320), dtype=np.float32)
    model = ir.from_proto(_with_static_inputs(proto, [InputSpec("x", (1, 3, 48, 320))]))
    result = fold_shape_subgraphs(model)
    assert result.counts["folded_Shape"] == 4 and result.skipped == []
    from edgepack.converters.cleanup_graph import cleanup_graph
    from edgepack.converters.fold_batchnorm import fold_batchnorm

    fold_batchnorm(model)
    cleanup_graph(model)
    expected = _ort(proto, x)
    export_tflite(model, tmp_path / "rec.tflite", "fp32")
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tmp_path / "rec.tflite"))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x.transpose(0, 2, 3, 1).copy())
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_minus_one_dims_declared_by_the_exporter_are_reinferred():
    """Paddle2ONNX declares unknown dims as dim_value -1; inference would keep them (PP-OCR cls's output)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Flatten", ["r"], ["out"], axis=1)]
    graph = helper.make_graph(nodes, "minus_one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [-1, 6])],
                              value_info=[helper.make_tensor_value_info("r", TensorProto.FLOAT, [-1, 2, 3])])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    result = fold_shape_subgraphs(model)
    assert result.counts["invalid_shapes_reinferred"] == 2
    assert tuple(model.graph.outputs[0].shape) == (1, 6)
    assert tuple(next(iter(model.graph)).outputs[0].shape) == (1, 2, 3)
