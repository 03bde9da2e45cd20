"""`edgepack bench` on this machine: the JSON schema and its numbers, crash isolation (corrupt files,
a runtime that dies of SIGSEGV), dynamic shapes, export folders (report.json + report.html), the
runner zip sent to boards, bench/inspect with torch made unimportable, and every adapter agreeing
with PyTorch on the same model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgepack.runtimes import ADAPTERS, get_runtime
from edgepack.runtimes.bench_runner import build_runner_zip, runner_modules
from onnx import TensorProto, helper

import edgepack
from edgepack.commands.bench import JSON_KEYS, LATENCY_KEYS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits_cnn.pt2"
CALIB = ROOT / "examples" / "digits_calib.npy"


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """The digits example exported to fp32 + int8 ONNX and TFLite (a few seconds)."""
    out = tmp_path_factory.mktemp("export")
    report = edgepack.export(EXAMPLE, output_dir=out, formats="onnx,tflite", int8=True, calib=CALIB)
    assert report["ok"]
    return out


def _check_schema(result: dict, path: Path, runs: int, threads: int) -> None:
    assert set(JSON_KEYS) <= set(result)
    lat = result["latency_ms"]
    assert set(lat) == set(LATENCY_KEYS)
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
    assert result["runs"] == runs and result["threads"] == threads
    assert result["size_bytes"] == path.stat().st_size
    assert result["load_ms"] > 0 and result["first_run_ms"] > 0
    # the runtime alone is tens of MB; the model's share is what the loaded session adds on top
    assert result["baseline_rss_mb"] > 10
    assert result["model_rss_mb"] == pytest.approx(max(result["peak_rss_mb"] - result["baseline_rss_mb"], 0), abs=1e-6)


@pytest.mark.parametrize("name, runtime", [("digits_cnn.fp32.onnx", "onnxruntime"), ("digits_cnn.int8.tflite", "litert")])
def test_json_schema_and_numbers(export_dir, name, runtime):
    path = export_dir / name
    proc = run_cli("bench", str(path), "--json", "--runs", "25", "--threads", "1", "--warmup", "2")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    _check_schema(result, path, runs=25, threads=1)
    assert result["runtime"] == runtime
    assert result["runtime_version"] == get_runtime(runtime).version()
    assert result["inputs"][0]["shape"] == ([1, 1, 8, 8] if runtime == "onnxruntime" else [1, 8, 8, 1])


def test_min_seconds_and_option_errors(export_dir):
    proc = run_cli("bench", str(export_dir / "digits_cnn.fp32.onnx"), "--json", "--min-seconds", "0.2", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["runs"] >= 10 and result["latency_ms"]["mean"] * result["runs"] <= 0.2e3 * 1.5 + 50
    for bad, why in ((["--runs", "5", "--min-seconds", "1"], "exclude each other"), (["--runs", "0"], "at least 1"),
                     (["--remote-python", "python3"], "only apply with --remote")):
        proc = run_cli("bench", str(export_dir / "digits_cnn.fp32.onnx"), *bad)
        assert proc.returncode == 2 and why in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_file_is_an_error_not_a_crash(export_dir, tmp_path, suffix, damage):
    good = (export_dir / f"digits_cnn.fp32{suffix}").read_bytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(good[: len(good) // 3] if damage == "truncated" else np.random.default_rng(0).bytes(4096))
    proc = run_cli("bench", str(bad), "--runs", "3")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgepack: error: bad{suffix} is not a valid "), lines
    assert "Traceback" not in proc.stderr


CRASHY = """
import os, signal
class Crashy:
    name = "litert"
    def version(self):
        return "crashy 0"
    def load(self, artifact, *, threads=None, optimize=True):
        os.kill(os.getpid(), signal.SIGSEGV)
