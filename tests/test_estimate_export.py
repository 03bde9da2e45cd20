"""`export --target` uses the device profile (round_channels, fp16 warning, estimate in the report)
and `edgepack estimate` reads the artifacts it wrote."""
from __future__ import annotations

import json

import onnx
import pytest
import torch
from edgepack.devices.layers import read_layers
from onnx import numpy_helper
from torch import nn

import edgepack
from edgepack.cli import main


class PrunedNet(nn.Module):
    """conv(16) with 5 filters pruned to exact zeros -> relu -> conv -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.conv1.weight[:5] = 0
            self.conv1.bias[:5] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(y), 1), 1))


def _conv_widths(path) -> list[int]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits[n.input[1]].shape[0] for n in model.graph.node if n.op_type == "Conv"]


@pytest.fixture(scope="module")
def rpi4_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("rpi4")
    report = edgepack.export(PrunedNet().eval(), output_dir=out, input_shape="1x3x32x32", target="rpi4",
                             formats="onnx,tflite", fp16=True, name="net")
    return out, report


def test_export_for_rpi4_rounds_channels_from_the_profile(rpi4_export, tmp_path):
    out, report = rpi4_export
    assert report["target"]["round_channels"] == 4 and report["target"]["round_channels_source"] == "profile:rpi4"
    assert _conv_widths(out / "net.fp32.onnx")[0] == 12  # 16 - 5 dead = 11, kept a multiple of 4
    flag = edgepack.export(PrunedNet().eval(), output_dir=tmp_path, input_shape="1x3x32x32", target="rpi4",
                           round_channels=1, name="net")
    assert flag["target"]["round_channels_source"] == "flag" and _conv_widths(tmp_path / "net.fp32.onnx")[0] == 11


def test_export_warns_that_fp16_buys_nothing_on_an_a72(rpi4_export):
    _, report = rpi4_export
    assert any("fp16 buys no speed on rpi4" in w for w in report["warnings"])


def test_every_artifact_carries_its_estimate(rpi4_export):
    out, report = rpi4_export
    arts = {a["path"]: a for a in report["artifacts"]}
    assert set(arts) == {"net.fp32.onnx", "net.fp16.onnx", "net.fp32.tflite", "net.fp16.tflite"}
    for name, art in arts.items():
        est = art["estimate"]
        assert isinstance(est["latency_ms"], float) and est["latency_ms"] > 0, name
        assert est["peak_memory_mb"] == pytest.approx(est["weights_mb"] + est["arena_mb"], abs=2e-3)
        assert est["runtime"] == ("litert" if name.endswith(".tflite") else "onnxruntime")
        assert est["threads"] == 4 and est["target"] == "rpi4" and est["fits_memory"] is True
        assert sum(layer["ms"] for layer in est["layers"]) == pytest.approx(est["latency_ms"], rel=1e-3)
    # ONNX and TFLite describe the same network: the same MACs
    onnx_table, tflite_table = read_layers(out / "net.fp32.onnx"), read_layers(out / "net.fp32.tflite")
    assert onnx_table.macs == tflite_table.macs == arts["net.fp32.onnx"]["estimate"]["macs"]
    assert onnx_table.macs == 32 * 32 * 12 * 27 + 32 * 32 * 8 * 12 * 9 + 8 * 4
    assert onnx_table.weight_elems == tflite_table.weight_elems
    fp16 = read_layers(out / "net.fp16.tflite")  # fp16 weights DEQUANTIZEd at load: not layers
    assert (fp16.macs, fp16.weight_elems, len(fp16.layers)) == (tflite_table.macs, tflite_table.weight_elems,
                                                                len(tflite_table.layers))
    assert arts["net.fp16.tflite"]["estimate"]["latency_ms"] == arts["net.fp32.tflite"]["estimate"]["latency_ms"]


def test_estimate_command_matches_the_report(rpi4_export, capsys):
    out, report = rpi4_export
    art = next(a for a in report["artifacts"] if a["path"] == "net.fp32.tflite")
    assert main(["estimate", str(out / "net.fp32.tflite"), "--json"]) == 0  # target from report.json: rpi4
    got = json.loads(capsys.readouterr().out)
    assert got["latency_ms"] == art["estimate"]["latency_ms"] and got["peak_memory_mb"] == art["estimate"]["peak_memory_mb"]
    assert {"latency_ms", "peak_memory_mb", "layers", "target", "runtime", "threads", "precision"} <= set(got)
    assert main(["estimate", str(out / "net.fp32.onnx"), "--target", "rpi5", "--runtime", "ncnn", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "rpi5 ncnn, 1 thread(s), fp32" in text and "peak memory" in text


def test_estimate_errors_are_one_line(rpi4_export, tmp_path, capsys):
    out, _ = rpi4_export
    assert main(["estimate", str(out / "net.fp32.onnx"), "--target", "rpi9"]) == 2
    assert "unknown target 'rpi9'" in capsys.readouterr().err
    assert main(["estimate", str(out / "net.fp32.onnx"), "--target", "android-mid", "--threads", "4"]) == 2
    assert "use at most 2" in capsys.readouterr().err
    (tmp_path / "model.bin").write_bytes(b"x")
    assert main(["estimate", str(tmp_path / "model.bin")]) == 2
    assert "cannot estimate model.bin: edgepack estimate reads .onnx, .tflite and ncnn .param" in capsys.readouterr().err
    lone = tmp_path / "lone.onnx"
    lone.write_bytes((out / "net.fp32.onnx").read_bytes())
    assert main(["estimate", str(lone)]) == 2
    assert "no --target given and no report.json" in capsys.readouterr().err
    assert main(["estimate", str(tmp_path / "model.bin"), "--target", "rpi4"]) == 2
    assert "reads .onnx, .tflite and ncnn .param" in capsys.readouterr().err


def test_ncnn_param_reads_as_the_same_network_as_onnx(tmp_path, capsys):
    """An ncnn .param (written here by pnnx, the converter ncnn ships) has the same MACs and weights
    as the ONNX artifact of the same network; its estimate is close to the ONNX graph's as ncnn."""
    pnnx = pytest.importorskip("pnnx", reason="pnnx comes with the ncnn extra (pip install 'edgepack[ncnn-export]')")
    pytest.importorskip("ncnn", reason="reading a .param runs ncnn once for the blob shapes")
    model = PrunedNet().eval()
    pnnx.export(model, str(tmp_path / "net.pt"), (torch.rand(1, 3, 32, 32),))
    param = tmp_path / "net.ncnn.param"
    ncnn_table = read_layers(param, {"in0": (1, 3, 32, 32)})
    dense = edgepack.export(PrunedNet().eval(), output_dir=tmp_path / "onnx", input_shape="1x3x32x32", target="rpi4",
                            round_channels=1, prune=False, name="net")
    onnx_table = read_layers(tmp_path / "onnx" / dense["artifacts"][0]["path"])
    assert ncnn_table.macs == onnx_table.macs == 32 * 32 * 16 * 27 + 32 * 32 * 8 * 16 * 9 + 8 * 4
    assert ncnn_table.weight_elems == onnx_table.weight_elems
    assert {layer.kind for layer in ncnn_table.layers} >= {"conv", "fc"}
    assert main(["estimate", str(param), "--target", "rpi4", "--input-shape", "1x3x32x32", "--json"]) == 0
    from_param = json.loads(capsys.readouterr().out)
    assert main(["estimate", str(tmp_path / "onnx" / "net.fp32.onnx"), "--target", "rpi4", "--runtime", "ncnn", "--json"]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert from_param["runtime"] == "ncnn" and from_param["macs"] == from_onnx["macs"]
    assert from_param["latency_ms"] == pytest.approx(from_onnx["latency_ms"], rel=0.25)
