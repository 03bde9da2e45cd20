"""Full-integer int8 TFLite from the one calibration: digits accuracy, agreement with the int8
ONNX, op census (one QUANTIZE per input, one DEQUANTIZE per output, nothing else), int8 IO, and a
small op matrix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgepack

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PT2, CALIB, TEST = EXAMPLES / "digits_cnn.pt2", EXAMPLES / "digits_calib.npy", EXAMPLES / "digits_test.npz"


def _art(report: dict, fmt: str, precision: str) -> dict:
    return next(a for a in report["artifacts"] if a["format"] == fmt and a["precision"] == precision)


def _tensor_types(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (TensorType, number of quantization scales) of every tensor in the flatbuffer."""
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    out = {}
    for t in model.subgraphs[0].tensors:
        scales = 0 if t.quantization is None or t.quantization.scale is None else len(t.quantization.scale)
        out[t.name.decode() if isinstance(t.name, bytes) else t.name] = (t.type, scales)
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits8")
    report = edgepack.export(PT2, output_dir=out, calib=CALIB, int8=True, formats=("onnx", "tflite"), eval_data=TEST)
    return out, report


def test_digits_int8_tflite_accuracy_and_agreement_with_int8_onnx(digits):
    out, report = digits
    art = _art(report, "tflite", "int8")
    assert art["ok"], art["error"]
    assert report["evaluation"]["reference_top1"] - art["accuracy"]["top1"] <= 0.01
    agreement = art["agreement_with_onnx_int8"]
    assert agreement["top1_agreement"] >= 0.99 and agreement["cosine"] >= 0.999
    assert art["fidelity"]["cosine"] >= 0.99


def test_int8_census_and_full_integer_tensors(digits):
    out, report = digits
    art = _art(report, "tflite", "int8")
    census = art["op_census"]
    assert census.get("QUANTIZE", 0) == 1 and census.get("DEQUANTIZE", 0) == 1  # one input, one output
    assert census.get("TRANSPOSE", 0) == 0 and art["transposes"] == 0
    from ai_edge_litert import schema_py_generated as s

    types = _tensor_types(out / art["path"])
    floats = [n for n, (t, _) in types.items() if t == s.TensorType.FLOAT32]
    assert sorted(floats) == ["output", "x"]  # only the float IO around QUANTIZE / DEQUANTIZE
    per_channel = [n for n, (t, k) in types.items() if t == s.TensorType.INT8 and k > 1]
    assert len(per_channel) == 4  # 3 conv filters + the fully connected weights, one scale per output channel
    assert art["calibration"]["file"] == "calibration.json"


def test_int8_io_records_scale_and_zero_point(tmp_path):
    report = edgepack.export(PT2, output_dir=tmp_path, calib=CALIB, int8=True, int8_io=True, formats=("tflite",))
    art = _art(report, "tflite", "int8")
    assert art["ok"], art["error"]
    assert "QUANTIZE" not in art["op_census"] and "DEQUANTIZE" not in art["op_census"]
    x = art["inputs"][0]
    assert x["dtype"] == "int8" and x["scale"] > 0 and -128 <= x["zero_point"] <= 127
    assert art["outputs"][0]["dtype"] == "int8"


class _Block(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x: torch.Tensor):
        y = torch.relu(self.conv(x))
        k = self.kind
        if k == "relu6_depthwise":
            y = nn.functional.relu6(self.dw(y))
        elif k == "residual_add":
            y = y + self.pw(y)
        elif k == "concat":
            y = torch.cat([y, self.pw(y)], 1)[:, :8]
        elif k == "pools":
            y = nn.functional.interpolate(nn.functional.max_pool2d(y, 2) + nn.functional.avg_pool2d(y, 2), scale_factor=2.0)
        elif k == "sigmoid_hardswish":
            y = nn.functional.hardswish(y) * torch.sigmoid(self.pw(y))
        elif k == "maxpool_padded":  # PADV2 with -FLT_MAX before MAX_POOL_2D must not set the scale
            y = nn.functional.interpolate(nn.functional.max_pool2d(y, 3, 2, 1), scale_factor=2.0)
        elif k == "se":
            y = y * torch.sigmoid(self.pw(y.mean((2, 3), keepdim=True)))
        y = nn.functional.max_pool2d(y, 2)
        if k == "softmax":
            return torch.softmax(self.fc(y.flatten(1)), 1)
        if k == "two_outputs":
            return self.fc(y.flatten(1)), y
        return self.fc(y.flatten(1))


@pytest.mark.parametrize("kind", [pytest.param(k, marks=() if k in ("se", "concat", "two_outputs") else pytest.mark.heavy)
                                  for k in ("relu6_depthwise", "residual_add", "concat", "pools", "maxpool_padded",
                                            "sigmoid_hardswish", "se", "softmax", "two_outputs")])
