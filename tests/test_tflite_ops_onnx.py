"""Single-op ONNX graphs (built with onnx.helper, no torch) exported to TFLite and run in LiteRT,
compared with ONNX Runtime (optimizations off). One graph per case; tolerances per case below."""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert) runs the TFLite artifacts")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference")

from edgepack.converters.cleanup_graph import cleanup_graph  # noqa: E402
from edgepack.errors import EdgepackError  # noqa: E402

RNG = np.random.default_rng(0)


def _model(op, inputs, attrs=None, consts=None, n_out=1, opset=18, out_shapes=None):
    """One node: `inputs` = {name: array} fed at run time, `consts` = {name: array} initializers
    (input order: inputs then consts, unless a name in `order`)."""
    names = list(inputs) + list(consts or {})
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, (out_shapes or {}).get(o)) for o in outs],
        [numpy_helper.from_array(v, k) for k, v in (consts or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _export(proto, tmp_path):
    import onnx_ir as ir

    from edgepack.runtimes.artifact import artifact_runner
    from edgepack.converters.export_tflite import export_tflite

    model = ir.from_proto(proto)
    cleanup_graph(model)
    result = export_tflite(model, tmp_path / "m.tflite", "fp32")
    return result, artifact_runner(tmp_path / "m.tflite", {"inputs": result.inputs, "outputs": result.outputs})


def _reference(proto, feed):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)


def x(*shape, lo=-3.0, hi=3.0):
    return RNG.uniform(lo, hi, shape).astype(np.float32)


F = np.float32
CASES = {
    # id: (op, run-time inputs, attributes, constant inputs, outputs, opset, rtol, atol)
    "elu_alpha": ("Elu", {"x": x(2, 5)}, {"alpha": 0.5}, None, 1, 18, 1e-5, 1e-6),
    "selu": ("Selu", {"x": x(2, 5)}, None, None, 1, 18, 1e-5, 1e-6),
    "celu": ("Celu", {"x": x(2, 5)}, {"alpha": 2.0}, None, 1, 18, 1e-5, 1e-6),
    "thresholded_relu": ("ThresholdedRelu", {"x": x(3, 4)}, {"alpha": 0.5}, None, 1, 18, 0, 0),
    "shrink": ("Shrink", {"x": x(3, 4)}, {"lambd": 1.0, "bias": 0.5}, None, 1, 18, 0, 1e-6),
    "softplus": ("Softplus", {"x": x(3, 8, lo=-20, hi=20)}, None, None, 1, 18, 2e-4, 1e-7),
    "mish": ("Mish", {"x": x(3, 8, lo=-8, hi=25)}, None, None, 1, 18, 1e-5, 1e-6),
    "softsign": ("Softsign", {"x": x(3, 4)}, None, None, 1, 18, 1e-6, 1e-7),
    "gelu_tanh": ("Gelu", {"x": x(3, 8)}, {"approximate": "tanh"}, None, 1, 20, 1e-5, 1e-6),
    "erf": ("Erf", {"x": x(4, 16)}, None, None, 1, 18, 1e-5, 2e-7),
    "tan": ("Tan", {"x": x(3, 4, lo=-1.2, hi=1.2)}, None, None, 1, 18, 1e-5, 1e-6),
    "atan": ("Atan", {"x": x(3, 4)}, None, None, 1, 18, 1e-5, 1e-6),
    "asin": ("Asin", {"x": x(3, 4, lo=-0.99, hi=0.99)}, None, None, 1, 18, 1e-5, 1e-6),
    "acosh": ("Acosh", {"x": x(3, 4, lo=1.1, hi=5)}, None, None, 1, 18, 1e-5, 1e-6),
    "sinh": ("Sinh", {"x": x(3, 4)}, None, None, 1, 18, 1e-5, 1e-6),
    "round": ("Round", {"x": np.array([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6]], F)}, None, None, 1, 18, 0, 0),
    "sign": ("Sign", {"x": np.array([[-2.0, 0.0, 3.0]], F)}, None, None, 1, 18, 0, 0),
    "mod_fmod": ("Mod", {"a": x(3, 4, lo=-9, hi=9)}, {"fmod": 1}, {"b": np.array([2.5, -3.0, 1.5, 4.0], F)}, 1, 18, 1e-5, 1e-5),
    "sum3": ("Sum", {"a": x(2, 3), "b": x(3), "c": x(2, 1)}, None, None, 1, 18, 1e-6, 1e-6),
    "mean3": ("Mean", {"a": x(2, 3), "b": x(2, 3), "c": x(2, 3)}, None, None, 1, 18, 1e-6, 1e-6),
    "max1": ("Max", {"a": x(2, 3)}, None, None, 1, 18, 0, 0),
    "min3": ("Min", {"a": x(2, 3), "b": x(2, 3), "c": x(1, 3)}, None, None, 1, 18, 0, 0),
    "prelu_runtime_slope": ("PRelu", {"x": x(2, 3, 4), "s": x(4)}, None, None, 1, 18, 1e-6, 1e-6),
    "layernorm_stats": ("LayerNormalization", {"x": x(2, 3, 8)}, {"axis": -1},
                        {"s": x(8), "b": x(8)}, 3, 18, 1e-4, 1e-5),
    "rmsnorm": ("RMSNormalization", {"x": x(2, 3, 8)}, {"axis": -2}, {"s": x(3, 8)}, 1, 23, 1e-4, 1e-5),
    "gemm_trans_alpha_beta": ("Gemm", {"a": x(6, 4), "b": x(5, 6)}, {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
                              {"c": x(4, 5)}, 1, 18, 1e-5, 1e-5),
    "matmul_1d_left": ("MatMul", {"a": x(4), "b": x(2, 4, 3)}, None, None, 1, 18, 1e-5, 1e-5),
    "matmul_1d_right": ("MatMul", {"a": x(2, 3, 4), "b": x(4)}, None, None, 1, 18, 1e-5, 1e-5),
    "hardmax": ("Hardmax", {"x": x(2, 3, 5)}, {"axis": 1}, None, 1, 18, 0, 0),
    "lp_norm_l1": ("LpNormalization", {"x": x(2, 3, 4)}, {"axis": 1, "p": 1}, None, 1, 18, 1e-5, 1e-6),
    "reduce_log_sum_exp": ("ReduceLogSumExp", {"x": x(2, 3, 4)}, {"keepdims": 0}, {"axes": np.array([1], np.int64)}, 1, 18, 1e-5, 1e-5),
    "reduce_prod": ("ReduceProd", {"x": x(2, 3, 4, lo=0.5, hi=1.5)}, None, {"axes": np.array([2], np.int64)}, 1, 18, 1e-5, 1e-6),
    "resize_cubic_scales": ("Resize", {"x": x(1, 2, 5, 7)}, {"mode": "cubic"},
                            {"roi": np.zeros(0, F), "scales": np.array([1, 1, 0.8, 1.7], F)}, 1, 18, 1e-4, 1e-5),
    "resize_nearest_scales": ("Resize", {"x": x(1, 2, 5, 7)}, {"mode": "nearest"},
                              {"roi": np.zeros(0, F), "scales": np.array([1, 1, 0.6, 2.3], F)}, 1, 18, 0, 0),
    "resize_linear_crop": ("Resize", {"x": x(1, 1, 6, 6)}, {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                                                            "extrapolation_value": 7.0},
                           {"roi": np.array([0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3], F), "scales": np.array([1, 1, 1.5, 0.7], F)},
                           1, 18, 1e-5, 1e-5),
    "depth_to_space_crd": ("DepthToSpace", {"x": x(1, 8, 3, 4)}, {"blocksize": 2, "mode": "CRD"}, None, 1, 18, 0, 0),
    "space_to_depth": ("SpaceToDepth", {"x": x(1, 2, 4, 6)}, {"blocksize": 2}, None, 1, 18, 0, 0),
    "tile": ("Tile", {"x": x(2, 3)}, None, {"r": np.array([2, 3], np.int64)}, 1, 18, 0, 0),
    "attention_causal_gqa": ("Attention", {"q": x(1, 4, 3, 8), "k": x(1, 2, 5, 8), "v": x(1, 2, 5, 8)}, {"is_causal": 1},
                             None, 1, 23, 1e-4, 1e-5),
    "attention_runtime_mask_3d": ("Attention", {"q": x(1, 3, 16), "k": x(1, 5, 16), "v": x(1, 5, 16), "m": x(3, 5)},
                                  {"q_num_heads": 2, "kv_num_heads": 2}, None, 1, 23, 1e-4, 1e-5),
    "conv_runtime_weights": ("Conv", {"x": x(1, 3, 7, 6), "w": x(4, 3, 3, 3)}, {"pads": [1, 0, 1, 2], "strides": [2, 1]},
                             None, 1, 18, 1e-5, 1e-5),
    "conv_transpose_runtime_weights": ("ConvTranspose", {"x": x(1, 3, 4, 5), "w": x(3, 2, 3, 3)}, {"strides": [2, 2]},
                                       None, 1, 18, 1e-5, 1e-5),
    "lp_pool_p3": ("LpPool", {"x": x(1, 2, 6, 7)}, {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1], "p": 3},
                   None, 1, 18, 1e-4, 1e-5),
    "swish": ("Swish", {"x": x(2, 5)}, {"alpha": 1.5}, None, 1, 24, 1e-5, 1e-6),
    "avg_pool_1d": ("AveragePool", {"x": x(1, 3, 11)}, {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, None, 1, 18,
                    1e-5, 1e-6),
    "max_pool_1d": ("MaxPool", {"x": x(2, 3, 9)}, {"kernel_shape": [4], "pads": [2, 1]}, None, 1, 18, 0, 0),
}


# ONNX Runtime 1.32 maps output pixels with out / in where the ONNX spec uses the given scales (and
# differs on tf_crop_and_resize): these compare with the ONNX reference evaluator, which follows the
# spec (the conformance suite's expected outputs agree with it).
SPEC_REFERENCE = {"resize_nearest_scales", "resize_linear_crop"}


@pytest.mark.parametrize("case", list(CASES))
def test_op_matches_onnxruntime(case, tmp_path):
    op, inputs, attrs, consts, n_out, opset, rtol, atol = CASES[case]
    proto = _model(op, inputs, attrs, consts, n_out, opset)
    result, run = _export(proto, tmp_path)
    got = run(inputs)
    if case in SPEC_REFERENCE:
        from onnx.reference import ReferenceEvaluator

        want = ReferenceEvaluator(proto).run(None, inputs)
    else:
        want = _reference(proto, inputs)
    assert len(got) == len(want) == n_out
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.reshape(w.shape), w, rtol=rtol, atol=atol)
    if op in ("Max", "Min"):
        assert "MAXIMUM" not in result.op_census and "MINIMUM" not in result.op_census or len(inputs) > 1
    if op == "Resize" and attrs["mode"] == "nearest":
        assert set(result.op_census) <= {"GATHER", "RESHAPE"}, result.op_census  # one tap per axis: a pure gather


