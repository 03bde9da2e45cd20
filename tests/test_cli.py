"""The `edgepack` command line as a user meets it: a subprocess (`python -m edgepack`). Every bad
input must give its exit code, exactly one stderr line `edgepack: error: ...` with no traceback,
and leave no artifact behind. Also: --version/--help, --json, the shipped example, and the
report.json schema checked against the files it describes.

The CLI processes are independent, and each spends most of its time importing torch, so the
module fixture `runs` starts all of them at once (a few at a time) and each test reads its result."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import edgepack
from edgepack.options import ExportOptions
from edgepack.pipeline import graph_passes
from cli_run import Run, cli_in_process
from models_for_tests import CumMaxNet, FlatNet, Net, TwoInputNet, seeded

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
EXAMPLE = ROOT / "examples" / "digits_cnn.pt2"
EXAMPLE_CALIB = ROOT / "examples" / "digits_calib.npy"
HIDDEN_MODULE = "edgepack_test_hidden_arch"


def _env(pythonpath: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def cli(*args: str, cwd: Path, pythonpath: str | None = str(TESTS), out: Path | None = None) -> Run:
    proc = subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(pythonpath), timeout=300)
    return Run(proc.returncode, proc.stdout, proc.stderr, out or cwd / "out")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Model files for the CLI cases, in one folder."""
    d = tmp_path_factory.mktemp("models")
    net = seeded(Net(), seed=0)
    torch.save(net.state_dict(), d / "state.pt")
    data = (d / "state.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    (d / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "empty.pt").write_bytes(b"")
    torch.save(net, d / "pickled.pt")
    torch.save(seeded(FlatNet()).state_dict(), d / "flat_state.pt")
    torch.save(seeded(FlatNet()), d / "flat.pt")
    torch.save(seeded(CumMaxNet()), d / "cummax.pt")
    torch.save(seeded(TwoInputNet()), d / "two_inputs.pt")
    (d / "a_file").write_text("not a folder\n")
    broken = seeded(Net(), seed=0)
    with torch.no_grad():
        broken.fc.weight[2, 1] = float("nan")
    torch.save(broken.state_dict(), d / "nan_state.pt")
    # a pickled model whose class lives in a module that the CLI process cannot import
    src = d / "hidden_src"
    src.mkdir()
    (src / f"{HIDDEN_MODULE}.py").write_text(
        "from torch import nn\n\nclass Hidden(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.conv = nn.Conv2d(3, 2, 3)\n\n"
        "    def forward(self, x):\n        return self.conv(x)\n"
    )
    sys.path.insert(0, str(src))
    try:
        hidden = __import__(HIDDEN_MODULE)
        torch.save(hidden.Hidden(), d / "hidden.pt")
    finally:
        sys.path.remove(str(src))
        sys.modules.pop(HIDDEN_MODULE, None)
    return {p.name: p for p in d.iterdir()}


SHAPE = ("--input-shape", "1x3x16x16")

# name -> (argument list with {file} placeholders and OUT for the -o folder, exit code, key phrases)
BAD_INPUTS = {
    "missing-file": (["export", "{dir}/does_not_exist.pt", "-o", "OUT"], 2, ["not found"]),
    "truncated-zip": (["export", "{truncated.pt}", "-o", "OUT"], 2, ["truncated"]),
    "random-bytes": (["export", "{random.pt}", "-o", "OUT"], 2, ["is not a PyTorch checkpoint, TorchScript, ExportedProgram or ONNX file"]),
    "empty-file": (["export", "{empty.pt}", "-o", "OUT"], 2, ["is empty"]),
    "pickle-not-allowed": (["export", "{pickled.pt}", "-o", "OUT", *SHAPE], 2, ["--allow-pickle", "models_for_tests.Net"]),
    "class-not-importable": (["export", "{hidden.pt}", "--allow-pickle", "-o", "OUT", *SHAPE], 2,
                             [f"no module named '{HIDDEN_MODULE}'", "PYTHONPATH", "--arch"]),
    "state-dict-without-arch": (["export", "{state.pt}", "-o", "OUT", *SHAPE], 2, ["holds a state dict", "pass --arch"]),
    "state-dict-keys-do-not-fit": (["export", "{flat_state.pt}", "--arch", "models_for_tests:make_net", "-o", "OUT", *SHAPE], 2,
                                   ["does not fit --arch models_for_tests:make_net", "missing keys ['conv1.weight', 'conv1.bias'",
                                    "unexpected keys ['conv.weight', 'conv.bias']"]),
    "wrong-input-shape": (["export", "{flat.pt}", "--allow-pickle", "-o", "OUT", "--input-shape", "1x3x32x32"], 2,
                          ["x [1, 3, 32, 32]", "--input-shape"]),
    "unconvertible-op": (["export", "{cummax.pt}", "--allow-pickle", "-o", "OUT", *SHAPE], 4,
                         ["could not convert the model to ONNX", "module 'head.running_max' (RunningMax)", "aten.cummax"]),
    "output-is-a-file": (["export", "{pickled.pt}", "--allow-pickle", "-o", "{a_file}", *SHAPE], 2, ["is a file", "-o"]),
    "output-under-proc": (["export", "{pickled.pt}", "--allow-pickle", "-o", "/proc/edgepack-test/out", *SHAPE], 2,
                          ["cannot write to output directory /proc/edgepack-test/out"]),
    "unknown-format": (["export", "{pickled.pt}", "--allow-pickle", "--format", "onnx,coreml", "-o", "OUT", *SHAPE], 2,
                       ["unknown format(s) coreml", "known formats: onnx, tflite, ncnn"]),
    "unnamed-shape-two-inputs": (["export", "{two_inputs.pt}", "--allow-pickle", "-o", "OUT", "--input-shape", "1x3x16x16"], 2,
                                 ["the model takes 2 inputs (image, depth)", "--input-shape image:", "--input-shape depth:"]),
    "unknown-input-name": (["export", "{two_inputs.pt}", "--allow-pickle", "-o", "OUT", "--input-shape", "image:1x3x16x16",
                            "--input-shape", "rgb:1x1x8x8"], 2, ["names input 'rgb'", "inputs are: image, depth"]),
    "bad-flag-value": (["export", "{pickled.pt}", "--opset", "eighteen", "-o", "OUT"], 2, ["'--opset'"]),
}

def _readme_export_args() -> list[str]:
    """The export in the README's first command (after the installs), its paths made absolute."""
    line = next(t for t in (ROOT / "README.md").read_text().splitlines() if t.startswith("python3 -m venv"))
    words = shlex.split(line.split("&& edgepack ", 1)[1])
    return [str(ROOT / w) if w.startswith("examples/") else ("OUT" if w == "out/" else w) for w in words]


GOOD_RUNS = {
    "readme-first-command": _readme_export_args(),
    "two-named-inputs": ["export", "{two_inputs.pt}", "--allow-pickle", "-o", "OUT", "--input-shape", "image:1x3x16x16",
                         "--input-shape", "depth:1x1x8x8"],
    "onnx-and-ncnn-int8-weights": ["export", "{pickled.pt}", "--allow-pickle", "--format", "onnx,ncnn",
                                   "--int8-weights-only", "-o", "OUT", *SHAPE],
    "preprocessing": ["export", "{pickled.pt}", "--allow-pickle", "-o", "OUT", *SHAPE, "--mean", "0.5", "--std", "0.25", "--bgr"],
    "example-json": ["export", str(EXAMPLE), "--calib", str(EXAMPLE_CALIB), "-o", "OUT", "--json"],
    "debug-traceback": ["export", "{empty.pt}", "-o", "OUT", "--debug"],
    "nan-weights": ["export", "{nan_state.pt}", "--arch", "models_for_tests:make_net", "-o", "OUT", *SHAPE],
}


def _fill(args: list[str], files: dict[str, Path], out: Path) -> list[str]:
    names = {k: str(v) for k, v in files.items()}
    names["dir"] = str(next(iter(files.values())).parent)
    return [str(out) if a == "OUT" else re.sub(r"\{([^}]+)\}", lambda m: names[m.group(1)], a) for a in args]


@pytest.fixture(scope="module")
def runs(files, tmp_path_factory) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("runs")
    jobs = {}
    for name, args in [(n, a) for n, (a, _, _) in BAD_INPUTS.items()] + list(GOOD_RUNS.items()):
        cwd = base / name
        cwd.mkdir()
        # the hidden class is importable from neither cwd nor PYTHONPATH
        jobs[name] = (_fill(args, files, cwd / "out"), cwd)
    # The README's command runs as a real `python -m edgepack` process, as a user types it, and so does
    # "preprocessing" (its report's provenance records the command line); every other case goes through
    # the same main() in this process meanwhile (a process start with torch's import would be most of
    # their cost).
    real = {"readme-first-command", "preprocessing"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {n: pool.submit(cli, *args, cwd=cwd, out=cwd / "out") for n, (args, cwd) in jobs.items() if n in real}
        done = {n: cli_in_process(*args, out=cwd / "out") for n, (args, cwd) in jobs.items() if n not in real}
        return {**done, **{n: f.result() for n, f in futures.items()}}


# ------------------------------------------------------------------ D: bad input


def _leftovers(folder: Path) -> list[str]:
    if not folder.exists() or folder.is_file():
        return []
    return sorted(p.name for p in folder.rglob("*"))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_with_its_exit_code_and_no_artifacts(case, runs, files):
    _, code, phrases = BAD_INPUTS[case]
    run = runs[case]
    lines = run.stderr.splitlines()
    assert run.code == code, run.stderr
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("edgepack: error: ")
    for phrase in phrases:
        assert phrase in lines[0]
    assert "Traceback" not in run.stderr
    assert run.stdout == ""
    assert _leftovers(run.out) == []  # no .onnx, no .*.tmp, no verify.npz/report.json
    assert files["a_file"].read_text() == "not a folder\n"
    assert sorted(p.name for p in files["a_file"].parent.iterdir() if p.name.startswith(".")) == []


def test_debug_shows_the_traceback_and_keeps_the_exit_code(runs):
    run = runs["debug-traceback"]
    assert run.code == 2
    assert run.stderr.startswith("Traceback (most recent call last):")
    assert "edgepack.errors.LoadError" in run.stderr
    assert run.stderr.splitlines()[-1].startswith("edgepack: error: ") and "is empty" in run.stderr.splitlines()[-1]


def test_nan_weights_are_an_error_naming_the_parameter_and_write_nothing(runs):
    run = runs["nan-weights"]
    assert run.code == 2
    assert run.stderr.strip().splitlines() == [
        "edgepack: error: NaN or Inf in weights ['fc.weight']: every output would be NaN/Inf; fix or retrain those "
        "parameters before exporting"]
    assert not (run.out / "report.json").exists()


def test_two_named_input_shapes(runs):
    run = runs["two-named-inputs"]
    assert run.code == 0, run.stderr
    report = json.loads((run.out / "report.json").read_text())
    assert [(i["name"], i["shape"], i["shape_source"]) for i in report["model"]["inputs"]] == [
        ("image", [1, 3, 16, 16], "flag"), ("depth", [1, 1, 8, 8], "flag")]
    assert report["artifacts"][0]["ok"] and report["artifacts"][0]["fidelity"]["rel_error"] <= 1e-4
    session = ort.InferenceSession(str(run.out / report["artifacts"][0]["path"]), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", [1, 3, 16, 16]), ("depth", [1, 1, 8, 8])]


def test_unbuilt_precision_fails_only_its_artifact_with_exit_4(runs):
    run = runs["onnx-and-ncnn-int8-weights"]
    assert run.code == 4
    report = json.loads((run.out / "report.json").read_text())
    arts = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    assert list(arts) == [("onnx", "fp32"), ("onnx", "int8-weights"), ("ncnn", "fp16"), ("ncnn", "int8-weights")]
    assert arts["onnx", "fp32"]["ok"] and arts["onnx", "int8-weights"]["ok"]
    assert (run.out / arts["onnx", "fp32"]["path"]).is_file() and arts["onnx", "fp32"]["fidelity"]["rel_error"] <= 1e-4
    bad = arts["ncnn", "int8-weights"]
    assert (bad["ok"], bad["path"], bad["exit_code"]) == (False, None, 4)
    assert "does not support precision 'int8-weights'" in bad["error"]
    assert report["exit_code"] == 4 and report["ok"] is False
    assert not list(run.out.glob("*.int8-weights.param")) and not list(run.out.glob(".*.tmp"))


# ------------------------------------------------------------------ E: CLI basics and the shipped example


def test_version_and_help(tmp_path):
    version = cli("--version", cwd=tmp_path)
    assert version.code == 0 and version.stdout.strip() == f"edgepack, version {edgepack.__version__}"
    script = Path(sys.executable).with_name("edgepack")  # the console script pip installed beside python
    if script.exists():
        proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=_env(None), timeout=60)
        assert (proc.returncode, proc.stdout.strip()) == (0, f"edgepack, version {edgepack.__version__}")
    helped = cli("--help", cwd=tmp_path)
    assert helped.code == 0 and helped.stderr == ""
    for command in ("export", "formats", "devices"):
        assert command in helped.stdout
    export_help = cli("export", "--help", cwd=tmp_path)
    for flag in ("--input-shape", "--allow-pickle", "--arch", "--calib", "--json", "--format"):
        assert flag in export_help.stdout


def test_the_readme_first_command_exports_every_format_verified_with_an_estimate(runs):
    run = runs["readme-first-command"]
    assert run.code == 0, run.stderr
    report = json.loads((run.out / "report.json").read_text())
    arts = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    assert set(arts) == {("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"), ("ncnn", "fp16"),
                         ("ncnn", "int8")}
    reference = report["evaluation"]["reference_top1"]
    for key, art in arts.items():
        assert art["ok"], (key, art["error"])
        assert reference - art["accuracy"]["top1"] <= 0.01, key  # int8 within a point of PyTorch on real digits
        assert art["estimate"]["target"] == "rpi4" and art["estimate"]["latency_ms"] > 0, key
    prune = next(p for p in report["passes"] if p["name"] == "remove_pruned_channels")
    assert prune["counts"]["channels_removed"] == 16 and prune["counts"]["round_channels"] == 4  # rpi4 rounds to 4


def test_json_on_the_shipped_example_uses_the_calibration_holdout(runs):
    run = runs["example-json"]
    assert run.code == 0, run.stderr
    printed = json.loads(run.stdout)  # stdout is nothing but the JSON document
    assert printed == json.loads((run.out / "report.json").read_text())
    assert printed["verification"]["source"] == "calibration-holdout"
    assert printed["verification"]["samples"] == 40  # 20 % of the 200 calibration samples
    art = printed["artifacts"][0]
    assert art["ok"] is True and art["fidelity"]["top1_agreement"] == 1.0 and art["fidelity"]["rel_error"] <= 1e-4
    assert printed["preprocessing"] is None
    assert printed["model"]["source_format"] == "exported-program"
    assert printed["model"]["inputs"][0]["shape_source"] == "model"
    # the held-out samples really are calibration samples
    calib = np.load(EXAMPLE_CALIB)
    held = np.load(run.out / "verify.npz")[f"input/{printed['model']['inputs'][0]['name']}"]
    assert held.shape == (40, 1, 1, 8, 8)
    assert all(any(np.array_equal(h[0], c) for c in calib) for h in held[:5])


# ------------------------------------------------------------------ F: report schema


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_report_schema_and_that_it_describes_the_files(runs):
    run = runs["preprocessing"]
    assert run.code == 0, run.stderr
    assert run.stdout.strip().endswith(f"wrote {run.out / 'report.json'}")
    report = json.loads((run.out / "report.json").read_text())

    for key in ("schema_version", "provenance", "model", "target", "preprocessing", "passes", "verification", "artifacts",
                "warnings", "timings_s", "ok", "exit_code"):
        assert key in report
    assert report["schema_version"] == 1
    prov = report["provenance"]
    assert "export" in prov["command"] and "--allow-pickle" in prov["command"]
    assert prov["versions"]["torch"] == torch.__version__ and prov["versions"]["onnxruntime"] == ort.__version__
    assert prov["versions"]["edgepack"] == edgepack.__version__
    assert prov["seeds"] == {"verification": 0}
    assert report["preprocessing"] == {"mean": [0.5], "std": [0.25], "scale": None, "color_order": "bgr", "layout": "nchw", "resize": None, "crop": None,
                                      "source": "flags"}
    expected = [name for name, _ in graph_passes(ExportOptions.create("."))]
    assert [p["name"] for p in report["passes"]] == expected  # every pass, in pipeline order
    assert {"cleanup_graph", "fold_batchnorm"} <= {p["name"] for p in report["passes"]}
    assert all({"name", "modified", "counts"} <= set(p) for p in report["passes"])
    assert report["ok"] is True and report["exit_code"] == 0 and report["warnings"] == []

    model = report["model"]
    assert model["source_format"] == "pickled-module" and model["name"] == "pickled"
    [art] = report["artifacts"]
    for key in ("path", "files", "format", "precision", "size_bytes", "inputs", "outputs", "fidelity", "ok"):
        assert key in art
    path = run.out / art["path"]
    assert art["files"] == [{"path": art["path"], "size_bytes": path.stat().st_size, "sha256": _sha256(path)}]
    assert art["size_bytes"] == path.stat().st_size
    assert (art["format"], art["precision"], art["ok"]) == ("onnx", "fp32", True)
    assert art["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32", "layout": "NCHW"}]
    assert art["outputs"] == [{"name": "output", "shape": [1, 5], "dtype": "float32", "layout": "NC"}]
    assert {k: art["fidelity"]["tolerance"][k] for k in ("rel_error", "min_cosine", "enforced")} == {
        "rel_error": 1e-4, "min_cosine": 0.9999, "enforced": True}
    assert art["fidelity"]["samples"] == report["verification"]["samples"] == 10  # 8 random + zeros + 10x

    # params: the source's (PyTorch, BatchNorm's 2 x 4 included); params_after_passes and MACs are counted
    # on the exported graph: BatchNorm folded into conv1
    proto = onnx.load(str(path))
    weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert model["params_after_passes"] == sum(int(np.prod(i.dims)) for i in weights)  # float weights only, no shape constants
    assert model["params_after_passes"] == (4 * 27 + 4) + (6 * 36 + 6) + (5 * 6 + 5)
    assert model["params"] == (4 * 27 + 4) + 2 * 4 + (6 * 36 + 6) + (5 * 6 + 5)
    assert model["macs"] == 4 * 16 * 16 * 27 + 6 * 8 * 8 * 36 + 5 * 6

    # verify.npz: inputs and reference outputs that the ONNX reproduces
    arrays = np.load(run.out / report["verification"]["file"])
    assert sorted(arrays.files) == ["input/x", "meta/edge", "reference/output"]
    assert int(arrays["meta/edge"]) == 2  # the zeros and 10x inputs (judged for fp32 only)
    inputs, reference = arrays["input/x"], arrays["reference/output"]
    assert inputs.shape == (10, 1, 3, 16, 16) and reference.shape == (10, 1, 5)  # 8 N(0,1) + zeros + 10x
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = np.stack([session.run(None, {"x": x})[0] for x in inputs])
    assert np.abs(actual - reference).max() / np.abs(reference).max() <= 1e-4
    # and the reference is the PyTorch model itself
    net = seeded(Net(), seed=0)
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(inputs[0])).numpy(), reference[0], rtol=1e-5, atol=1e-6)
