"""Model inputs of unusual kinds. Rank-0 (scalar) inputs: `--input-shape name:scalar`, an ONNX input
declared with shape [] taken as static (not unknown), and the export through ONNX and TFLite (fp32
and int8) compared with ONNX Runtime. Inputs whose values set a shape (Resize scales...): a
one-line error naming the operand, not the input shape."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgepack.errors import UsageError
from edgepack.options import InputSpec, parse_input_shapes
from edgepack.verify import batch_size, per_call

pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert) runs the TFLite artifacts")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference")


def test_input_shape_scalar_spelling():
    assert InputSpec.parse("t:scalar") == InputSpec("t", ())
    assert InputSpec.parse("SCALAR") == InputSpec(None, ())
    assert str(InputSpec("t", ())) == "t:scalar"
    assert [s.shape for s in parse_input_shapes(["x:1x4", "t:scalar"])] == [(1, 4), ()]
    with pytest.raises(UsageError, match="scalar"):
        InputSpec.parse("t:scalr")


def test_batch_of_scalar_first_input():
    assert batch_size({"t": (), "x": (3, 4)}) == 3
    assert batch_size({"t": ()}) == 1
    samples = np.arange(6, dtype=np.float32)
    got = per_call(samples[2:5], ())
    assert got.shape == () and float(got) == 2.0  # the scalar of a batch: its first sample
    assert per_call(np.arange(8, dtype=np.float32).reshape(2, 4), (2, 4)).shape == (2, 4)


def _scalar_model(path):
    # y = x * s + s: s is rank 0 and comes first (the batch is read from x)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Add", ["m", "s"], ["y"])], "g",
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, []), helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])])
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_onnx_scalar_input_is_static(tmp_path):
    from edgepack.load import load_source

    _scalar_model(tmp_path / "m.onnx")
    src = load_source(tmp_path / "m.onnx")
    assert src.stored_shapes == {"s": (), "x": (2, 6)}


def test_scalar_input_exports_tflite_fp32_and_int8(tmp_path):
    import edgepack
    from edgepack.runtimes.artifact import artifact_runner

    _scalar_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", s=rng.uniform(0.5, 2, 80).astype(np.float32),
             x=rng.uniform(-1, 1, (80, 6)).astype(np.float32))
    report = edgepack.export(tmp_path / "m.onnx", output_dir=tmp_path / "out", formats=("onnx", "tflite"),
                             int8=True, calib=tmp_path / "cal.npz")
    by = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    assert set(by) == {("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")}
    for key, art in by.items():
        assert art["ok"], (key, art.get("error"))
        assert [d["shape"] for d in art["inputs"]] == [[], [2, 6]]
    # the TFLite fp32 artifact on a fresh feed, against ONNX Runtime
    art = by[("tflite", "fp32")]
    run = artifact_runner(tmp_path / "out" / art["path"], art)
    feed = {"s": np.array(1.5, np.float32), "x": rng.uniform(-1, 1, (2, 6)).astype(np.float32)}
    (got,) = run(feed)
    assert got.shape == (2, 6)
    np.testing.assert_allclose(got, feed["x"] * 1.5 + 1.5, rtol=1e-6, atol=1e-6)
    assert by[("tflite", "int8")]["fidelity"]["cosine"] > 0.99


def test_resize_scales_input_is_named_not_the_shape(tmp_path):
    import onnx

    import edgepack
    from edgepack.load import value_operand_inputs

    graph = helper.make_graph(
        [helper.make_node("Resize", ["X", "", "scales"], ["Y"], mode="nearest"),
         helper.make_node("Reshape", ["Y", "shape"], ["Z"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 2, 2]),
         helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [1, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert value_operand_inputs(model.graph) == {"scales": "the scales of Resize node (output 'Y')",
                                                 "shape": "the shape of Reshape node (output 'Z')"}
    onnx.save(model, str(tmp_path / "r.onnx"))
    with pytest.raises(UsageError) as info:
        edgepack.export(tmp_path / "r.onnx", output_dir=tmp_path / "out", formats=("tflite",))
    text = str(info.value)
    assert "input 'scales' is the scales of Resize node" in text and "initializer" in text
    assert "--input-shape" not in text and "\n" not in text
