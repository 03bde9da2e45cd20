"""ncnn reductions: pnnx (from ONNX) writes a Reduction's axes counting the batch axis ncnn does not
have, and loses axes given as an input (opset 18); export_ncnn sets each Reduction's axes from its
ONNX node. Single-node graphs converted and run in ncnn, compared with ONNX Runtime."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.errors import UnsupportedError

if importlib.util.find_spec("ncnn") is None or importlib.util.find_spec("pnnx") is None:
    pytest.skip("ncnn and pnnx are not installed (the optional extra: pip install 'edgepack[ncnn-export]')", allow_module_level=True)
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference")


def _reduce(op, shape, axes, *, perm=None, opset=13, keepdims=0):
    nodes, src, inits = [], "x", []
    if perm:
        nodes.append(helper.make_node("Transpose", ["x"], ["t"], perm=perm))
        src = "t"
    if opset >= 18 or op == "ReduceSum":
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        nodes.append(helper.make_node(op, [src, "axes"], ["y"], keepdims=keepdims))
    else:
        nodes.append(helper.make_node(op, [src], ["y"], keepdims=keepdims, axes=axes))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _run_ncnn(proto, x, tmp_path):
    from edgepack.converters.export_ncnn import export_ncnn
    from edgepack.runtimes.artifact import artifact_runner

    model = ir.from_proto(proto)
    result = export_ncnn(model, tmp_path / "m.param", fp16=False)
    io = [[{"name": v.name, "shape": list(v.shape), "ncnn_blob": result.blob_names[v.name]} for v in vs]
          for vs in (model.graph.inputs, model.graph.outputs)]
    run = artifact_runner(tmp_path / "m.param", {"precision": "fp32", "inputs": io[0], "outputs": io[1]})
    return run({"x": x})[0], (tmp_path / "m.param").read_text()


CASES = {
    # the keyword spotter's mean over time after a transpose: pnnx wrote axes [1] (one off)
    "mean-after-transpose": ("ReduceMean", [1, 96, 49], [1], dict(perm=[0, 2, 1])),
    "mean-hw-axes-input-keepdims": ("ReduceMean", [1, 4, 5, 6], [2, 3], dict(opset=18, keepdims=1)),  # pnnx: no axes
    "sum-last-negative": ("ReduceSum", [1, 49, 96], [-1], {}),
    "mean-batch-and-h-keepdims": ("ReduceMean", [1, 4, 5, 6], [0, 2], dict(keepdims=1)),
}


HEAVY = {"sum-last-negative", "mean-batch-and-h-keepdims"}  # (the default suite's time budget: two cases there)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.heavy) if c in HEAVY else c for c in CASES])
def test_reduction_axes_match_onnx(case, tmp_path):
    op, shape, axes, kw = CASES[case]
    proto = _reduce(op, shape, axes, **kw)
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    (want,) = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got, param = _run_ncnn(proto, x, tmp_path)
    assert param.count("Reduction") == 1
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_reducing_the_batch_axis_away_is_refused(tmp_path):
    proto = _reduce("ReduceMean", [1, 4, 5, 6], [0, 2], keepdims=0)
    with pytest.raises(UnsupportedError, match="ncnn cannot represent"):
        _run_ncnn(proto, np.zeros((1, 4, 5, 6), np.float32), tmp_path)
    assert not (tmp_path / "m.param").exists()