"""


def test_runtime_segfault_is_isolated(export_dir, tmp_path):
    """A runtime that dies of SIGSEGV while loading takes only its child process down."""
    (tmp_path / "crashy_adapter.py").write_text(CRASHY)
    (tmp_path / "sitecustomize.py").write_text(
        "import edgepack.runtimes as r\nr.ADAPTERS['litert'] = 'crashy_adapter:Crashy'\n")
    proc = run_cli("bench", str(export_dir / "digits_cnn.fp32.tflite"), "--runs", "3", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 2
    assert "crashed (SIGSEGV) in the measure process" in proc.stderr and "corrupt or unsupported" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _dynamic_onnx(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "dyn", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)


def test_dynamic_shape_needs_input_shape(tmp_path):
    path = tmp_path / "dyn.onnx"
    _dynamic_onnx(path)
    proc = run_cli("bench", str(path), "--runs", "3")
    assert proc.returncode == 2 and "pass --input-shape x:" in proc.stderr and "[-1, 4]" in proc.stderr
    proc = run_cli("bench", str(path), "--runs", "3", "--input-shape", "x:3x4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inputs"] == [{"name": "x", "shape": [3, 4], "dtype": "float32"}]
    proc = run_cli("bench", str(path), "--runs", "3", "--input-shape", "y:3x4")
    assert proc.returncode == 2 and "the model's inputs are ['x']" in proc.stderr


def test_ncnn_without_adapter_or_runtime_is_reported(tmp_path):
    param = tmp_path / "m.ncnn.param"
    param.write_text("7767517\n0 0\n")
    (tmp_path / "m.ncnn.bin").write_bytes(b"")
    proc = run_cli("bench", str(param), "--runs", "3")
    if "ncnn" not in ADAPTERS:
        assert proc.returncode == 2 and "ncnn is not available: this edgepack has no ncnn adapter" in proc.stderr
    else:  # [H]'s adapter is merged: an empty graph is either rejected or runs; never a crash of edgepack
        assert proc.returncode in (0, 2, 4) and "Traceback" not in proc.stderr
    (tmp_path / "m.ncnn.bin").unlink()
    proc = run_cli("bench", str(param), "--runs", "3")
    assert proc.returncode == 2 and "m.ncnn.bin" in proc.stderr


def test_export_dir_bench_writes_report_and_html(export_dir):
    before = json.loads((export_dir / "report.json").read_text())
    proc = run_cli("bench", str(export_dir), "--runs", "10", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((export_dir / "report.json").read_text())
    assert len(report["artifacts"]) == len(before["artifacts"]) == 4
    for art, old in zip(report["artifacts"], before["artifacts"]):
        assert {k: v for k, v in art.items() if k not in ("bench", "benches")} == old  # nothing else changed
        assert list(art["benches"].values()) == [art["bench"]]  # one machine measured
        _check_schema(art["bench"], export_dir / art["path"], runs=10, threads=1)
        assert art["bench"]["runtime"] == {"onnx": "onnxruntime", "tflite": "litert"}[art["format"]]
        assert art["path"] in proc.stdout
    html = (export_dir / "report.html").read_text()
    assert html.count("<svg") == 2 and html.count("<circle") == 4 and html.count("<rect") == 4
    assert "<script" not in html and "src=" not in html and "href=" not in html  # opens offline
    import re
    import xml.etree.ElementTree as ET

    ns = "{http://www.w3.org/2000/svg}"
    svgs = [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", html, re.DOTALL)]  # well-formed SVG
    # latency bars: one per artifact, lengths proportional to p50 (read back from each bar's tooltip)
    bars = sorted((float(r.find(f"{ns}title").text.split()[1]), float(r.get("width"))) for r in svgs[0].iter(f"{ns}rect"))
    assert [w for _, w in bars] == pytest.approx([p / bars[-1][0] * bars[-1][1] for p, _ in bars], rel=1e-2, abs=1.0)
    # scatter: no two point labels on top of each other (labels are 11 px text, ~6.5 px a character)
    labels = [(float(t.get("x")), float(t.get("y")), len(t.text)) for t in svgs[1].iter(f"{ns}text") if t.get("font-size") == "11"]
    assert len(labels) == 4
    for i, (x, y, n) in enumerate(labels):
        for x2, y2, n2 in labels[i + 1:]:
            assert abs(y - y2) >= 12 or x + 6.5 * n <= x2 or x2 + 6.5 * n2 <= x, labels


BLOCKER = """
import sys
BLOCKED = {blocked!r}
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(name + " is blocked in this test")
        return None
