"""edgepack sweep on the digits example: 2 precisions x 2 formats x 2 targets in the local pool, a
second model whose file is damaged (its cells fail, one line each, exit non-zero), the user's metric
(file.py:function), resumption (a second run redoes nothing), Pareto/recommendation rules; heavy:
the same grid on Ray (ray.init with 2 CPUs, and a two-node cluster from `ray start`), identical to
the pool, and a killed worker's cell retried."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgepack.cli import main
from edgepack.commands.sweep import Constraints, load_sweep, pareto, recommend, sweep
from edgepack.errors import UsageError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DIGITS_ONNX = Path(__file__).resolve().parent / "data" / "artifacts" / "digits_cnn.fp32.onnx"
METRIC = '''
import numpy as np

def top1(outputs, labels):
    """A user metric: top-1 of the first output, written independently of edgepack."""
    return float((outputs[0].argmax(-1) == labels).mean())
'''
CRASH_ONCE = '''
import os
import numpy as np

def top1(outputs, labels):
    """Kills its worker process on its second call anywhere (the first scores the reference model in the
    conversion task; the second is a cell's evaluation); a file next to it counts the calls."""
    calls = os.path.join(os.path.dirname(__file__), "calls")
    with open(calls, "a") as f:
        f.write("x")
    if os.path.getsize(calls) == 2:
        os._exit(9)
    return float((outputs[0].argmax(-1) == labels).mean())
'''


def _write_sweep(folder: Path, models: list[str], metric_source: str = METRIC) -> Path:
    (folder / "metric.py").write_text(metric_source)
    text = f'''
models = {json.dumps(models)}
precisions = ["fp32", "int8"]
formats = ["onnx", "tflite"]
targets = ["host", "rpi4"]

[export]
calib = "{EXAMPLES / 'digits_calib.npy'}"
eval_data = "{EXAMPLES / 'digits_test.npz'}"
eval_metric = "metric.py:top1"

[constraints]
min_accuracy = 0.95
'''
    path = folder / "sweep.toml"
    path.write_text(text)
    return path


def _ort_top1(path: Path) -> float:
    """Top-1 of an ONNX artifact on the eval data, run here in ONNX Runtime (not through edgepack)."""
    import onnxruntime as ort

    data = np.load(EXAMPLES / "digits_test.npz")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    batch = sess.get_inputs()[0].shape[0]
    preds = [sess.run(None, {name: data["x"][i : i + batch].astype(np.float32)})[0].argmax(-1)
             for i in range(0, len(data["x"]) // batch * batch, batch)]
    return float((np.concatenate(preds) == data["y"][: len(np.concatenate(preds))]).mean())


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory):
    """The grid run once through the CLI (exit code) in a local pool of one process (the default suite's CPU
    budget: the 2-process pool runs in the heavy crash test and benchmarks/bench_sweep.py), then again."""
    folder = tmp_path_factory.mktemp("sweep")
    # the digits CNN as ONNX (its fp32 export, kept in tests/data) keeps this default-suite test off torch;
    # the heavy tests and benchmarks/bench_sweep.py sweep the .pt2 itself
    shutil.copy(DIGITS_ONNX, folder / "digits_cnn.onnx")
    (folder / "broken.pt2").write_bytes(b"PK\x03\x04 not a zip archive")
    spec = _write_sweep(folder, ["digits_cnn.onnx", "broken.pt2"])
    out = folder / "out"
    code = main(["sweep", str(spec), "-o", str(out), "--jobs", "1"])
    first = json.loads((out / "sweep.json").read_text())
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    second = sweep(spec, out, jobs=2)
    return {"code": code, "first": first, "second": second, "out": out, "mtimes": mtimes, "folder": folder}


def test_grid_results_shared_work_and_failed_model(pool_run):
    first, out = pool_run["first"], pool_run["out"]
    ok = [c for c in first["cells"] if c["status"] == "ok"]
    failed = [c for c in first["cells"] if c["status"] != "ok"]
    assert len(ok) == 4 and len(failed) == 4
    assert {(c["cell"]["precision"], c["cell"]["format"]) for c in ok} == {
        ("fp32", "onnx"), ("fp32", "tflite"), ("int8", "onnx"), ("int8", "tflite")}
    assert all(c["cell"]["model"].endswith("digits_cnn.onnx") for c in ok)
    # one conversion per model, one calibration for both int8 cells, one build per cell
    assert first["tasks_run"] == {"convert": 2, "calibrate": 1, "build": 4}
    # the damaged model: one line per cell, the load error's exit code, the sweep exits non-zero
    assert all("broken.pt2" in c["error"] and "\n" not in c["error"] and c["exit_code"] == 2 for c in failed), failed[0]
    assert pool_run["code"] == first["exit_code"] == 2
    for c in ok:
        folder = out / "cells" / c["id"]
        report = json.loads((folder / "report.json").read_text())
        assert report["artifacts"][0]["ok"] and (folder / report["artifacts"][0]["path"]).is_file()
        assert (folder / "verify.npz").is_file()
        assert (folder / "calibration.json").is_file() == (c["cell"]["precision"] == "int8")
        acc = c["artifact"]["accuracy"]
        assert acc["metric"].endswith("metric.py:top1") and acc["samples"] == 360
        if c["cell"]["format"] == "onnx":  # the user's metric on the artifact = top-1 measured here in ORT
            assert acc["value"] == pytest.approx(_ort_top1(folder / c["artifact"]["path"]), abs=1e-9)
        assert acc["value"] >= 0.97
        est = c["estimates"]
        assert set(est) == {"host", "rpi4"} and 0 < est["host"]["latency_ms"] < est["rpi4"]["latency_ms"]
    # int8 artifacts are smaller than fp32 ones of the same format
    size = {(c["cell"]["precision"], c["cell"]["format"]): c["artifact"]["size_bytes"] for c in ok}
    assert size[("int8", "onnx")] < 0.6 * size[("fp32", "onnx")] and size[("int8", "tflite")] < 0.6 * size[("fp32", "tflite")]
    # recommended per target: the fastest cell reaching min_accuracy 0.95
    for target, t in first["targets"].items():
        fastest = min(p["latency_ms"] for p in t["points"])
        best = next(p for p in t["points"] if p["cell"] == t["recommended"])
        assert best["latency_ms"] == fastest and "int8" in best["cell"]
    html = (out / "sweep.html").read_text()
    assert html.count("<svg") == 4 and "&#9733;" in html


def test_second_run_redoes_nothing(pool_run):
    second = pool_run["second"]
    assert second["tasks_run"] == {"convert": 0, "calibrate": 0, "build": 0}
    assert second["reused"] == 8 and second["exit_code"] == 2
    now = {p: p.stat().st_mtime_ns for p in (pool_run["out"] / "cells").rglob("*") if p.is_file() and p.name != "cell.json"}
    assert now == {p: m for p, m in pool_run["mtimes"].items() if p.name != "cell.json"}


def test_pareto_and_recommendation_rules():
    pts = [{"cell": n, "accuracy": a, "latency_ms": lat, "size_mb": s, "metric": "top1", "fits_memory": True}
           for n, a, lat, s in (("a", 0.99, 10.0, 4.0), ("b", 0.97, 5.0, 1.0), ("c", 0.96, 6.0, 0.5), ("d", 0.90, 1.0, 2.0))]
    assert pareto(pts, "latency_ms") == ["a", "b", "d"]  # c: b is faster and more accurate
    assert pareto(pts, "size_mb") == ["a", "b", "c"]  # d: c is smaller and more accurate
    assert recommend(pts, Constraints(min_accuracy=0.95))[0] == "b"
    assert recommend(pts, Constraints(max_latency_ms=5.5))[0] == "b"
    assert recommend(pts, Constraints(max_size_mb=0.8))[0] == "c"
    assert recommend(pts, Constraints(min_accuracy=0.999))[0] is None


def test_sweep_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "s.toml"
    for text, needle in (('models = ["m.pt2"]\nprecision = ["fp32"]', "unknown key(s) ['precision']"),
                         ('models = ["m.pt2"]\nformats = ["coreml"]', "['coreml'] unknown"),
                         ('models = ["m.pt2"]\n[export]\ntarget = "rpi4"', "sweep axes"),
                         ('precisions = ["fp32"]', "no models")):
        bad.write_text(text)
        with pytest.raises(UsageError, match=None) as err:
            load_sweep(bad)
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_eval_metric_with_two_inputs():
    """EvalSet feeds every input batch by batch and hands the user's metric all outputs at once."""
    from edgepack.artifacts import EvalSet

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal((6, 3)).astype(np.float32)
    y = (a + b).sum(-1)
    seen = []

    def metric(outputs, labels):
        seen.append(outputs[0].shape)
        return float(np.abs(outputs[0][:, 0] - labels).max())

    ev = EvalSet(Path("e.npz"), a, y, "a", (2, 3), metric="m:f", metric_fn=metric, more_inputs={"b": (b, (2, 3))})
    value = ev.accuracy(lambda feed: [(feed["a"] + feed["b"]).sum(-1, keepdims=True)])
    assert seen == [(6, 1)] and value == pytest.approx(0.0, abs=1e-6)
    assert ev.entry(value) == {"metric": "m:f", "value": value, "samples": 6}


def test_eval_metric_option_and_errors(tmp_path):
    """--eval-metric is an export option (the CLI flag is derived from it); bad metrics are one line."""
    from edgepack.evaluate import load_metric, score
    from edgepack.options import ExportOptions

    with pytest.raises(UsageError, match="needs --eval"):
        ExportOptions.create("o", eval_metric="m:f")
    assert ExportOptions.create("o", eval_data="e.npz", eval_metric="m:f").verify.eval_metric == "m:f"
    (tmp_path / "m.py").write_text("def f(outputs, labels):\n    return 'high'\n\ndef g(outputs, labels):\n    raise KeyError(3)\n")
    with pytest.raises(UsageError, match="returned str, not a number"):
        score("m.py:f", load_metric(f"{tmp_path / 'm.py'}:f"), [], np.zeros(1))
    with pytest.raises(UsageError, match="raised KeyError: 3"):
        score("m.py:g", load_metric(f"{tmp_path / 'm.py'}:g"), [], np.zeros(1))
    with pytest.raises(UsageError, match="has no function 'h'"):
        load_metric(f"{tmp_path / 'm.py'}:h")


@pytest.mark.heavy  # imports Ray and waits for a connection that cannot come
def test_ray_address_nothing_answers_is_one_line(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'edgepack[sweep]')")
    spec = _write_sweep(tmp_path, [str(DIGITS_ONNX)])
    start = time.perf_counter()
    with pytest.raises(UsageError, match="no Ray cluster answers at 127.0.0.1:9"):
        sweep(spec, tmp_path / "out", ray="127.0.0.1:9")
    assert time.perf_counter() - start < 30


# ---------------------------------------------------------------- heavy: crashes and Ray


def _cells_by_id(result: dict) -> dict:
    return {c["id"]: c for c in result["cells"]}


def _same_results(a: dict, b: dict) -> None:
    """Identical verification, accuracy and artifact bytes cell by cell."""
    ca, cb = _cells_by_id(a), _cells_by_id(b)
    assert set(ca) == set(cb)
    for cid, x in ca.items():
        y = cb[cid]
        assert x["status"] == y["status"]
        if x["status"] != "ok":
            continue
        assert x["artifact"]["accuracy"] == y["artifact"]["accuracy"]
        assert x["artifact"]["fidelity"]["cosine"] == y["artifact"]["fidelity"]["cosine"]
        assert [f["sha256"] for f in x["artifact"]["files"]] == [f["sha256"] for f in y["artifact"]["files"]]
    assert {t: v["recommended"] for t, v in a["targets"].items()} == {t: v["recommended"] for t, v in b["targets"].items()}


@pytest.mark.heavy
def test_pool_worker_killed_once_is_retried(tmp_path):
    spec = _write_sweep(tmp_path, [str(EXAMPLES / "digits_cnn.pt2")], CRASH_ONCE)
    result = sweep(spec, tmp_path / "out", jobs=2)
    assert result["exit_code"] == 0 and all(c["status"] == "ok" for c in result["cells"])
    assert sorted(c["attempts"] for c in result["cells"]) == [1, 1, 1, 2]  # the cell whose worker died ran twice
    assert len(result["crashes"]) == 1 and result["crashes"][0]["kind"] == "build"
    assert "worker process died (exit code 9)" in result["crashes"][0]["why"]


def _ray():
    return pytest.importorskip("ray", reason="Ray is not installed (pip install 'edgepack[sweep]')")


@pytest.mark.heavy
def test_ray_local_matches_pool_and_retries_killed_worker(pool_run, tmp_path):
    ray = _ray()
    spec = _write_sweep(pool_run["folder"], ["digits_cnn.onnx", "broken.pt2"])
    try:
        result = sweep(spec, tmp_path / "ray-out", ray="local", ray_init={"num_cpus": 2, "include_dashboard": False})
    finally:
        ray.shutdown()
    assert result["where"].startswith("Ray cluster (1 node(s), 2 CPU(s))")
    assert result["tasks_run"] == {"convert": 2, "calibrate": 1, "build": 4}
    _same_results(pool_run["first"], result)
    assert result["exit_code"] == 2
    # a worker killed once: its cell retried and verified
    crash = tmp_path / "crash"
    crash.mkdir()
    spec = _write_sweep(crash, [str(EXAMPLES / "digits_cnn.pt2")], CRASH_ONCE)
    try:
        result = sweep(spec, crash / "out", ray="local", ray_init={"num_cpus": 2, "include_dashboard": False})
    finally:
        ray.shutdown()
    assert result["exit_code"] == 0 and sorted(c["attempts"] for c in result["cells"]) == [1, 1, 1, 2]
    assert len(result["crashes"]) == 1 and result["crashes"][0]["kind"] == "build"
    assert "Ray worker died" in result["crashes"][0]["why"]


def _ray_node(ray_bin: str, args: list[str], env: dict) -> subprocess.Popen:
    """One Ray node in the foreground (--block), in its own process group: stopped by its id afterwards."""
    return subprocess.Popen([ray_bin, "start", "--block", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.heavy
def test_ray_two_node_cluster_matches_pool(pool_run, tmp_path):
    """`edgepack sweep --ray ADDRESS` (its own process, as a user runs it) on a head node and one worker
    node started here with `ray start`, stopped afterwards by their process ids."""
    _ray()
    ray_bin = str(Path(sys.executable).parent / "ray")
    # Ray >= 2.5x turns token authentication on; this throwaway cluster on one machine runs without it
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    address = "127.0.0.1:6391"
    nodes = [_ray_node(ray_bin, ["--head", "--port=6391", "--num-cpus=1", "--include-dashboard=false"], env)]
    try:
        deadline = time.time() + 180
        while subprocess.run([ray_bin, "status", f"--address={address}"], env=env, capture_output=True).returncode:
            assert time.time() < deadline, "the Ray head did not start in 180 s"
            time.sleep(2)
        nodes.append(_ray_node(ray_bin, [f"--address={address}", "--num-cpus=1"], env))
        while subprocess.run([ray_bin, "status", f"--address={address}"], env=env, capture_output=True,
                             text=True).stdout.count(" node_") < 2:
            assert time.time() < deadline, "the Ray worker node did not join in 180 s"
            time.sleep(2)
        spec = _write_sweep(pool_run["folder"], ["digits_cnn.onnx", "broken.pt2"])
        out = tmp_path / "out"
        run = subprocess.run([str(Path(sys.executable).parent / "edgepack"), "sweep", str(spec), "-o", str(out),
                              "--ray", address], env=env, capture_output=True, text=True, timeout=1200)
        assert run.returncode == 2, run.stderr[-2000:]
        result = json.loads((out / "sweep.json").read_text())
        assert result["where"] == "Ray cluster (2 node(s), 2 CPU(s))"
        assert result["tasks_run"] == {"convert": 2, "calibrate": 1, "build": 4} and not result["crashes"]
        _same_results(pool_run["first"], result)
    finally:
        for proc in reversed(nodes):
            _stop(proc)
        current = Path("/tmp/ray/ray_current_cluster")  # `ray stop` would remove it: a later --ray auto must not find it
        if current.is_file() and current.read_text().strip().endswith(":6391"):
            current.unlink()
