"""Pipeline behaviour end to end: tolerance failures, re-verification from verify.npz, timings."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import edgepack


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
    proc = subprocess.run(
        [sys.executable, "-m", "edgepack", "export", str(small_pt2), "-o", str(out), "--tolerance", "1e-12"],
        capture_output=True, text=True,
    )
    report = json.loads((out / "report.json").read_text())
    art = report["artifacts"][0]
    assert proc.returncode == 3, proc.stderr
    assert (out / "small.fp32.onnx").exists()  # kept for inspection
    assert art["ok"] is False and report["ok"] is False and report["exit_code"] == 3
    assert art["fidelity"]["rel_error"] > 1e-12 and "exceeds" in art["error"]
    assert art["fidelity"]["tolerance"] == {"rel_error": 1e-12, "enforced": True}


def test_verify_npz_reverifies_without_torch(small_pt2, tmp_path):
    report = edgepack.export(small_pt2, output_dir=tmp_path)
    data = np.load(tmp_path / "verify.npz")
    assert data["input/x"].shape == (8, 1, 3, 16, 16)  # 8 seeded N(0,1) samples, batch 1 each
    sess = ort.InferenceSession(str(tmp_path / report["artifacts"][0]["path"]), providers=["CPUExecutionProvider"])
    outs = np.stack([sess.run(None, {"x": x})[0] for x in data["input/x"]])
    ref = data["reference/output"]
    assert ref.shape == (8, 1, 5)
    assert np.abs(outs - ref).max() / np.abs(ref).max() <= 1e-4
    assert report["verification"]["source"] == "random-normal" and report["verification"]["samples"] == 8


def test_report_timings_and_pass_results(small_pt2, tmp_path):
    report = edgepack.export(small_pt2, output_dir=tmp_path, target="rpi4")
    assert report["timings_s"]["total"] >= report["timings_s"]["to_onnx"] > 0
    assert [p["name"] for p in report["passes"]] == [
        "cleanup_graph", "fold_batchnorm", "cleanup_graph", "remove_pruned_channels", "cleanup_graph"]
    assert report["target"]["name"] == "rpi4"
    assert report["model"]["exporter"] == "dynamo"
    # MACs: conv1 3*9*8*256 + conv2 8*9*8*64 + linear 8*5
    assert report["model"]["macs"] == 3 * 9 * 8 * 256 + 8 * 9 * 8 * 64 + 8 * 5