def test_int8_op_matrix(kind, tmp_path):
    torch.manual_seed(0)
    model = _Block(kind).eval()
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((150, 3, 16, 16), dtype=np.float32))
    report = edgepack.export(model, output_dir=tmp_path / "out", input_shape="1x3x16x16", calib=calib, int8=True,
                             formats=("onnx", "tflite"))
    art = _art(report, "tflite", "int8")
    assert art["ok"], art["error"]
    n_io = len(art["inputs"]) + len(art["outputs"])
    # one QUANTIZE per input, one DEQUANTIZE per output, and at most a pair around each op kept float (no
    # int8 kernel, or one XNNPACK takes in float only: HARD_SWISH, SOFTMAX; at the IO it shares the IO's)
    borders = art["op_census"].get("QUANTIZE", 0) + art["op_census"].get("DEQUANTIZE", 0)
    assert n_io <= borders <= n_io + 2 * len(art["float_ops"]), (art["op_census"], art["float_ops"])
    assert art["op_census"].get("TRANSPOSE", 0) == 0
    assert art["fidelity"]["cosine"] >= 0.98, art["fidelity"]
    assert art["agreement_with_onnx_int8"]["cosine"] >= 0.98
    if kind == "softmax":  # TFLite's fixed output scale for SOFTMAX is recorded as a constraint when it differs
        assert all("why" in c for c in art["constrained_ranges"])


def _ops(path: Path) -> list[tuple[str, list[int], list[int]]]:
    """(op name, input tensor types, output tensor types) in graph order."""
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    g = model.subgraphs[0]
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    codes = [c.builtinCode for c in model.operatorCodes]
    return [(names[codes[op.opcodeIndex]], [g.tensors[i].type for i in op.inputs if i >= 0],
             [g.tensors[i].type for i in op.outputs]) for op in g.operators]


