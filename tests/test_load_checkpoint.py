"""Ultralytics-style training checkpoints: a dict whose `ema` or `model` is a float16 nn.Module,
loaded with --allow-pickle, cast to float32 and exported with its tuple/list/dict outputs to
ONNX, TFLite and ncnn, each checked against the float32 PyTorch module."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from checkpoint_models import DictOut, TinyDetect

import edgepack
from edgepack.errors import PickleNotAllowed
from edgepack.load import load_source

SHAPE = "1x3x32x32"


def _seeded(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _checkpoint(path, **entries) -> None:
    """Saved the way ultralytics saves: half-precision module copies plus training metadata."""
    ckpt = {"epoch": 3, "best_fitness": 0.5, "optimizer": None, "train_args": {"imgsz": 32}, "date": "2026-01-01"}
    for key, module in entries.items():
        ckpt[key] = None if module is None else copy.deepcopy(module).half()
    torch.save(ckpt, path)


def _half_rounded(model: torch.nn.Module) -> torch.nn.Module:
    """The float32 module the loader should produce: the weights after a float16 round trip."""
    return copy.deepcopy(model).half().float().eval()


def test_ema_is_preferred_cast_to_float32_and_eval(tmp_path):
    model, ema = _seeded(TinyDetect(), 0), _seeded(TinyDetect(), 1)
    _checkpoint(tmp_path / "last.pt", model=model, ema=ema)
    with pytest.raises(PickleNotAllowed, match="allow-pickle"):
        load_source(tmp_path / "last.pt")
    src = load_source(tmp_path / "last.pt", allow_pickle=True)
    assert src.kind == "pickled-module"
    assert all(p.dtype == torch.float32 for p in [*src.model.parameters(), *src.model.buffers()] if p.is_floating_point())
    assert not any(m.training for m in src.model.modules())
    assert any("float16" in w for w in src.warnings)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in src.model.modules()) == 2  # nothing fused
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got, want, other = src.model(x)[0].numpy(), _half_rounded(ema)(x)[0].numpy(), _half_rounded(model)(x)[0].numpy()
    np.testing.assert_array_equal(got, want)  # the EMA weights, not `model`'s
    assert np.abs(got - other).max() > 1e-2


@pytest.mark.parametrize("formats", [("onnx", "tflite"), pytest.param(("ncnn",), marks=pytest.mark.heavy)])
def test_tuple_list_outputs_export_everywhere(tmp_path, formats):
    """`ema` None (ultralytics' final checkpoints): `model` is used. Outputs (y, [p3, p4]) become
    three outputs in every format, each matching PyTorch. (ncnn is heavy: pnnx takes ~15 s.)"""
    model = _seeded(TinyDetect(), 2)
    _checkpoint(tmp_path / "best.pt", model=model, ema=None)
    report = edgepack.export(tmp_path / "best.pt", output_dir=tmp_path / "out", allow_pickle=True, input_shape=SHAPE,
                             formats=formats)
    assert report["model"]["source_format"] == "pickled-module"
    assert {a["format"] for a in report["artifacts"]} == set(formats)
    for art in report["artifacts"]:
        assert art["ok"], (art["format"], art["precision"], art.get("error"))
        tol = 1e-4 if art["precision"] == "fp32" else 2e-2
        assert art["fidelity"]["rel_error"] <= tol, (art["format"], art["fidelity"])
    data = np.load(tmp_path / "out" / "verify.npz")
    x = torch.from_numpy(data["input/x"][0])
    with torch.no_grad():
        y, (p3, p4) = _half_rounded(model)(x)
    for key, want in zip(("reference/output_0", "reference/output_1", "reference/output_2"), (y, p3, p4)):
        np.testing.assert_allclose(data[key][0], want.numpy(), rtol=1e-5, atol=1e-6)


def test_dict_outputs_export_to_onnx_and_tflite(tmp_path):
    model = _seeded(DictOut(), 3)
    _checkpoint(tmp_path / "dict.pt", model=model)
    report = edgepack.export(tmp_path / "dict.pt", output_dir=tmp_path / "out", allow_pickle=True, input_shape=SHAPE,
                             formats=("onnx", "tflite"))
    assert len(report["artifacts"]) == 2
    for art in report["artifacts"]:
        assert art["ok"], art.get("error")
        assert art["fidelity"]["rel_error"] <= 1e-4
    data = np.load(tmp_path / "out" / "verify.npz")
    with torch.no_grad():
        out = _half_rounded(model)(torch.from_numpy(data["input/x"][0]))
    np.testing.assert_allclose(data["reference/output_0"][0], out["boxes"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data["reference/output_1"][0], out["scores"].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.heavy
def test_ultralytics_yolov8n_checkpoint(tmp_path, monkeypatch):
    """A real ultralytics checkpoint (YOLOv8n built from its yaml, no download), saved the way
    ultralytics saves: {"model": model.half(), "ema": None, ...}. Its eval output, (y, {boxes,
    scores, feats: [3 maps]}), becomes six outputs, each matching PyTorch in ONNX and TFLite."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_AUTOINSTALL", "0")
    monkeypatch.chdir(tmp_path)
    try:
        from ultralytics import YOLO
    except Exception as exc:  # not installed, or torchvision without the CPU shim on PYTHONPATH
        pytest.skip(f"ultralytics not importable ({type(exc).__name__}); pip install ultralytics with the pinned CPU torch "
                    "and run with PYTHONPATH=<torchvision-cpu-shim>")
    model = YOLO("yolov8n.yaml").model.eval()
    _checkpoint(tmp_path / "yolov8n.pt", model=model, ema=None)
    report = edgepack.export(tmp_path / "yolov8n.pt", output_dir=tmp_path / "out", allow_pickle=True,
                             input_shape="1x3x320x320", formats=("onnx", "tflite"), prune=False)
    for art in report["artifacts"]:
        assert art["ok"], art.get("error")
        assert art["fidelity"]["rel_error"] <= 1e-4, art["fidelity"]
    data = np.load(tmp_path / "out" / "verify.npz")
    with torch.no_grad():
        y = _half_rounded(model)(torch.from_numpy(data["input/x"][0]))[0]
    assert sum(k.startswith("reference/") for k in data.files) == 6
    np.testing.assert_allclose(data["reference/output_0"][0], y.numpy(), rtol=1e-5, atol=1e-3)
    assert tuple(y.shape) == (1, 84, 2100)
