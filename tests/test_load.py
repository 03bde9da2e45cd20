"""Model loading through the Python API: every input format detected from the file's content (the
extensions here are deliberately misleading), pruning made permanent, input shapes, and the loader
errors that carry an exit code. Each export checks numbers: the written fp32 ONNX, run in ONNX
Runtime on a fresh input, against the PyTorch model."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.nn.utils import prune

import edgepack
from edgepack.errors import InputShapeError, LoadError, PickleNotAllowed, UnsupportedError, UsageError
from models_for_tests import Net, TwoInputNet, seeded

SHAPE = (1, 3, 16, 16)
RTOL, ATOL = 1e-4, 1e-5


def fresh(shape=SHAPE, seed=1234) -> np.ndarray:
    """An input the verification set never saw (it uses seed 0)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_outputs(model, *arrays: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*[torch.from_numpy(a) for a in arrays])
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]


def onnx_outputs(path: Path, feeds: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def artifact_path(report: dict, out: Path) -> Path:
    art = report["artifacts"][0]
    assert art["format"] == "onnx" and art["precision"] == "fp32"
    assert art["path"].endswith(".fp32.onnx")
    return out / art["path"]


def assert_verified(report: dict) -> None:
    art = report["artifacts"][0]
    assert art["ok"] is True, art["error"]
    assert art["fidelity"]["rel_error"] <= 1e-4
    assert report["exit_code"] == 0


def assert_matches_torch(report: dict, out: Path, model, inputs: dict[str, np.ndarray]) -> None:
    """The written ONNX, in ONNX Runtime, equals the PyTorch model on `inputs` (not the verification set)."""
    got = onnx_outputs(artifact_path(report, out), inputs)
    want = torch_outputs(model, *inputs.values())
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
        assert np.abs(w).max() > 1e-3  # a real signal, not all zeros


@pytest.fixture(scope="module")
def net():
    return seeded(Net(), seed=0)


# ------------------------------------------------------------------ A: formats from content


def _save(kind: str, model, folder: Path) -> tuple[Path, dict]:
    """Save `model` as `kind` under a misleading name; return the path and the export() kwargs."""
    x = torch.from_numpy(fresh(seed=7))
    if kind == "pickled-module":
        path = folder / "model.bin"  # not .pt
        torch.save(model, path)
        return path, {"allow_pickle": True, "input_shape": "1x3x16x16"}
    if kind == "torchscript-scripted":
        path = folder / "scripted.bin"
        torch.jit.save(torch.jit.script(model), str(path))
        return path, {"input_shape": "1x3x16x16"}
    if kind == "torchscript-traced":
        path = folder / "traced.onnx"  # a TorchScript zip named .onnx
        torch.jit.save(torch.jit.trace(model, x), str(path))
        return path, {"input_shape": "1x3x16x16"}
    if kind == "exported-program":
        path = folder / "program.pt"  # an ExportedProgram named .pt: the shape comes from its example inputs
        torch.export.save(torch.export.export(model, (x,)), str(path))
        return path, {}
    if kind == "state-dict":
        path = folder / "weights.onnx"
        torch.save(model.state_dict(), path)
        return path, {"arch": "models_for_tests:make_net", "input_shape": "1x3x16x16"}
    if kind == "checkpoint":
        path = folder / "checkpoint.pt2"
        torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
        return path, {"arch": "models_for_tests:make_net", "input_shape": "1x3x16x16"}
    if kind == "onnx":
        path = folder / "exported.pt"  # an ONNX protobuf named .pt; its static input shape is used
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["logits"])
        return path, {}
    raise AssertionError(kind)


FORMATS = {
    # kind saved: (report source_format, exporter, shape_source)
    "pickled-module": ("pickled-module", "dynamo", "flag"),
    "torchscript-scripted": ("torchscript", "torchscript", "flag"),
    "torchscript-traced": ("torchscript", "torchscript", "flag"),
    "exported-program": ("exported-program", "dynamo", "model"),
    "state-dict": ("state-dict", "dynamo", "flag"),
    "checkpoint": ("state-dict", "dynamo", "flag"),
    "onnx": ("onnx", None, "model"),
}