def test_float_node_in_the_middle_gets_dequantize_and_quantize_borders(tmp_path):
    """A node the accuracy guard keeps in float stays a float op (float weights) between one
    DEQUANTIZE and one QUANTIZE; everything else stays int8, and the result still matches fp32."""
    import onnx_ir as ir
    from ai_edge_litert import schema_py_generated as s

    from edgepack.converters.export_tflite import Int8Ranges, export_tflite
    from edgepack.artifacts.tflite import measure_ranges
    from edgepack.converters.quantize_int8 import load_ranges
    from edgepack.runtimes import get_runtime

    torch.manual_seed(0)
    model = _Block("residual_add").eval()
    calib = np.random.default_rng(0).standard_normal((100, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "calib.npy", calib)
    out = tmp_path / "out"
    edgepack.export(model, output_dir=out, input_shape="1x3x16x16", calib=tmp_path / "calib.npy", int8=True, formats=("onnx",))
    onnx_model = ir.load(next(out.glob("*.fp32.onnx")))
    convs = [n.name for n in onnx_model.graph if n.op_type == "Conv"]
    middle = convs[1]  # the 1x1 conv of the residual branch
    float_path = tmp_path / "float.tflite"
    fl = export_tflite(onnx_model, float_path, "fp32")
    feeds = [{"x": calib[i : i + 1]} for i in range(0, 100, 5)]
    measured = measure_ranges(float_path, feeds, {d["name"]: d["perm"] for d in fl.inputs})
    ranges = Int8Ranges(load_ranges(out / "calibration.json"), measured, float_nodes=(middle,))
    result = export_tflite(onnx_model, tmp_path / "mixed.tflite", "int8", int8=ranges)

    ops = _ops(tmp_path / "mixed.tflite")
    F, I8 = s.TensorType.FLOAT32, s.TensorType.INT8
    float_convs = [o for o in ops if o[0] == "CONV_2D" and o[1][0] == F]
    assert len(float_convs) == 1 and float_convs[0][1][1] == F  # float input, float weights
    assert sum(o[0] == "CONV_2D" and o[1][0] == I8 for o in ops) == 1  # the other conv stays int8
    # QUANTIZE: the graph input + the float conv's output; DEQUANTIZE: the float conv's input + the graph output
    assert result.op_census["QUANTIZE"] == 2 and result.op_census["DEQUANTIZE"] == 2
    i = ops.index(float_convs[0])
    assert ops[i - 1][0] == "DEQUANTIZE" and ops[i + 1][0] == "QUANTIZE"

    session = get_runtime("litert").load(tmp_path / "mixed.tflite")
    x = calib[:1].transpose(0, 2, 3, 1)
    got = session.run({"x": np.ascontiguousarray(x)})[session.output_names[0]].ravel()
    want = model(torch.from_numpy(calib[:1])).detach().numpy().ravel()
    cosine = float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine >= 0.98, cosine


def test_guard_keeps_tflite_ops_in_float_until_the_target_is_met(tmp_path):
    """--min-cosine above what full-integer reaches: the guard ranks nodes on the int8 ONNX of the
    same calibration and rebuilds the TFLite with those nodes in float until the target holds."""
    from ai_edge_litert import schema_py_generated as s

    report = edgepack.export(PT2, output_dir=tmp_path, calib=CALIB, int8=True, formats=("tflite",), min_cosine=0.99995)
    art = _art(report, "tflite", "int8")
    assert art["ok"], art["error"]
    assert art["float_nodes"] and art["fidelity"]["cosine"] >= 0.99995
    assert art["guard"][0]["cosine"] < 0.99995 <= art["guard"][-1]["cosine"]
    # QUANTIZE/DEQUANTIZE only at float IO and at the borders of the float ops
    for name, ins, outs in _ops(tmp_path / art["path"]):
        if name == "QUANTIZE":
            assert ins == [s.TensorType.FLOAT32] and outs == [s.TensorType.INT8]
        if name == "DEQUANTIZE":
            assert ins == [s.TensorType.INT8] and outs == [s.TensorType.FLOAT32]
    assert any(name == "CONV_2D" and ins[0] == s.TensorType.FLOAT32 for name, ins, _ in _ops(tmp_path / art["path"]))


def test_int8_weights_only_tflite_is_dynamic_range(tmp_path):
    """--int8-weights-only --format tflite: int8 per-channel weights on CONV_2D / FULLY_CONNECTED
    (hybrid kernels), float activations and IO, no QUANTIZE/DEQUANTIZE; digits accuracy within 1 point."""
    from ai_edge_litert import schema_py_generated as s

    report = edgepack.export(PT2, output_dir=tmp_path, int8_weights_only=True, formats=("tflite",), eval_data=TEST)
    art = _art(report, "tflite", "int8-weights")
    fp32 = _art(report, "tflite", "fp32")
    assert art["ok"], art["error"]
    assert art["path"].endswith(".int8-weights.tflite")
    assert "QUANTIZE" not in art["op_census"] and "DEQUANTIZE" not in art["op_census"]
    types = _tensor_types(tmp_path / art["path"])
    int8 = {n for n, (t, k) in types.items() if t == s.TensorType.INT8}
    # weight tensors of >= 1024 elements become int8 per channel (convs 2 and 3); conv 1 (144) and the
    # FC (640) keep float weights, as TensorFlow's converter does
    state = torch.export.load(PT2).state_dict
    big = [k for k, v in state.items() if k.endswith("weight") and v.dim() >= 2 and v.numel() >= 1024]
    assert len(big) == 2 and len(int8) == 2 and all(types[n][1] > 1 for n in int8)
    assert art["nodes"]["quantized"] == 2 and art["nodes"]["kept_float"][0]["ops"] == 2
    acts = [n for n, (t, _) in types.items() if n in ("x", "output", "relu", "relu_1", "relu_2")]
    assert all(types[n][0] == s.TensorType.FLOAT32 for n in acts)
    assert art["size_bytes"] < 0.4 * fp32["size_bytes"]
    assert report["evaluation"]["reference_top1"] - art["accuracy"]["top1"] <= 0.01
    assert art["fidelity"]["cosine"] >= 0.999


# ---------------------------------------------------------------- the [D1] op matrix in int8

# Single ops (after the matrix's 3x3 conv): |int8 - fp32| <= STEPS quantization steps of the output.
STEPS = 3.0
SINGLE_OPS = ["conv-valid", "conv-stride2-pad1-explicit-pad", "conv-dilation2", "conv-depthwise", "conv-depthwise-multiplier2",
              "conv-grouped2", "conv1d", "conv-transpose-s2-p1-op1", "linear-2d-input", "matmul-param",
              "matmul-two-activations-adj-y", "flatten-softmax", "flatten-linear-permuted-weights", "add-per-channel-const",
              "mul-nc11-tensor", "div-nc11-tensor", "add-two-branches", "relu6", "clip-minus0.5-0.7", "leaky-relu",
              "prelu-per-channel", "sigmoid", "tanh", "hardsigmoid", "hardswish", "gelu-erf", "gelu-tanh",
              "softmax-4d-channels", "log-softmax-channels", "maxpool-k3-s2-p1", "avgpool-k3-s1-p1-exclude-pad", "mean-hw",
              "amax-channels", "cat-channels", "split-channels", "slice-step2", "gather-row-3", "channel-shuffle",
              "squeeze-unsqueeze-se", "pad-constant-value", "pad-reflect", "interpolate-bilinear", "expand"]
# Written out as several int8 ops (normalisations, softmax over a stored axis, pooling corrections):
# each rounds again, so the bound is STEPS_PER_OP per int8 op in the graph, and cosine >= 0.98. The
# normalisations lose most (3.4-4.5 steps per op measured: RSQRT of a small variance in int8).
STEPS_PER_OP = 5.0
COMPOSITE_OPS = ["layernorm-tokens", "instance-norm", "l2-normalize-channels", "spatial-softmax-view",
                 "log-softmax-last-axis", "avgpool-k3-s2-p1-ceil-exclude-pad", "reciprocal"]


def _op_case(op_id: str):
    from test_tflite import OPS, prepare  # the [D1] op matrix (pytest puts tests/ on sys.path)

    _, factory, shape, _ = next(o for o in OPS if o[0] == op_id)
    torch.manual_seed(0)
    return prepare(factory()).eval(), [int(d) for d in shape.split("x")], shape


def _int8_steps(op_id: str, tmp_path: Path) -> tuple[float, float, dict]:
    """Export `op_id` int8 with int8 IO; run 8 inputs inside the calibrated range (0.5 x the N(0,1)
    calibration spread, so no tensor saturates) and return (max error in output steps, cosine, artifact)."""
    from edgepack.converters.export_tflite import to_onnx_layout, to_stored
    from edgepack.runtimes import get_runtime

    model, dims, shape = _op_case(op_id)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal([64, *dims[1:]]).astype(np.float32))
    report = edgepack.export(model, output_dir=tmp_path / "out", input_shape=shape, calib=tmp_path / "calib.npy", int8=True,
                             int8_io=True, formats=("tflite",))
    art = _art(report, "tflite", "int8")
    assert art["ok"], art["error"]
    session = get_runtime("litert").load(tmp_path / "out" / art["path"])
    x_io, y_io = art["inputs"][0], art["outputs"][0]
    steps, cosines = [], []
    for k in range(8):
        x = 0.5 * np.random.default_rng(100 + k).standard_normal(dims).astype(np.float32)
        q = np.clip(np.round(x / x_io["scale"]) + x_io["zero_point"], -128, 127).astype(np.int8)
        want = model(torch.from_numpy((q.astype(np.float32) - x_io["zero_point"]) * x_io["scale"]))
        want = (want[0] if isinstance(want, tuple) else want).detach().numpy()
        got = session.run({x_io["name"]: to_stored(q, x_io["perm"])})[y_io["name"]]
        got = to_onnx_layout((got.astype(np.float32) - y_io["zero_point"]) * y_io["scale"], y_io["perm"])
        steps.append(float(np.abs(got - want).max() / y_io["scale"]))
        cosines.append(float(got.ravel() @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want) + 1e-12)))
    return max(steps), min(cosines), art