sys.meta_path.insert(0, _Blocker())
"""
BLOCK_TORCH = BLOCKER.format(blocked={"torch"})


def test_runner_zip_is_self_contained(export_dir, tmp_path):
    """What --remote sends when edgepack is not installed on the board: only these modules."""
    zpath = build_runner_zip(tmp_path / "runner.zip")
    names = set(zipfile.ZipFile(zpath).namelist())
    assert names == {"__main__.py", "edgepack/__init__.py", "edgepack/errors.py", "edgepack/runtimes/__init__.py",
                     "edgepack/runtimes/bench_runner.py",
                     # bench --verify: runs the artifact in ONNX layout and compares (numpy only)
                     "edgepack/fsutil.py", "edgepack/verify.py", "edgepack/runtimes/artifact.py"} | {
        spec.partition(":")[0].replace(".", "/") + ".py" for n, spec in ADAPTERS.items() if n != "torch"}
    assert "edgepack.runtimes.torch_eager" not in runner_modules()
    # a board has numpy and a runtime only: everything else edgepack uses is made unimportable
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked={"torch", "onnx", "onnx_ir", "onnxscript", "click",
                                                                       "rich", "PIL"}))
    proc = subprocess.run([sys.executable, str(zpath), str(export_dir / "digits_cnn.fp32.onnx"), "--runs", "5"],
                          capture_output=True, text=True, check=False, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    line = [x for x in proc.stdout.splitlines() if x.startswith("EDGEPACK-BENCH-RESULT ")][-1]
    result = json.loads(line.split(" ", 1)[1])
    assert result["runner"] == "sent" and result["runs"] == 5 and result["runtime"] == "onnxruntime"




def test_bench_estimate_and_inspect_without_torch(export_dir, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {"PYTHONPATH": str(tmp_path)}
    blocked = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                             env={**os.environ, **env}, check=False)
    assert blocked.returncode != 0 and "torch is blocked" in blocked.stderr  # the block works
    proc = run_cli("bench", str(export_dir / "digits_cnn.int8.tflite"), "--runs", "5", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["runs"] == 5
    proc = run_cli("inspect", str(export_dir / "digits_cnn.fp32.onnx"), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ops"]["Conv"] == 3
    proc = run_cli("estimate", str(export_dir / "digits_cnn.int8.tflite"), "--target", "rpi4", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["latency_ms"] > 0


def test_inspect_counts_match_the_export(export_dir):
    """Params and MACs read from each file equal the export's own counts; op census per format."""
    from edgepack.commands.inspect import inspect_artifact

    report = json.loads((export_dir / "report.json").read_text())
    for art in report["artifacts"]:
        info = inspect_artifact(export_dir / art["path"])
        assert (info["params"], info["macs"]) == (report["model"]["params_after_passes"], report["model"]["macs"]), art["path"]
        assert info["size_bytes"] == art["size_bytes"]
        assert [(d["name"], d["shape"], d["dtype"], d["layout"]) for d in info["inputs"]] == [
            (d["name"], d["shape"], d["dtype"], d["layout"]) for d in art["inputs"]]
    fp32, q = inspect_artifact(export_dir / "digits_cnn.fp32.onnx"), inspect_artifact(export_dir / "digits_cnn.int8.onnx")
    assert fp32["ops"] == {"Conv": 3, "Gemm": 1, "MaxPool": 1, "ReduceMean": 1, "Relu": 3, "Reshape": 1}
    assert q["ops"]["QuantizeLinear"] > 0 and "Relu" not in q["ops"]  # folded into the quantized ranges
    assert q["inputs"][0]["quantized_by"] == "QuantizeLinear" and 0 < q["inputs"][0]["scale"] < 1
    t = inspect_artifact(export_dir / "digits_cnn.int8.tflite")
    assert t["ops"] == {"CONV_2D": 3, "DEQUANTIZE": 1, "FULLY_CONNECTED": 1, "MAX_POOL_2D": 1, "MEAN": 1, "QUANTIZE": 1,
                        "RESHAPE": 1}
    assert t["constants_by_dtype"] == {"int32": 6, "int8": 4}
    assert t["inputs"][0]["layout_source"] == "report.json"