def test_max_with_one_input_is_a_copy(tmp_path):
    result, _ = _export(_model("Max", {"a": x(2, 3)}), tmp_path)
    assert result.op_census == {"RESHAPE": 1}


def test_resize_with_runtime_scales_is_refused_naming_them(tmp_path):
    proto = _model("Resize", {"x": x(1, 2, 4, 4), "roi": np.zeros(0, F), "scales": np.array([1, 1, 0.6, 0.6], F)},
                   {"mode": "linear"}, out_shapes={"y0": [1, 2, 2, 2]})
    with pytest.raises(EdgepackError, match="scales computed at run time .*'scales'.*initializers"):
        _export(proto, tmp_path)


def test_softplus_keeps_digits_for_very_negative_inputs(tmp_path):
    feed = {"x": np.array([[-30.0, -17.0, -10.0, 0.0, 10.0, 40.0]], F)}
    _, run = _export(_model("Softplus", feed), tmp_path)
    want = np.log1p(np.exp(feed["x"].astype(np.float64)))
    np.testing.assert_allclose(run(feed)[0], want, rtol=2e-4, atol=0)
    assert math.isfinite(float(run(feed)[0].max()))


def test_scalar_input_and_output_keep_rank_0(tmp_path):
    feed = {"x": np.array(0.3, F), "b": np.array([1.0, -2.0], F)}
    result, run = _export(_model("Mul", feed), tmp_path)
    assert result.inputs[0]["shape"] == [] and result.outputs[0]["shape"] == [2]
    np.testing.assert_array_equal(run(feed)[0], np.array([0.3, -0.6], F))
    result, run = _export(_model("Sigmoid", {"x": feed["x"]}), tmp_path)
    got = run({"x": feed["x"]})[0]
    assert got.shape == () and abs(float(got) - 1 / (1 + math.exp(-0.3))) < 1e-6