# Default suite: one case per kernel family; the rest run with the heavy tests.
DEFAULT_INT8_OPS = {"conv-stride2-pad1-explicit-pad", "conv-depthwise", "matmul-two-activations-adj-y", "add-two-branches",
                    "hardswish", "gelu-tanh", "log-softmax-channels", "avgpool-k3-s1-p1-exclude-pad", "cat-channels",
                    "interpolate-bilinear", "layernorm-tokens"}


def _cases(ids):
    return [pytest.param(i, id=i, marks=() if i in DEFAULT_INT8_OPS else pytest.mark.heavy) for i in ids]


@pytest.mark.parametrize("op_id", _cases(SINGLE_OPS))
def test_int8_single_op_within_output_steps(op_id, tmp_path):
    steps, _, art = _int8_steps(op_id, tmp_path)
    census = art["op_census"]
    assert census.get("TRANSPOSE", 0) == 0
    # int8 IO: no QUANTIZE/DEQUANTIZE at all, except around an op LiteRT has no int8 kernel for
    borders = census.get("QUANTIZE", 0) + census.get("DEQUANTIZE", 0)
    assert borders == 2 * len(art["float_ops"]), (census, art["float_ops"])
    assert steps <= STEPS, f"{op_id}: {steps:.2f} output steps"


@pytest.mark.parametrize("op_id", _cases(COMPOSITE_OPS))
def test_int8_composite_op_within_steps_per_op(op_id, tmp_path):
    steps, cosine, art = _int8_steps(op_id, tmp_path)
    int8_ops = sum(n for op, n in art["op_census"].items() if op not in ("QUANTIZE", "DEQUANTIZE"))
    assert steps <= STEPS_PER_OP * int8_ops, f"{op_id}: {steps:.2f} output steps over {int8_ops} ops"
    assert cosine >= 0.98, f"{op_id}: cosine {cosine:.4f}"