def test_inspect_ncnn_param(tmp_path):
    from edgepack.commands.inspect import inspect_artifact

    param = _ncnn_from_pnnx(tmp_path)
    if param is None:
        pytest.skip("pnnx is not installed (pip install 'edgepack[ncnn-export]')")
    info = inspect_artifact(param)
    assert info["ops"] == {"Convolution": 3, "InnerProduct": 1, "Input": 1, "Pooling": 2}
    # BatchNorm folded by pnnx, nothing pruned: (k*k*cin + 1) * cout per conv, (in + 1) * out for the Linear
    assert info["params"] == (9 + 1) * 16 + (16 * 9 + 1) * 32 + (32 * 9 + 1) * 32 + (32 + 1) * 10
    assert info["macs"] is None and [d["name"] for d in info["inputs"]] == ["in0"]
    assert info["size_bytes"] == param.stat().st_size + param.with_suffix(".bin").stat().st_size


def test_inspect_rejects_bad_files(tmp_path):
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    proc = run_cli("inspect", str(bad))
    assert proc.returncode == 2 and "x.tflite is not a valid TFLite model: no TFL3 file identifier" in proc.stderr
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"\x00\xff" * 100)
    proc = run_cli("inspect", str(bad))
    assert proc.returncode == 2 and "x.onnx is not a valid ONNX model" in proc.stderr


# ---------------------------------------------------------------- every adapter agrees with PyTorch


def _ncnn_from_pnnx(tmp_path: Path):
    """The example converted with pnnx directly, fp32 weights (the ncnn exporter is [H]'s); None without pnnx."""
    import shutil

    import torch

    pnnx = shutil.which("pnnx") or str(Path(sys.executable).parent / "pnnx")
    if not Path(pnnx).is_file():
        return None
    module = torch.export.load(str(EXAMPLE)).module()
    ts = tmp_path / "digits.pt"
    torch.jit.trace(module, torch.zeros(1, 1, 8, 8)).save(str(ts))
    subprocess.run([pnnx, str(ts), "inputshape=[1,1,8,8]", "fp16=0"], cwd=tmp_path, capture_output=True, check=True, timeout=120)
    return tmp_path / "digits.ncnn.param"


@pytest.mark.parametrize("runtime, artifact, optimize", [
    ("onnxruntime", "digits_cnn.fp32.onnx", True), ("onnxruntime", "digits_cnn.fp32.onnx", False),
    ("litert", "digits_cnn.fp32.tflite", True), ("litert", "digits_cnn.fp32.tflite", False),
    ("ncnn", None, True), ("ncnn", None, False),
])
def test_adapter_agrees_with_torch(export_dir, tmp_path, runtime, artifact, optimize):
    if runtime not in ADAPTERS:
        pytest.skip(f"no {runtime} adapter on this branch ([H] adds runtimes/ncnn.py)")
    ref_session = get_runtime("torch").load(EXAMPLE)
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    ref = ref_session.run({"x": x})["output_0"]
    path = export_dir / artifact if artifact else _ncnn_from_pnnx(tmp_path)
    if path is None:
        pytest.skip("pnnx is not installed (pip install 'edgepack[ncnn-export]')")
    session = get_runtime(runtime).load(path, threads=1, optimize=optimize)
    (inp,) = session.inputs
    feed = x.transpose(0, 2, 3, 1) if inp["shape"] == [1, 8, 8, 1] else x
    assert inp["dtype"] == "float32" and inp["shape"] in (None, list(feed.shape))
    (out,) = session.run({inp["name"]: feed}).values()
    assert out.shape == ref.shape == (1, 10)
    if runtime == "ncnn" and optimize:  # ncnn's defaults store weights/activations in fp16 where the CPU can
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-2 * np.abs(ref).max())
    else:
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_litert_falls_back_to_tflite_runtime(export_dir, monkeypatch):
    """On a device with only `tflite-runtime`, the LiteRT adapter uses its interpreter (simulated:
    ai_edge_litert made unimportable, a tflite_runtime package exposing the same Interpreter class)."""
    import types

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    fake = types.ModuleType("tflite_runtime")
    fake_interpreter = types.ModuleType("tflite_runtime.interpreter")
    fake_interpreter.Interpreter = type("Interpreter", (Interpreter,), {"__module__": "tflite_runtime.interpreter"})
    fake_interpreter.OpResolverType = OpResolverType
    fake.interpreter = fake_interpreter
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake_interpreter)
    runtime = get_runtime("litert")
    assert runtime.version() == "tflite-runtime unknown"  # the package is simulated, so no version metadata
    for optimize in (True, False):
        session = runtime.load(export_dir / "digits_cnn.fp32.tflite", threads=1, optimize=optimize)
        assert type(session._it).__module__ == "tflite_runtime.interpreter"
        (out,) = session.run({"x": np.zeros((1, 8, 8, 1), np.float32)}).values()
        assert out.shape == (1, 10) and np.isfinite(out).all()


