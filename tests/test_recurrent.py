"""Recurrent layers (ONNX LSTM, GRU, RNN) to TFLite, unrolled (ops_recurrent.py): each ONNX case
against ONNX Runtime (fp32, rtol 1e-5), torch nn.LSTM / nn.GRU through the whole export, and a
small keyword spotter (conv front end + GRU + linear) exported to ONNX, TFLite and ncnn in fp32
and int8, each against PyTorch."""
from __future__ import annotations


import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from edgepack.converters.export_tflite import export_tflite, to_onnx_layout, to_stored

SEQ, BATCH, IN, HID = 5, 1, 3, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(op: str, *, direction: str = "forward", states: str = "none", layout: int = 0, peepholes: bool = False,
                    seed: int = 0, **attrs) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One `op` node with random weights. states: none | inputs (initial states are graph inputs) |
    constants. Every output (Y, Y_h and, for LSTM, Y_c) is a graph output."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in (
        ("W", rng.uniform(-0.8, 0.8, (dirs, g * HID, IN)).astype(np.float32)),
        ("R", rng.uniform(-0.8, 0.8, (dirs, g * HID, HID)).astype(np.float32)),
        ("B", rng.uniform(-0.5, 0.5, (dirs, 2 * g * HID)).astype(np.float32)))]
    x_shape = [BATCH, SEQ, IN] if layout else [SEQ, BATCH, IN]
    s_shape = [BATCH, dirs, HID] if layout else [dirs, BATCH, HID]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    names = ["x", "W", "R", "B", ""]
    state_names = ["h0", "c0"] if op == "LSTM" else ["h0"]
    for name in state_names:
        if states == "inputs":
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, s_shape))
            feeds[name] = rng.standard_normal(s_shape).astype(np.float32)
        elif states == "constants":
            inits.append(helper.make_tensor(name, TensorProto.FLOAT, s_shape, rng.standard_normal(s_shape).astype(np.float32).ravel()))
    names += state_names if states != "none" else []
    if peepholes:
        names += [""] * (7 - len(names)) + ["P"]
        inits.append(helper.make_tensor("P", TensorProto.FLOAT, [dirs, 3 * HID], rng.uniform(-0.5, 0.5, dirs * 3 * HID)))
    outs = ["y", "y_h", "y_c"] if op == "LSTM" else ["y", "y_h"]
    node = helper.make_node(op, names, outs, hidden_size=HID, direction=direction, layout=layout, **attrs)
    y_shape = [BATCH, SEQ, dirs, HID] if layout else [SEQ, dirs, BATCH, HID]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, y_shape if o == "y" else s_shape) for o in outs]
    model = helper.make_model(helper.make_graph([node], op.lower(), inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model, feeds


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _litert(model: onnx.ModelProto, feeds: dict[str, np.ndarray], path, precision: str = "fp32"):
    from ai_edge_litert.interpreter import Interpreter

    result = export_tflite(ir.from_proto(model), path, precision)
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    by_name = {d["name"]: d for d in it.get_input_details()}
    for row in result.inputs:
        it.set_tensor(by_name[row["name"]]["index"], to_stored(feeds[row["name"]], row["perm"]))
    it.invoke()
    outs = {d["name"]: d for d in it.get_output_details()}
    return [to_onnx_layout(it.get_tensor(outs[row["name"]]["index"]), row["perm"]) for row in result.outputs], result


CASES = {
    "lstm": dict(op="LSTM"),
    "lstm_reverse_states_in": dict(op="LSTM", direction="reverse", states="inputs"),
    "lstm_bidirectional": dict(op="LSTM", direction="bidirectional"),
    "lstm_bidirectional_states_in": dict(op="LSTM", direction="bidirectional", states="inputs"),
    "lstm_bidirectional_const_states_layout1": dict(op="LSTM", direction="bidirectional", states="constants", layout=1),
    "lstm_peepholes": dict(op="LSTM", peepholes=True, states="inputs"),
    "gru_lbr0": dict(op="GRU", linear_before_reset=0, states="inputs"),
    "gru_lbr1_bidirectional": dict(op="GRU", linear_before_reset=1, direction="bidirectional"),
    "rnn_bidirectional": dict(op="RNN", direction="bidirectional", states="inputs"),
    "rnn_relu": dict(op="RNN", activations=["Relu"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_recurrent_fp32_matches_onnxruntime(case, tmp_path):
    """(ONNX Runtime refuses layout=1; that case is checked against the ONNX reference evaluator.)"""
    model, feeds = recurrent_model(**CASES[case])
    if CASES[case].get("layout"):
        from onnx.reference import ReferenceEvaluator

        expected = ReferenceEvaluator(model).run(None, feeds)
    else:
        expected = _ort(model, feeds)
    got, result = _litert(model, feeds, tmp_path / "m.tflite")
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    ops = result.op_census
    assert set(ops) <= {"FULLY_CONNECTED", "ADD", "SUB", "MUL", "LOGISTIC", "TANH", "RELU", "SPLIT", "RESHAPE",
                        "CONCATENATION", "TRANSPOSE"}, ops
    dirs = 2 if CASES[case].get("direction") == "bidirectional" else 1
    op = CASES[case]["op"]
    # one input projection per direction, then one recurrent FULLY_CONNECTED per step (GRU lbr=0: two)
    per_step = 2 if op == "GRU" and not CASES[case].get("linear_before_reset") else 1
    assert ops["FULLY_CONNECTED"] == dirs * (1 + per_step * SEQ)
    assert ops.get("LOGISTIC", 0) == dirs * SEQ * {"LSTM": 3, "GRU": 2, "RNN": 0}[op]


def test_refusals_say_why(tmp_path):
    from edgepack.errors import UnsupportedError

    model, _ = recurrent_model("LSTM", clip=1.0)
    with pytest.raises(UnsupportedError, match="clip"):
        export_tflite(ir.from_proto(model), tmp_path / "m.tflite", "fp32")
    model, _ = recurrent_model("GRU", activations=["HardSigmoid", "Tanh"])
    with pytest.raises(UnsupportedError, match="activations"):
        export_tflite(ir.from_proto(model), tmp_path / "m.tflite", "fp32")


def test_fp16_weights_stay_within_fp16_tolerance(tmp_path):
    model, feeds = recurrent_model("LSTM", direction="bidirectional", states="inputs")
    expected = _ort(model, feeds)
    got, result = _litert(model, feeds, tmp_path / "m.tflite", "fp16")
    assert result.op_census["DEQUANTIZE"] == 4  # W and R of each direction
    for g, e in zip(got, expected):
        assert np.abs(g - e).max() <= 1e-2 * np.abs(e).max()


# ---------------------------------------------------------------- PyTorch models, whole export


def _art(report: dict, fmt: str, precision: str) -> dict:
    return next(a for a in report["artifacts"] if a["format"] == fmt and a["precision"] == precision)


class Stacked:
    """nn.LSTM (1 layer), nn.LSTM (2 layers, bidirectional) and nn.GRU in a row, batch first;
    outputs the GRU's sequence and the 2-layer LSTM's final states (h_n, c_n)."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm1 = nn.LSTM(6, 8, batch_first=True)
                self.lstm2 = nn.LSTM(8, 8, num_layers=2, bidirectional=True, batch_first=True)
                self.gru = nn.GRU(16, 5, batch_first=True)

            def forward(self, x: torch.Tensor):
                y, _ = self.lstm1(x)
                y, (h, c) = self.lstm2(y)
                y, _ = self.gru(y)
                return y, h, c

        torch.manual_seed(0)
        return Net().eval()


@pytest.mark.heavy
def test_torch_lstm_gru_fp32_and_fp16(tmp_path):
    """Heavy: unrolling 6 directions x 7 steps and two dynamo exports take ~20 s on a shared 2-core box."""
    import edgepack

    report = edgepack.export(Stacked.build(), output_dir=tmp_path, input_shape="1x7x6", formats=("tflite",), fp16=True)
    fp32, fp16 = _art(report, "tflite", "fp32"), _art(report, "tflite", "fp16")
    assert fp32["ok"] and fp16["ok"], (fp32.get("error"), fp16.get("error"))
    assert fp32["fidelity"]["rel_error"] <= 1e-5, fp32["fidelity"]
    assert fp16["fidelity"]["rel_error"] <= 1e-2, fp16["fidelity"]
    # 1 + 2 x 2 LSTM directions and 1 GRU direction (PyTorch's GRU is linear_before_reset=1), 7 steps
    # each: one input projection + one recurrent FULLY_CONNECTED per step
    assert fp32["op_census"]["FULLY_CONNECTED"] == (1 + 4 + 1) * (1 + 7)
    assert fp32["op_census"].get("TRANSPOSE", 0) == 0


class Spotter:
    """A keyword spotter: 40 mel bands x 16 frames -> Conv1d + BatchNorm + ReLU -> GRU -> Linear (12 words)."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = nn.Conv1d(40, 24, 3, padding=1)
                self.bn = nn.BatchNorm1d(24)
                self.gru = nn.GRU(24, 32, batch_first=True)
                self.fc = nn.Linear(32, 12)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = torch.relu(self.bn(self.conv(x))).transpose(1, 2)
                y, _ = self.gru(y)
                return self.fc(y[:, -1])

        torch.manual_seed(0)
        net = Net()
        with torch.no_grad():
            net.bn.running_mean.uniform_(-0.2, 0.2)
            net.bn.running_var.uniform_(0.5, 1.5)
        return net.eval()


@pytest.mark.heavy  # 10 s: every format and precision of a whole LSTM model; the fast cases cover each lowering
def test_keyword_spotter_onnx_tflite_ncnn_fp32_and_int8(tmp_path):
    import torch

    import edgepack

    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(1).standard_normal((48, 40, 16)).astype(np.float32))
    model = Spotter.build()
    report = edgepack.export(model, output_dir=tmp_path / "out", input_shape="1x40x16", formats=("onnx", "tflite", "ncnn"),
                             int8=True, calib=calib)
    for art in report["artifacts"]:
        assert art["ok"], (art["format"], art["precision"], art.get("error"))
    assert _art(report, "tflite", "fp32")["fidelity"]["rel_error"] <= 1e-5
    assert _art(report, "onnx", "fp32")["fidelity"]["rel_error"] <= 1e-5
    assert _art(report, "ncnn", "fp32" if any(a["format"] == "ncnn" and a["precision"] == "fp32" for a in report["artifacts"])
                else "fp16")["fidelity"]["cosine"] >= 0.999
    tfl8 = _art(report, "tflite", "int8")
    assert tfl8["fidelity"]["cosine"] >= 0.99, tfl8["fidelity"]
    gru_rows = [r for r in tfl8["float_ops"] if "recurrent" in r["why"]]
    assert len(gru_rows) == 1 and gru_rows[0]["operators"]["FULLY_CONNECTED"] == 1 + 16
    census = tfl8["op_census"]
    # the GRU reads one int8 tensor (DEQUANTIZE) and hands one float tensor to int8 (QUANTIZE), plus model IO
    assert census["DEQUANTIZE"] == 2 and census["QUANTIZE"] == 2, census
    ncnn8 = _art(report, "ncnn", "int8")
    assert ncnn8["fidelity"]["cosine"] >= 0.99, ncnn8["fidelity"]
    assert [r["why"].split(":")[0] for r in ncnn8["float_layers"]] == ["recurrent layer (GRU)"], ncnn8["float_layers"]
    assert ncnn8["nodes"]["quantized"] == 1  # the Linear (ncnn has no int8 Convolution1D)
    # the numbers themselves, against PyTorch on the verification inputs
    data = np.load(tmp_path / "out" / "verify.npz")
    with torch.no_grad():
        want = model(torch.from_numpy(data["input/x"][0])).numpy()
    np.testing.assert_allclose(data["reference/output"][0], want, rtol=1e-6, atol=1e-6)