@pytest.mark.parametrize("kind", list(FORMATS))
def test_format_detected_from_content_and_exported_exactly(kind, net, tmp_path):
    path, kwargs = _save(kind, net, tmp_path)
    out = tmp_path / "out"
    report = edgepack.export(path, output_dir=out, **kwargs)

    source_format, exporter, shape_source = FORMATS[kind]
    assert report["model"]["source_format"] == source_format
    assert report["model"]["exporter"] == exporter
    assert report["model"]["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "shape_source": shape_source}]
    assert_verified(report)
    assert_matches_torch(report, out, net, {"x": fresh()})
    if kind == "onnx":
        # the reference for an ONNX input is that ONNX in ONNX Runtime with optimizations off
        assert report["verification"]["reference"] == "onnxruntime (optimizations off)"
        np.testing.assert_allclose(onnx_outputs(artifact_path(report, out), {"x": fresh()})[0],
                                   onnx_outputs(path, {"x": fresh()}, optimize=False)[0], rtol=RTOL, atol=ATOL)
    else:
        assert report["verification"]["reference"] == "pytorch"


def test_in_memory_module_is_exported_without_changing_the_callers_model(tmp_path):
    model = seeded(Net(), seed=3).train()  # training mode and a pruning hook: export must not alter either
    prune.l1_unstructured(model.conv1, "weight", amount=0.5)
    report = edgepack.export(model, output_dir=tmp_path, input_shape=SHAPE)

    assert report["model"]["source_format"] == "module"
    assert report["model"]["pruning_made_permanent"] == ["conv1.weight"]
    assert model.training and model.bn1.training
    assert hasattr(model.conv1, "weight_orig") and hasattr(model.conv1, "weight_mask")
    assert_verified(report)
    assert_matches_torch(report, tmp_path, model.eval(), {"x": fresh()})


# ------------------------------------------------------------------ B: pruning


def _pruned_net() -> Net:
    model = seeded(Net(), seed=5)
    prune.l1_unstructured(model.conv1, "weight", amount=0.5)  # 54 of 108 weights
    prune.ln_structured(model.conv2, "weight", amount=0.5, n=2, dim=0)  # 3 of 6 output channels
    prune.l1_unstructured(model.fc, "bias", amount=0.4)  # 2 of 5 biases
    return model


def test_pickled_pruned_module_is_made_permanent(tmp_path):
    model = _pruned_net()
    path = tmp_path / "pruned.pt"
    torch.save(model, path)
    # prune=False: this test is about the masks becoming plain weights (channel removal is tested elsewhere)
    report = edgepack.export(path, output_dir=tmp_path / "out", allow_pickle=True, input_shape="1x3x16x16", prune=False)

    assert report["model"]["pruning_made_permanent"] == ["conv1.weight", "conv2.weight", "fc.bias"]
    assert any("pruning" in w for w in report["warnings"])
    assert_verified(report)
    onnx_path = artifact_path(report, tmp_path / "out")
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    assert not [n for n in inits if n.endswith(("_orig", "_mask"))]
    # the zeros survive into the exported weights (BatchNorm folding scales conv1's rows, keeping its zeros)
    convs = [inits[n.input[1]] for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Conv"]
    assert int((convs[0] == 0).sum()) == 54
    # conv2 keeps 3 of its 6 output channels: the other 3 are all zero
    assert int((np.abs(convs[1]).sum(axis=(1, 2, 3)) > 0).sum()) == 3
    assert int((convs[1] == 0).sum()) == (convs[1].shape[0] - 3) * 4 * 3 * 3
    gemm_bias = [inits[n.input[2]] for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Gemm"][0]
    assert int((gemm_bias == 0).sum()) == 2
    assert_matches_torch(report, tmp_path / "out", model, {"x": fresh()})


def test_pruned_state_dict_with_masks_loads_with_arch(tmp_path):
    model = _pruned_net()
    state = model.state_dict()
    assert "conv1.weight_orig" in state and "conv1.weight_mask" in state
    path = tmp_path / "pruned_sd.pt"
    torch.save(state, path)
    report = edgepack.export(path, output_dir=tmp_path / "out", arch="models_for_tests:make_net", input_shape="1x3x16x16")

    assert report["model"]["source_format"] == "state-dict"
    assert report["model"]["pruning_made_permanent"] == ["conv1.weight", "conv2.weight", "fc.bias"]
    assert_verified(report)
    assert_matches_torch(report, tmp_path / "out", model, {"x": fresh()})


# ------------------------------------------------------------------ loader edge cases


def test_dataparallel_prefix_is_removed_with_a_warning(net, tmp_path):
    path = tmp_path / "dp.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 9}, path)
    report = edgepack.export(path, output_dir=tmp_path / "out", arch="models_for_tests:make_net", input_shape=SHAPE)
    assert any("'module.'" in w for w in report["warnings"])
    assert_verified(report)
    assert_matches_torch(report, tmp_path / "out", net, {"x": fresh()})


def test_checkpoint_holding_the_module_itself(net, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": net, "epoch": 3}, path)
    with pytest.raises(PickleNotAllowed, match="models_for_tests.Net"):
        edgepack.export(path, output_dir=tmp_path / "refused", input_shape=SHAPE)
    report = edgepack.export(path, output_dir=tmp_path / "out", allow_pickle=True, input_shape=SHAPE)
    assert report["model"]["source_format"] == "pickled-module"
    assert_verified(report)


def test_state_dict_with_wrong_tensor_shapes_is_a_load_error(tmp_path):
    state = seeded(Net()).state_dict()
    state["fc.weight"] = torch.zeros(10, 6)
    state["fc.bias"] = torch.zeros(10)
    path = tmp_path / "ten_classes.pt"
    torch.save(state, path)
    with pytest.raises(LoadError, match=r"shape mismatch for fc\.weight \[10, 6\] \(model \[5, 6\]\)") as info:
        edgepack.export(path, output_dir=tmp_path / "out", arch="models_for_tests:make_net", input_shape=SHAPE)
    assert info.value.exit_code == 2


def test_arch_module_that_fails_to_import_is_a_load_error(tmp_path, monkeypatch):
    (tmp_path / "broken_arch_mod.py").write_text("raise RuntimeError('missing config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(seeded(Net()).state_dict(), tmp_path / "w.pt")
    with pytest.raises(LoadError, match=r"importing 'broken_arch_mod' failed \(RuntimeError: missing config\)"):
        edgepack.export(tmp_path / "w.pt", output_dir=tmp_path / "out", arch="broken_arch_mod:make", input_shape=SHAPE)
    sys.modules.pop("broken_arch_mod", None)
    with pytest.raises(LoadError, match="must be 'package.module:factory'"):
        edgepack.export(tmp_path / "w.pt", output_dir=tmp_path / "out", arch=":make_net", input_shape=SHAPE)


def test_onnx_with_open_batch_dimension_uses_batch_1(net, tmp_path):
    path = tmp_path / "dynamic.onnx"
    torch.onnx.export(net, (torch.from_numpy(fresh()),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    report = edgepack.export(path, output_dir=tmp_path / "out")
    assert report["model"]["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "shape_source": "model"}]
    assert_verified(report)
    with pytest.raises(InputShapeError, match=r"expects Nx3x16x16: pass --input-shape x:1x3x16x16"):
        edgepack.export(path, output_dir=tmp_path / "out2", input_shape="1x3x32x32")


def test_onnx_that_onnxruntime_cannot_load_is_unsupported(tmp_path):
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="example.custom")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("example.custom", 1)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "custom.onnx"))
    with pytest.raises(UnsupportedError, match="example.custom:FancyOp") as info:
        edgepack.export(tmp_path / "custom.onnx", output_dir=tmp_path / "out")
    assert info.value.exit_code == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.onnx"]  # no output (or staging) folder at all


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, comparing the NaN outputs
def test_nan_weights_are_an_error_naming_them_and_write_no_artifact(tmp_path):
    model = seeded(Net(), seed=2)
    with torch.no_grad():
        model.fc.weight[1, 0] = float("nan")
        model.fc.bias[3] = float("inf")
    path = tmp_path / "nan.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(UsageError, match=r"NaN or Inf in weights \['fc.weight', 'fc.bias'\]"):
        edgepack.export(path, output_dir=tmp_path / "out", arch="models_for_tests:make_net", input_shape=SHAPE)
    assert not list((tmp_path / "out").glob("*.onnx")) and not (tmp_path / "out" / "report.json").exists()


def test_a_negative_batchnorm_variance_is_an_error_naming_it(tmp_path):
    model = seeded(Net(), seed=2)
    with torch.no_grad():
        model.bn1.running_var[2] = -1.0
    path = tmp_path / "negvar.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(UsageError, match=r"negative BatchNorm variance in \['bn1.running_var'\]"):
        edgepack.export(path, output_dir=tmp_path / "out", arch="models_for_tests:make_net", input_shape=SHAPE)


def test_named_input_shape(net, tmp_path):
    report = edgepack.export(net, output_dir=tmp_path, input_shape="x:1x3x16x16")
    assert report["model"]["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "shape_source": "flag"}]
    assert report["artifacts"][0]["inputs"][0]["shape"] == [1, 3, 16, 16]
    assert_verified(report)


def test_two_inputs_with_two_named_shapes(tmp_path):
    model = seeded(TwoInputNet(), seed=4)
    report = edgepack.export(model, output_dir=tmp_path, input_shape=["depth:1x1x8x8", "image:1x3x16x16"])
    assert report["model"]["inputs"] == [
        {"name": "image", "shape": [1, 3, 16, 16], "shape_source": "flag"},
        {"name": "depth", "shape": [1, 1, 8, 8], "shape_source": "flag"},
    ]
    assert [(i["name"], i["shape"]) for i in report["artifacts"][0]["inputs"]] == [("image", [1, 3, 16, 16]), ("depth", [1, 1, 8, 8])]
    assert_verified(report)
    feeds = {"image": fresh(), "depth": fresh((1, 1, 8, 8), seed=99)}
    assert_matches_torch(report, tmp_path, model, feeds)


@pytest.mark.parametrize(
    "shapes, message",
    [
        ("1x3x16x16", r"the model takes 2 inputs \(image, depth\); name each: --input-shape image:"),
        (["image:1x3x16x16", "dpeth:1x1x8x8"], r"--input-shape names input 'dpeth'; the model's inputs are: image, depth"),
        (["image:1x3x16x16"], r"no shape for input 'depth'; pass --input-shape depth:"),
    ],
)
def test_input_shape_errors_for_two_inputs(shapes, message, tmp_path):
    with pytest.raises(UsageError, match=message) as info:
        edgepack.export(TwoInputNet(), output_dir=tmp_path, input_shape=shapes)
    assert info.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_shape_falls_back_to_the_device_profile(net, tmp_path):
    report = edgepack.export(net, output_dir=tmp_path, target="host")
    assert report["model"]["inputs"] == [{"name": "x", "shape": [1, 3, 224, 224], "shape_source": "profile:host"}]
    assert_verified(report)
    assert_matches_torch(report, tmp_path, net, {"x": fresh((1, 3, 224, 224))})
