"""Pipeline behaviour end to end: tolerance failures, re-verification from verify.npz, timings."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import edgepack
from cli_run import cli_in_process


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


@pytest.fixture(scope="module")
def small_pt2(tmp_path_factory):
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():
        model.body[1].running_mean.uniform_(-0.5, 0.5)
        model.body[1].running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("m") / "small.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 16, 16),)), str(path))
    return path


def test_artifact_beyond_tolerance_is_kept_marked_failed_exit_3(small_pt2, tmp_path):
    out = tmp_path / "out"
    proc = cli_in_process("export", str(small_pt2), "-o", str(out), "--tolerance", "1e-12", out=out)
    report = json.loads((out / "report.json").read_text())
    art = report["artifacts"][0]
    assert proc.code == 3, proc.stderr
    assert (out / "small.fp32.onnx").exists()  # kept for inspection
    assert art["ok"] is False and report["ok"] is False and report["exit_code"] == 3
    assert art["fidelity"]["rel_error"] > 1e-12 and "exceeds" in art["error"]
    assert art["fidelity"]["tolerance"]["rel_error"] == 1e-12 and art["fidelity"]["tolerance"]["rel_error_enforced"]


def test_verify_npz_reverifies_without_torch(small_pt2, tmp_path):
    report = edgepack.export(small_pt2, output_dir=tmp_path)
    data = np.load(tmp_path / "verify.npz")
    assert data["input/x"].shape == (10, 1, 3, 16, 16)  # 8 seeded N(0,1) samples + zeros + 10x, batch 1 each
    sess = ort.InferenceSession(str(tmp_path / report["artifacts"][0]["path"]), providers=["CPUExecutionProvider"])
    outs = np.stack([sess.run(None, {"x": x})[0] for x in data["input/x"]])
    ref = data["reference/output"]
    assert ref.shape == (10, 1, 5)
    assert np.abs(outs - ref).max() / np.abs(ref).max() <= 1e-4
    assert report["verification"]["source"] == "random-normal" and report["verification"]["samples"] == 10


def test_report_timings_and_pass_results(small_pt2, tmp_path):
    report = edgepack.export(small_pt2, output_dir=tmp_path, target="rpi4")
    assert report["timings_s"]["total"] >= report["timings_s"]["to_onnx"] > 0
    assert [p["name"] for p in report["passes"]] == [
        "fold_shape_subgraphs", "cleanup_graph", "fold_batchnorm", "cleanup_graph", "remove_pruned_channels", "cleanup_graph"]
    assert report["target"]["name"] == "rpi4"
    assert report["model"]["exporter"] == "dynamo"
    # MACs: conv1 3*9*8*256 + conv2 8*9*8*64 + linear 8*5
    assert report["model"]["macs"] == 3 * 9 * 8 * 256 + 8 * 9 * 8 * 64 + 8 * 5


class PrunedBlock(nn.Module):
    """conv1 -> BN -> ReLU -> padded 3x3 conv2 -> ReLU -> GAP -> fc; conv1 filters pruned with hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(y.mean((2, 3)))


def _pruned_block(positive_shift: bool) -> nn.Module:
    torch.manual_seed(1)
    model = PrunedBlock().eval()
    from torch.nn.utils import prune

    prune.ln_structured(model.conv1, "weight", amount=5, n=1, dim=0)  # 5 of 16 filters, hooks kept
    dead = (model.conv1.weight.detach().abs().sum((1, 2, 3)) == 0).nonzero().flatten()
    with torch.no_grad():
        model.conv1.bias[dead] = 0
        model.bn1.running_mean.zero_()
        model.bn1.bias.fill_(0.3 if positive_shift else -1.0)  # after ReLU: constant 0.3, or exactly 0
    return model


def _export_cli(model: nn.Module, tmp_path, *flags: str) -> tuple[int, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "block.pt"
    torch.save(model, path)
    out = tmp_path / "out"
    run = cli_in_process("export", str(path), "--allow-pickle", "--input-shape", "1x3x16x16", "-o", str(out), *flags,
                         out=out)
    assert (out / "report.json").exists(), run.stderr
    report = json.loads((out / "report.json").read_text())
    return run.code, report


def _pass(report: dict) -> dict:
    return next(p for p in report["passes"] if p["name"] == "remove_pruned_channels")


def test_pruned_hooks_removed_exactly_through_the_cli(tmp_path):
    code, report = _export_cli(_pruned_block(positive_shift=False), tmp_path)
    assert code == 0
    assert report["model"]["pruning_made_permanent"] == ["conv1.weight"]
    p = _pass(report)
    assert p["counts"]["channels_removed"] == 5
    assert {d["layer"]: (d["channels_before"], d["channels_after"]) for d in p["details"]}.popitem()[1] == (16, 11)
    assert report["artifacts"][0]["fidelity"]["rel_error"] <= 1e-5


def test_no_prune_keeps_channels_and_says_so(tmp_path):
    code, report = _export_cli(_pruned_block(positive_shift=False), tmp_path, "--no-prune")
    assert code == 0
    p = _pass(report)
    assert p["modified"] is False and p["skipped"] == [{"node": "*", "why": "disabled by --no-prune"}]
    weights = onnx_conv_out_channels(tmp_path / "out" / report["artifacts"][0]["path"])
    assert weights[0] == 16


def test_nonzero_constant_into_padded_conv_kept_unless_prune_approx(tmp_path):
    code, report = _export_cli(_pruned_block(positive_shift=True), tmp_path / "exact")
    assert code == 0 and _pass(report)["counts"]["channels_removed"] == 0
    assert any("zero-padded" in s["why"] and len(s["channels"]) == 5 for s in _pass(report)["skipped"])

    code, report = _export_cli(_pruned_block(positive_shift=True), tmp_path / "approx", "--prune-approx")
    art = report["artifacts"][0]
    assert code == 0 and _pass(report)["counts"]["channels_removed"] == 5
    # the cost of the approximation is reported, not enforced (no --tolerance given)
    assert art["fidelity"]["tolerance"]["rel_error"] == 1e-2 and not art["fidelity"]["tolerance"]["rel_error_enforced"]
    assert "reported, not enforced" in art["warning"]
    assert art["fidelity"]["rel_error"] > 1e-5


def test_round_channels_keeps_width_multiple(tmp_path):
    code, report = _export_cli(_pruned_block(positive_shift=False), tmp_path, "--round-channels", "4")
    assert code == 0
    assert onnx_conv_out_channels(tmp_path / "out" / report["artifacts"][0]["path"])[0] == 12  # 11 -> 12
    assert any("--round-channels" in s["why"] for s in _pass(report)["skipped"])


def onnx_conv_out_channels(path) -> list[int]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits[n.input[1]].shape[0] for n in model.graph.node if n.op_type == "Conv"]