def test_a_missing_runtime_is_reported_and_the_others_still_work(export_dir, tmp_path):
    """A board without LiteRT (no wheel for it): .tflite is a clear exit-2 error (a runtime failure), .onnx still benches."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked={"ai_edge_litert", "tflite_runtime"}))
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_cli("bench", str(export_dir / "digits_cnn.fp32.tflite"), "--runs", "3", env=env)
    assert proc.returncode == 2
    assert "litert is not installed" in proc.stderr and "pip install ai-edge-litert" in proc.stderr
    proc = run_cli("bench", str(export_dir / "digits_cnn.fp32.onnx"), "--runs", "3", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["runtime"] == "onnxruntime"


def test_export_dir_with_a_corrupt_artifact(export_dir, tmp_path):
    """The others are still measured; the broken one gets `bench_error` (never a half-filled `bench`)."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(export_dir, out)
    report = json.loads((out / "report.json").read_text())
    for art in report["artifacts"]:  # a fresh export: no measurement from another test's run
        for key in ("bench", "benches", "bench_error"):
            art.pop(key, None)
    (out / "report.json").write_text(json.dumps(report))
    (out / "digits_cnn.int8.tflite").write_bytes(b"\0" * 64)
    proc = run_cli("bench", str(out), "--runs", "3", "--threads", "1")
    assert proc.returncode == 2
    assert "edgepack: error: digits_cnn.int8.tflite: digits_cnn.int8.tflite is not a valid TFLite model" in proc.stderr
    arts = {a["path"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
    bad = arts.pop("digits_cnn.int8.tflite")
    assert "bench" not in bad and bad["bench_error"]["exit_code"] == 2 and "is not a valid TFLite model" in bad["bench_error"]["error"]
    assert all(a["bench"]["runs"] == 3 and "bench_error" not in a for a in arts.values())
    assert "error: digits_cnn.int8.tflite is not a valid TFLite model" in (out / "report.html").read_text()


def test_a_failed_bench_never_replaces_a_measurement(export_dir, tmp_path):
    """[M] A later failing run (e.g. a board that cannot load the file) keeps the good measurement
    and records the failure beside it, per machine."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(export_dir, out)
    assert run_cli("bench", str(out), "--runs", "3", "--threads", "1").returncode == 0
    before = {a["path"]: a["bench"] for a in json.loads((out / "report.json").read_text())["artifacts"]}
    (out / "digits_cnn.int8.tflite").write_bytes(b"\0" * 64)
    assert run_cli("bench", str(out), "--runs", "3", "--threads", "1").returncode == 2
    arts = {a["path"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
    bad = arts["digits_cnn.int8.tflite"]
    assert bad["bench"] == before["digits_cnn.int8.tflite"]  # the measurement is still there
    assert bad["bench_error"]["exit_code"] == 2 and bad["bench_error"]["machine"].startswith("host:")
    assert list(bad["benches"]) == [bad["bench_error"]["machine"]]
