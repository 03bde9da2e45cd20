"""int8 / fp16 / int8-weights on real data (scikit-learn digits, the shipped example) and the
quantization edge cases: errors, calibration reuse, already-quantized models."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgepack
from cli_run import cli_in_process
from edgepack.converters.quantize_int8 import load_ranges

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PT2, CALIB, TEST = EXAMPLES / "digits_cnn.pt2", EXAMPLES / "digits_calib.npy", EXAMPLES / "digits_test.npz"


def _art(report: dict, precision: str) -> dict:
    return next(a for a in report["artifacts"] if a["precision"] == precision)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    report = edgepack.export(PT2, output_dir=out, calib=CALIB, int8=True, fp16=True, int8_weights_only=True, eval_data=TEST)
    return out, report


def test_digits_accuracy_int8_within_1_point_fp16_within_0_3(digits):
    out, report = digits
    ref = report["evaluation"]["reference_top1"]
    assert report["evaluation"]["samples"] == 360 and ref > 0.95
    fp32, fp16, int8 = _art(report, "fp32"), _art(report, "fp16"), _art(report, "int8")
    assert all(a["ok"] for a in report["artifacts"]), [a["error"] for a in report["artifacts"]]
    assert abs(fp32["accuracy"]["top1"] - ref) < 1e-9
    assert ref - int8["accuracy"]["top1"] <= 0.01
    assert ref - fp16["accuracy"]["top1"] <= 0.003
    assert ref - _art(report, "int8-weights")["accuracy"]["top1"] <= 0.01
    assert int8["fidelity"]["top1_agreement"] >= 0.97 and int8["fidelity"]["cosine"] >= 0.99


def test_int8_is_full_integer_qdq_with_per_channel_int8_weights(digits):
    out, report = digits
    art = _art(report, "int8")
    model = onnx.load(str(out / art["path"]))
    ops = Counter(n.op_type for n in model.graph.node)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    producers = {o: n for n in model.graph.node for o in n.output}
    for conv in convs:  # every weight comes from an int8 initializer through a per-channel DequantizeLinear
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],)
        zero_point = inits[dq.input[2]] if len(dq.input) > 2 else np.zeros(1, np.int8)
        assert not zero_point.any()  # symmetric
        assert producers[conv.input[0]].op_type == "DequantizeLinear"  # int8 activations in
    assert art["nodes"] == {"quantized": len(convs) + ops["Relu"] + ops["MaxPool"] + ops["ReduceMean"], "float": 0}
    assert art["float_nodes"] == [] and art["calibration"]["method"] == "minmax"
    assert art["dtypes"]["activations"] == "int8"
    assert art["size_bytes"] / _art(report, "fp32")["size_bytes"] < 0.6


def test_fp16_weights_and_fp32_io_by_default(digits):
    out, report = digits
    art = _art(report, "fp16")
    model = onnx.load(str(out / art["path"]))
    floats = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats and all(i.data_type == onnx.TensorProto.FLOAT16 for i in floats)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert art["inputs"][0]["dtype"] == "float32" and art["dtypes"]["io"] == "float32"
    assert art["fidelity"]["tolerance"]["rel_error"] == 0.05 and art["fidelity"]["tolerance"]["min_cosine"] == 0.999
    assert art["fidelity"]["rel_error"] <= 1e-2


def test_fp16_io(tmp_path):
    report = edgepack.export(PT2, output_dir=tmp_path, fp16=True, fp16_io=True)
    art = _art(report, "fp16")
    model = onnx.load(str(tmp_path / art["path"]))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert art["inputs"][0]["dtype"] == "float16" and art["ok"]


def test_calibration_file_is_the_single_source_of_ranges(digits, tmp_path):
    out, report = digits
    ranges = load_ranges(out / "calibration.json")
    assert report["calibration"]["samples"] == 160  # 200 minus the 20% verification hold-out
    fp32 = onnx.load(str(out / _art(report, "fp32")["path"]))
    activations = {o for n in fp32.graph.node for o in n.output} | {"x"}
    assert activations <= set(ranges)
    assert all(lo <= hi for lo, hi in ranges.values())
    # the int8 activation scales are derived from those ranges: x's QuantizeLinear scale = (max-min)/255
    int8 = onnx.load(str(out / _art(report, "int8")["path"]))
    inits = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    q = next(n for n in int8.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    lo, hi = ranges["x"]
    assert float(inits[q.input[1]]) == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=1e-5)


def test_histogram_methods_run_and_keep_accuracy(tmp_path):
    for method in ("percentile", "entropy"):
        report = edgepack.export(PT2, output_dir=tmp_path / method, calib=CALIB, int8=True, calib_method=method,
                                 eval_data=TEST)
        art = _art(report, "int8")
        assert art["ok"] and art["calibration"]["method"] == method
        assert report["evaluation"]["reference_top1"] - art["accuracy"]["top1"] <= 0.01


def test_calib_samples_limit_and_warning(tmp_path):
    report = edgepack.export(PT2, output_dir=tmp_path, calib=CALIB, int8=True, calib_samples=40)
    assert report["calibration"]["samples"] == 40
    assert any("only 40 calibration samples" in w for w in report["warnings"])


def test_already_quantized_onnx_is_not_quantized_again(digits, tmp_path):
    out, report = digits
    qdq = out / _art(report, "int8")["path"]
    again = edgepack.export(qdq, output_dir=tmp_path, calib=CALIB, int8=True, fp16=True, name="qdq")
    assert [a["precision"] for a in again["artifacts"]] == ["int8"]
    art = again["artifacts"][0]
    assert art["ok"] and "already quantized" in art["note"]
    assert any("already quantized" in w and "fp16" in w for w in again["warnings"])
    before = Counter(n.op_type for n in onnx.load(str(qdq)).graph.node)
    after = Counter(n.op_type for n in onnx.load(str(tmp_path / art["path"])).graph.node)
    assert after["DequantizeLinear"] == before["DequantizeLinear"] and after["QuantizeLinear"] == before["QuantizeLinear"]
    assert art["fidelity"]["rel_error"] <= 1e-4  # against that same QDQ model in ONNX Runtime


@pytest.mark.parametrize(
    "args, code, phrase",
    [
        (["--int8"], 2, "--int8-weights-only"),
        (["--int8", "--calib", "{bad_shape}"], 2, "expected (N, 1, 8, 8)"),
        (["--int8", "--calib", "{strings}"], 2, "dtype"),
        (["--int8", "--calib", str(CALIB), "--calib-samples", "0"], 2, "--calib-samples"),
        (["--int8", "--calib", str(CALIB), "--min-cosine", "1.5"], 2, "--min-cosine"),
        (["--fp16-io"], 2, "--fp16"),
        (["--eval", "{bad_eval}"], 2, "--eval"),
    ],
)
def test_quantization_input_errors(tmp_path, args, code, phrase):
    np.save(tmp_path / "bad_shape.npy", np.zeros((20, 3, 8, 8), np.float32))
    np.save(tmp_path / "strings.npy", np.array([["a"] * 64] * 20).reshape(20, 1, 8, 8))
    np.savez(tmp_path / "bad_eval.npz", x=np.zeros((5, 1, 8, 8), np.float32))
    files = {"bad_shape": tmp_path / "bad_shape.npy", "strings": tmp_path / "strings.npy", "bad_eval": tmp_path / "bad_eval.npz"}
    args = [a.format(**files) for a in args]
    out = tmp_path / "out"
    proc = cli_in_process("export", str(PT2), "-o", str(out), *args, out=out)
    assert proc.code == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgepack: error:") and phrase in lines[0], proc.stderr
    assert not list(out.glob("*.onnx")) if out.exists() else True


def test_json_report_carries_quantization_fields(tmp_path):
    proc = cli_in_process("export", str(PT2), "-o", str(tmp_path / "out"), "--calib", str(CALIB), "--int8", "--json",
                          out=tmp_path / "out")
    assert proc.code == 0, proc.stderr
    report = json.loads(proc.stdout)
    art = _art(report, "int8")
    for key in ("dtypes", "nodes", "float_nodes", "calibration", "fidelity", "size_bytes"):
        assert key in art
    assert (tmp_path / "out" / "calibration.json").is_file()


class _Fragile(__import__("torch").nn.Module):
    """Channel 0 of conv1 sits near 1e5 and conv2 scales it back down by 1e5: exact in float, but
    the per-tensor int8 range of conv1's output is then set by that channel, so every other channel
    rounds to 0 on its way into conv2."""

    def __init__(self) -> None:
        import torch
        from torch import nn

        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)
        with torch.no_grad():
            self.conv1.bias[0] = 1e5
            self.conv2.weight[:, 0] *= 1e-5
            self.fc.weight *= 10

    def forward(self, x):
        import torch

        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(y.mean((2, 3)))


def test_accuracy_guard_keeps_the_breaking_layer_in_float(tmp_path):
    """The guard runs by default (int8 floor: cosine 0.99): it keeps the layer we broke in float first,
    then the outlier's whole path. Here that path is most of this tiny model's MACs, so the artifact
    fails rather than becoming a float model called int8 (at most 10% of MACs may stay float)."""
    model = _Fragile().eval()
    report = edgepack.export(model, output_dir=tmp_path / "plain", input_shape="1x1x8x8", calib=CALIB, int8=True)
    art = _art(report, "int8")
    fp32 = onnx.load(str(tmp_path / "plain" / _art(report, "fp32")["path"]))
    conv2 = [n for n in fp32.graph.node if n.op_type == "Conv"][1]
    relu2 = next(n for n in fp32.graph.node if n.input and n.input[0] == conv2.output[0])
    assert art["guard"][0]["cosine"] < 0.99 and len(art["guard"]) >= 2  # int8 was broken; the guard ran
    # the first node kept in float is the layer we broke (ONNX Runtime fuses its ReLU into it)
    assert art["guard"][1]["kept_in_float"]["node"] in (conv2.name, relu2.name)
    assert art["guard"][-1]["cosine"] > art["guard"][0]["cosine"]
    assert art["int8_mac_share"] < 0.9
    assert not art["ok"] and art["exit_code"] == 3 and "of the MACs run in int8" in art["error"]


def test_accuracy_guard_reports_failure_when_target_unreachable(tmp_path):
    report = edgepack.export(PT2, output_dir=tmp_path, calib=CALIB, int8=True, min_cosine=1.0)
    art = _art(report, "int8")
    assert not art["ok"] and art["exit_code"] == 3 and "misses its floor" in art["error"]
    assert (tmp_path / art["path"]).exists() and report["exit_code"] == 3
