"""More single-op ONNX graphs exported to TFLite, run in LiteRT and compared with ONNX Runtime
(optimizations off), in the style of test_tflite_ops_onnx.py: GridSample with a constant grid,
GatherElements and Scatter / ScatterElements / ScatterND with constant indices and updates, LRN,
MeanVarianceNormalization, BatchNormalization with run-time statistics, SwiGLU, and the element moves by a fixed map (CenterCropPad, Compress,
ReverseSequence, GatherND, Pad edge/wrap/axes, Slice with negative steps, Gather with 2-D indices)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert) runs the TFLite artifacts")
pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference")

from edgepack.errors import UnsupportedError  # noqa: E402
from test_tflite_ops_onnx import _export, _model, _reference  # noqa: E402  (the same export and reference helpers)

RNG = np.random.default_rng(1)


def _grid_sample(x_shape, grid, attrs, grid_const=True, opset=20):
    out_shape = list(x_shape[:2]) + list(grid.shape[1:-1])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    inits = [numpy_helper.from_array(grid, "grid")] if grid_const else []
    if not grid_const:
        inputs.append(helper.make_tensor_value_info("grid", TensorProto.FLOAT, grid.shape))
    graph = helper.make_graph([helper.make_node("GridSample", ["x", "grid"], ["y"], **attrs)], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


GRID_CASES = {
    # id: (X shape, grid shape, attributes); grids reach outside [-1, 1] so every padding mode matters
    "linear-zeros": ((2, 3, 5, 6), (2, 4, 7, 2), {"mode": "linear"}),
    "linear-border-corners": ((1, 2, 5, 6), (1, 4, 3, 2), {"mode": "linear", "padding_mode": "border", "align_corners": 1}),
    "linear-reflection": ((1, 2, 4, 5), (1, 6, 6, 2), {"mode": "linear", "padding_mode": "reflection"}),
    "nearest-zeros": ((1, 3, 5, 5), (1, 4, 4, 2), {"mode": "nearest"}),
    "nearest-reflection-corners": ((1, 1, 4, 6), (1, 5, 3, 2), {"mode": "nearest", "padding_mode": "reflection", "align_corners": 1}),
    "cubic-border": ((1, 2, 6, 6), (1, 3, 5, 2), {"mode": "cubic", "padding_mode": "border"}),
    "cubic-reflection": ((1, 2, 5, 4), (1, 3, 4, 2), {"mode": "cubic", "padding_mode": "reflection"}),
    "volumetric-linear": ((1, 2, 3, 4, 5), (1, 2, 3, 4, 3), {"mode": "linear", "padding_mode": "border"}),
}


@pytest.mark.parametrize("case", list(GRID_CASES))
def test_grid_sample_constant_grid(case, tmp_path):
    x_shape, grid_shape, attrs = GRID_CASES[case]
    grid = RNG.uniform(-1.6, 1.6, grid_shape).astype(np.float32)
    _check(_grid_sample(x_shape, grid, attrs), {"x": RNG.uniform(-3, 3, x_shape).astype(np.float32)}, tmp_path, 1e-5)


def _check(proto, feed, tmp_path, tol, want=None):
    """The TFLite artifact's one output against ONNX Runtime's (or `want`), rtol = atol = tol."""
    if want is None:
        (want,) = _reference(proto, feed)
    _, run = _export(proto, tmp_path)
    (got,) = run(feed)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_grid_sample_ops_one_gather(tmp_path):
    grid = RNG.uniform(-1, 1, (1, 4, 4, 2)).astype(np.float32)
    proto = _grid_sample((1, 3, 6, 6), grid, {"mode": "linear"})
    result, _ = _export(proto, tmp_path)
    from ai_edge_litert.interpreter import Interpreter

    ops = [op["op_name"] for op in Interpreter(model_path=str(tmp_path / "m.tflite"))._get_ops_details()]
    assert ops.count("GATHER") == 1 and ops.count("SUM") == 1 and ops.count("MUL") == 1


def test_grid_sample_runtime_grid_is_refused(tmp_path):
    grid = RNG.uniform(-1, 1, (1, 4, 4, 2)).astype(np.float32)
    proto = _grid_sample((1, 3, 6, 6), grid, {"mode": "linear"}, grid_const=False)
    with pytest.raises(UnsupportedError, match="grid computed at run time"):
        _export(proto, tmp_path)
    assert not (tmp_path / "m.tflite").exists()


I64 = np.int64
SCATTER_CASES = {
    # id: (op, data shape, constant inputs, attributes, opset); repeated indices where a reduction allows them
    "gather-elements-axis1": ("GatherElements", (2, 5, 3), {"i": RNG.integers(-5, 5, (2, 4, 3)).astype(I64)}, {"axis": 1}, 18),
    "scatter-elements-none": ("ScatterElements", (3, 4), {"i": np.array([[1, 0, 2], [0, 3, 1]], I64),
                                                         "u": RNG.uniform(-2, 2, (2, 3)).astype(np.float32)}, {"axis": 1}, 18),
    "scatter-elements-add-repeated": ("ScatterElements", (4, 3), {"i": np.array([[1, 1, 0], [1, -1, 0]], I64),
                                                                  "u": RNG.uniform(-2, 2, (2, 3)).astype(np.float32)},
                                      {"axis": 0, "reduction": "add"}, 18),
    "scatter-elements-max": ("ScatterElements", (4, 3), {"i": np.array([[2, 2, 0]], I64),
                                                        "u": RNG.uniform(-2, 2, (1, 3)).astype(np.float32)},
                             {"axis": 0, "reduction": "max"}, 18),
    "scatternd-slices-mul": ("ScatterND", (4, 3, 2), {"i": np.array([[1], [3], [1]], I64),
                                                     "u": RNG.uniform(-2, 2, (3, 3, 2)).astype(np.float32)},
                             {"reduction": "mul"}, 18),
    "scatternd-elements-none": ("ScatterND", (1, 3, 4, 4), {"i": np.array([[0, 1, 2, 3], [0, 2, 0, 0]], I64),
                                                           "u": np.array([5.0, -7.0], np.float32)}, {}, 18),
}


@pytest.mark.parametrize("case", list(SCATTER_CASES))
def test_gather_scatter_constant_indices(case, tmp_path):
    op, shape, consts, attrs, opset = SCATTER_CASES[case]
    feed = {"x": RNG.uniform(-3, 3, shape).astype(np.float32)}
    _check(_model(op, feed, attrs, consts, opset=opset), feed, tmp_path, 1e-6)


def test_scatter_with_run_time_updates_is_refused(tmp_path):
    feed = {"x": np.zeros((3, 4), np.float32), "u": np.ones((1, 4), np.float32)}
    proto = _model("ScatterElements", feed, {"axis": 0}, {"i": np.zeros((1, 4), I64)})
    proto.graph.node[0].input[:] = ["x", "i", "u"]
    with pytest.raises(UnsupportedError, match="computed at run time"):
        _export(proto, tmp_path)


def _u(*shape):
    return RNG.uniform(-3, 3, shape).astype(np.float32)


NORM_CASES = {
    # id: (op, run-time inputs, attributes, opset, tolerance)
    "lrn-size5": ("LRN", {"x": _u(1, 7, 4, 5)}, {"size": 5, "alpha": 0.02, "beta": 0.6, "bias": 1.5}, 18, 1e-5),
    "lrn-defaults": ("LRN", {"x": _u(2, 4, 3, 3)}, {"size": 3}, 18, 1e-5),
    "mvn-default-axes": ("MeanVarianceNormalization", {"x": _u(2, 3, 4, 5)}, {}, 18, 1e-4),
    "mvn-last-axis": ("MeanVarianceNormalization", {"x": _u(2, 3, 6)}, {"axes": [2]}, 18, 1e-4),
    "batchnorm-run-time-stats": ("BatchNormalization", {"x": _u(2, 3, 4, 5), "s": _u(3), "b": _u(3), "m": _u(3),
                                                         "v": RNG.uniform(0.1, 2, 3).astype(np.float32)}, {"epsilon": 1e-3}, 15, 1e-5),
    "batchnorm-3d": ("BatchNormalization", {"x": _u(2, 4, 6), "s": _u(4), "b": _u(4), "m": _u(4),
                                            "v": RNG.uniform(0.1, 2, 4).astype(np.float32)}, {}, 15, 1e-5),
    "swiglu-alpha": ("SwiGLU", {"a": _u(2, 3, 8), "b": _u(2, 3, 8)}, {"alpha": 1.7}, 28, 1e-5),
}


@pytest.mark.parametrize("case", list(NORM_CASES))
def test_norm_and_gated_ops(case, tmp_path):
    op, feed, attrs, opset, tol = NORM_CASES[case]
    want = None
    if op == "SwiGLU":  # ONNX Runtime 1.32 has no SwiGLU (opset 28): its definition, in numpy
        a, b = feed["a"].astype(np.float64), feed["b"].astype(np.float64)
        want = a / (1 + np.exp(-attrs["alpha"] * a)) * b
    shape = next(iter(feed.values())).shape
    _check(_model(op, feed, attrs, opset=opset, out_shapes={"y0": shape}), feed, tmp_path, tol, want)


def test_constant_graph_output_is_written(tmp_path):
    """An output that folds to a constant (a KV-cache Concat of constants) is still an output."""
    a, b = _u(1, 2, 3, 4), _u(1, 2, 1, 4)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Concat", ["a", "b"], ["cache"], axis=2)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("cache", TensorProto.FLOAT, [1, 2, 4, 4])],
        [numpy_helper.from_array(a, "a"), numpy_helper.from_array(b, "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feed = {"x": _u(1, 5)}
    result, run = _export(proto, tmp_path)
    y, cache = run(feed)
    assert [d["name"] for d in result.outputs] == ["y", "cache"]
    np.testing.assert_array_equal(y, np.maximum(feed["x"], 0))
    np.testing.assert_array_equal(cache, np.concatenate([a, b], axis=2))


MOVE_CASES = {
    # id: (op, data shape, constant inputs, attributes, opset)
    "center-crop-pad": ("CenterCropPad", (5, 4, 3), {"s": np.array([3, 7], I64)}, {"axes": [0, 1]}, 18),
    "compress-axis": ("Compress", (3, 5), {"c": np.array([1, 0, 1, 1], bool)}, {"axis": 1}, 18),
    "compress-flat": ("Compress", (2, 3), {"c": np.array([0, 1, 0, 0, 1, 1], bool)}, {}, 18),
    "reverse-sequence": ("ReverseSequence", (4, 3, 2), {"n": np.array([4, 1, 3], I64)}, {"batch_axis": 1, "time_axis": 0}, 18),
    "gather-nd": ("GatherND", (3, 4, 2), {"i": np.array([[[0, 1], [2, -1]], [[1, 0], [1, 3]]], I64)}, {}, 18),
    "pad-edge-axes": ("Pad", (1, 2, 3, 4), {"p": np.array([1, 0, 2, 3], I64), "v": np.array(0, np.float32),
                                            "a": np.array([2, -1], I64)}, {"mode": "edge"}, 18),
    "pad-wrap": ("Pad", (2, 3), {"p": np.array([0, 2, 0, 1], I64)}, {"mode": "wrap"}, 19),
    "slice-negative-steps": ("Slice", (5, 6), {"s": np.array([-1, 4], I64), "e": np.array([-9, 0], I64),
                                               "a": np.array([0, 1], I64), "t": np.array([-2, -1], I64)}, {}, 18),
    "gather-2d-indices": ("Gather", (3, 5, 2), {"i": np.array([[4, 0], [-1, 2]], I64)}, {"axis": 1}, 18),
}


@pytest.mark.parametrize("case", list(MOVE_CASES))
def test_moves_by_a_fixed_map(case, tmp_path):
    op, shape, consts, attrs, opset = MOVE_CASES[case]
    feed = {"x": _u(*shape)}
    (want,) = _reference(_model(op, feed, attrs, consts, opset=opset), feed)
    # the output's shape declared (Compress's is data-dependent for ONNX's shape inference)
    _check(_model(op, feed, attrs, consts, opset=opset, out_shapes={"y0": want.shape}), feed, tmp_path, 0.0, want)


ROPE_CASES = {
    # id: (x shape, attributes, position ids or None (caches fed at run time, (B, S, rot/2)))
    "3d-heads-rotary-dim": ((2, 3, 2 * 8), {"num_heads": 2, "rotary_embedding_dim": 4}, np.array([[0, 2, 5], [1, 1, 7]])),
    "3d-interleaved": ((1, 4, 3 * 6), {"num_heads": 3, "interleaved": 1}, np.array([[3, 0, 2, 6]])),
    "4d-run-time-caches": ((2, 3, 5, 8), {}, None),
    "4d-run-time-caches-interleaved-partial": ((1, 2, 4, 8), {"interleaved": 1, "rotary_embedding_dim": 6}, None),
}


@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_rotary_embedding(case, tmp_path):
    shape, attrs, ids = ROPE_CASES[case]
    head = shape[-1] if len(shape) == 4 else shape[-1] // attrs["num_heads"]
    half = attrs.get("rotary_embedding_dim", head) // 2
    angles = RNG.uniform(0, 6, (8, half) if ids is not None else (shape[0], shape[-2], half))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    feed = {"x": _u(*shape)}
    if ids is None:
        feed.update(cos=cos, sin=sin)
        proto = _model("RotaryEmbedding", feed, attrs, opset=23, out_shapes={"y0": shape})
    else:
        proto = _model("RotaryEmbedding", feed, attrs, {"cos": cos, "sin": sin, "ids": ids.astype(I64)}, opset=23,
                       out_shapes={"y0": shape})
    _check(proto, feed, tmp_path, 1e-5)


@pytest.mark.parametrize("run_time_weights", [False, True], ids=["constant-weights", "run-time-weights"])
def test_causal_conv_with_state(run_time_weights, tmp_path):
    """Against the ONNX reference evaluator (ONNX Runtime 1.32 has no opset-27 CausalConvWithState)."""
    from onnx.reference import ReferenceEvaluator

    x, past = _u(2, 3, 5), _u(2, 3, 2)
    weight, bias = _u(3, 1, 3), _u(3)
    feed = {"x": x, "w": weight} if run_time_weights else {"x": x}
    consts = {"b": bias, "p": past} if run_time_weights else {"w": weight, "b": bias, "p": past}
    proto = _model("CausalConvWithState", feed, {"activation": "silu"}, consts, n_out=2, opset=27,
                   out_shapes={"y0": (2, 3, 5), "y1": (2, 3, 2)})
    if not run_time_weights:
        proto.graph.node[0].input[:] = ["x", "w", "b", "p"]
    want = ReferenceEvaluator(proto).run(None, feed)
    _, run = _export(proto, tmp_path)
    got = run(feed)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
