"""The measuring side of `edgepack bench`: stdlib + numpy + the runtime's adapter, nothing else.

It runs wherever the model runs: on this machine (called by `edgepack.commands.bench`) or on a board (run
over SSH as `python3 -m edgepack.runtimes.bench_runner`, or from the zip that `build_runner_zip`
makes when edgepack is not installed there). Either way the same code measures, so a result means
the same thing everywhere.

`benchmark()` starts two fresh child processes of the same Python:
1. baseline: imports numpy and the runtime, reports its peak resident memory;
2. measure: imports the same, loads the artifact (load time), runs it once (first-run time), runs
   `warmup` more times, then times each run with perf_counter_ns until `runs` runs or
   `min_seconds` have passed, and reports its peak resident memory (VmHWM).
peak minus baseline is what the model itself costs. A runtime that crashes on a bad file kills only
its child; the error comes back as an EdgepackError (LoadError for a file the runtime rejects).

Children print one line `EDGEPACK-BENCH-RESULT {json}` on stdout (runtimes may print their own
lines); `main()` prints the final result the same way. Written by hand because the point is the
measurement protocol itself (fresh processes, baseline, crash isolation), which no benchmark
library offers across ONNX Runtime, LiteRT and ncnn."""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOL = 1  # bumped when the command line or the result keys change; --remote checks it
MARKER = "EDGEPACK-BENCH-RESULT "
MODULE = "edgepack.runtimes.bench_runner"
DEFAULT_MIN_SECONDS = 1.0
MIN_RUNS = 10  # with --min-seconds: never fewer timed runs than this
MAX_RUNS = 100_000  # ... nor more than this
PIP_PACKAGES = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert (or tflite-runtime)", "ncnn": "ncnn", "torch": "torch"}


class RunnerError(Exception):
    """A failure to report: `error_type` names the edgepack.errors class the caller raises (the
    runner may run on a board, so it travels as a name in the JSON)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


# ---------------------------------------------------------------- what the child does


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (Linux VmHWM; elsewhere ru_maxrss), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def parse_shapes(items: Sequence[str]) -> dict[str | None, list[int]]:
    """["1x3x224x224"] or ["name:1x3x224x224", ...] -> {name or None: shape}."""
    out: dict[str | None, list[int]] = {}
    for item in items:
        name, _, dims = item.rpartition(":")
        try:
            shape = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            shape = []
        if not shape or any(d < 1 for d in shape):
            raise RunnerError("UsageError", f"--input-shape {item!r} is not like 1x3x224x224 or name:1x3x224x224")
        out[name or None] = shape
    return out


def make_feeds(inputs: list[dict], shapes: Mapping[str | None, list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random feeds for the session's inputs; --input-shape for any shape the model leaves open."""
    unknown = [k for k in shapes if k is not None and k not in {d["name"] for d in inputs}]
    if unknown:
        raise RunnerError("InputShapeError", f"--input-shape names {unknown}, but the model's inputs are "
                                        f"{[d['name'] for d in inputs]}")
    if None in shapes and len(inputs) > 1:
        raise RunnerError("InputShapeError", f"the model has {len(inputs)} inputs ({', '.join(d['name'] for d in inputs)}): "
                                        "pass --input-shape name:1x3x224x224 for each")
    rng = np.random.default_rng(seed)
    feeds = {}
    for d in inputs:
        shape = shapes.get(d["name"], shapes.get(None)) if shapes else None
        if shape is None:
            shape = d["shape"]
            if shape is None:
                raise RunnerError("InputShapeError", f"the model does not store the shape of input {d['name']!r}; pass "
                                                f"--input-shape {d['name']}:1x3x224x224 (its full shape, batch first)")
            if any(s < 1 for s in shape):
                raise RunnerError("InputShapeError", f"input {d['name']!r} has shape {shape} (-1 = dynamic); pass "
                                                f"--input-shape {d['name']}:1x3x224x224")
        dtype = np.dtype(d["dtype"])
        if dtype.kind == "f":
            feeds[d["name"]] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu" and dtype.itemsize == 1:
            info = np.iinfo(dtype)
            feeds[d["name"]] = rng.integers(info.min, info.max + 1, size=shape).astype(dtype)
        else:  # ids, masks, counts: zeros are valid for all of them
            feeds[d["name"]] = np.zeros(shape, dtype=dtype)
    return feeds


def time_runs(run: Callable[[], Any], *, runs: int | None, min_seconds: float | None, warmup: int) -> np.ndarray:
    """Latencies in ms of `run()` after `warmup` untimed calls: exactly `runs` of them, or as many
    as fit in `min_seconds` (at least MIN_RUNS, at most MAX_RUNS). Only the call itself is inside
    the timed span; times go into a preallocated int64 array (a growing list of Python ints would
    add megabytes to the peak memory being measured)."""
    for _ in range(warmup):
        run()
    clock = time.perf_counter_ns
    times = np.empty(runs or MAX_RUNS, dtype=np.int64)
    deadline = None if runs else clock() + int((min_seconds or DEFAULT_MIN_SECONDS) * 1e9)
    n = 0
    while n < times.size:
        t0 = clock()
        run()
        t1 = clock()
        times[n] = t1 - t0
        n += 1
        if deadline is not None and t1 >= deadline and n >= MIN_RUNS:
            break
    return times[:n] / 1e6


def _load_runtime(name: str) -> tuple[Any, str]:
    from edgepack.runtimes import ADAPTERS, get_runtime

    if name not in ADAPTERS:
        raise RunnerError("UsageError", f"{name} is not available: this edgepack has no {name} adapter "
                                         f"(runtimes here: {', '.join(ADAPTERS)})")
    runtime = get_runtime(name)
    try:
        return runtime, runtime.version()
    except ImportError as exc:
        package = PIP_PACKAGES.get(name, name)
        raise RunnerError("UsageError", f"{name} is not installed in {sys.executable} ({exc}); "
                                              f"install it there: pip install {package}") from None


def child_baseline(args: argparse.Namespace) -> dict:
    _load_runtime(args.runtime)
    return {"peak_rss_mb": peak_rss_mb()}


def child_measure(args: argparse.Namespace) -> dict:
    runtime, version = _load_runtime(args.runtime)
    t0 = time.perf_counter()
    try:
        extra = {"allow_pickle": True} if args.allow_pickle else {}  # (the torch adapter's option)
        session = runtime.load(args.artifact, threads=args.threads, optimize=not args.no_optimize, **extra)
    except Exception as exc:  # noqa: BLE001  (any runtime's own error type: reported as a load error)
        raise RunnerError("LoadError", f"{runtime.name} cannot load {Path(args.artifact).name}: {_first_line(exc)}") from None
    load_ms = (time.perf_counter() - t0) * 1e3
    feeds = make_feeds(session.inputs, parse_shapes(args.input_shape), args.seed)
    t0 = time.perf_counter()
    try:
        session.run(feeds)
    except Exception as exc:  # noqa: BLE001  (any runtime's own error type: reported as a run error)
        raise RunnerError("LoadError", f"{runtime.name} cannot run {Path(args.artifact).name} on inputs "
                                  f"{ {k: list(v.shape) for k, v in feeds.items()} }: {_first_line(exc)}") from None
    first_run_ms = (time.perf_counter() - t0) * 1e3
    latencies = time_runs(lambda: session.run(feeds), runs=args.runs, min_seconds=args.min_seconds, warmup=args.warmup)
    checked = verify_here(args.artifact, args.verify, args.entry, args.threads) if args.verify else None
    return {
        **({"verify": checked} if checked is not None else {}),
        "runtime": runtime.name, "runtime_version": version, "load_ms": load_ms, "first_run_ms": first_run_ms,
        "runs": int(latencies.size), "latency_ms": latency_stats(latencies), "peak_rss_mb": peak_rss_mb(),
        "inputs": [{"name": k, "shape": list(v.shape), "dtype": v.dtype.name} for k, v in feeds.items()],
    }


def verify_here(artifact: str, npz: str, entry_json: str, threads: int | None) -> dict:
    """`bench --verify`: the export's verification inputs (verify.npz) run through the artifact where
    it runs, compared with the reference outputs and held to the artifact's floor (its report entry's
    `fidelity.tolerance`), so numerics that only happen on the board are checked too."""
    from edgepack.runtimes.artifact import artifact_runner
    from edgepack.verify import compare, judge, load_verification, run_all, VerificationSet

    entry = json.loads(Path(entry_json).read_text())
    inputs, refs, edge = load_verification(Path(npz), with_edge=True)
    names = [d["name"] for d in entry["outputs"]]
    if entry.get("precision") != "fp32" and edge:  # quantized artifacts are judged on in-range data
        inputs = {k: v[: len(v) - edge] for k, v in inputs.items()}
        refs = {k: v[: len(v) - edge] for k, v in refs.items()}
    try:
        actual = run_all(artifact_runner(Path(artifact), entry, threads=threads), VerificationSet(inputs, "verify.npz", 0))
    except Exception as exc:  # noqa: BLE001  (any runtime's own error type)
        return {"ok": False, "error": f"cannot run the verification inputs: {_first_line(exc)}"}
    fid = compare([refs[n] for n in names], actual, names)
    fid.pop("per_output", None)
    tolerance = (entry.get("fidelity") or {}).get("tolerance") or {}
    problems = judge(fid, tolerance)
    return {**fid, "samples": len(next(iter(inputs.values()))), "floor": tolerance, "ok": not problems, "problems": problems}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if "onnxruntime" in type(exc).__module__:
        from edgepack.runtimes.ort import ort_message

        text = ort_message(exc)
    return ((text.splitlines() or [type(exc).__name__])[0])[:300]


# ---------------------------------------------------------------- what the parent does


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def artifact_files(path: Path) -> list[Path]:
    """The files an artifact is made of: an ncnn .param needs the .bin beside it."""
    path = Path(path)
    if path.suffix == ".param":
        return [path, path.with_suffix(".bin")]
    return [path]


def latency_stats(latencies: Sequence[float]) -> dict[str, float]:
    a = np.asarray(latencies, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()),
            "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "min": float(a.min()), "max": float(a.max())}


def _archive() -> Path | None:
    """The runner zip this module was imported from, or None for an installed edgepack."""
    return next((p for p in Path(__file__).parents if p.is_file()), None)


def _child_command() -> tuple[list[str], dict[str, str]]:
    """How to start this module in a fresh process (also from inside the zip sent to a board)."""
    env = dict(os.environ)
    archive = _archive()
    if archive is not None:  # running from the runner zip: children import from it too
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(archive), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", MODULE], env


def _run_child(kind: str, argv: list[str], timeout: float) -> dict:
    cmd, env = _child_command()
    try:
        proc = subprocess.run([*cmd, "--child", kind, *argv], check=False, capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunnerError("LoadError", f"the {kind} process did not finish within {timeout:.0f} s (--timeout)") from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            result = json.loads(line[len(MARKER):])
            if "error" in result:
                raise RunnerError(result.get("error_type", "EdgepackError"), result["error"])
            return result
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        what = "crashed" + (f" ({name})" if name else "")
    else:
        what = f"exited with code {proc.returncode}"
    last = (proc.stderr.strip().splitlines() or ["no message"])[-1][:300]
    raise RunnerError("LoadError", f"the runtime {what} in the {kind} process: {last}; the file may be corrupt or unsupported")


def benchmark(artifact: str | Path, *, runtime: str, threads: int | None = None, runs: int | None = None,
              min_seconds: float | None = None, warmup: int = 3, input_shapes: Sequence[str] = (),
              optimize: bool = True, seed: int = 0, timeout: float = 600.0,
              baseline_cache: dict | None = None, verify: tuple[str, str] | None = None,
              allow_pickle: bool = False) -> dict:
    """Benchmark one artifact in fresh child processes and return the result dict (the `--json`
    keys). Raises RunnerError; `edgepack.commands.bench` turns it into the EdgepackError it names.
    `baseline_cache` (runtime -> MiB) lets a caller benchmarking several artifacts measure the
    runtime-only baseline once per runtime."""
    path = Path(artifact)
    files = artifact_files(path)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise RunnerError("UsageError", f"artifact file(s) not found: {', '.join(missing)}")
    threads = threads or default_threads()
    load = _load_average()  # before our own children add to it
    argv = [str(Path(path).absolute()), "--runtime", runtime, "--threads", str(threads), "--warmup", str(warmup), "--seed", str(seed)]
    argv += ["--runs", str(runs)] if runs else ["--min-seconds", str(min_seconds or DEFAULT_MIN_SECONDS)]
    for s in input_shapes:
        argv += ["--input-shape", s]
    if not optimize:
        argv.append("--no-optimize")
    if allow_pickle:
        argv.append("--allow-pickle")
    if verify is not None:
        argv += ["--verify", str(verify[0]), "--entry", str(verify[1])]
    cache = baseline_cache if baseline_cache is not None else {}
    if runtime not in cache:
        cache[runtime] = _run_child("baseline", argv, timeout)["peak_rss_mb"]
    measured = _run_child("measure", argv, timeout)
    baseline, peak = cache[runtime], measured["peak_rss_mb"]
    return {
        "artifact": path.name,
        "size_bytes": sum(f.stat().st_size for f in files),
        "runtime": measured["runtime"],
        "runtime_version": measured["runtime_version"],
        "threads": threads,
        "optimize": optimize,
        "runs": measured["runs"],
        "warmup": warmup,
        "latency_ms": measured["latency_ms"],
        "load_ms": measured["load_ms"],
        "first_run_ms": measured["first_run_ms"],
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline,
        "model_rss_mb": None if peak is None or baseline is None else max(peak - baseline, 0.0),
        "inputs": measured["inputs"],
        **({"verify": measured["verify"]} if "verify" in measured else {}),
        "host": {"hostname": platform.node(), "platform": f"{platform.system()}-{platform.machine()}",
                 "python": platform.python_version(), "cpus": default_threads(), "load_avg_1m": load},
        "runner": "sent" if _archive() is not None else "installed",
        **({"load_warning": busy} if (busy := load_warning(load, default_threads(), threads)) else {}),
    }


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def load_warning(load: float | None, cpus: int, threads: int) -> str | None:
    """Why the figures are unreliable when other processes already keep the cores busy: the
    measurement's threads then wait for CPU time (p99 grows 10-30x on a loaded 2-core machine)."""
    if load is None or load + threads <= cpus + 0.5:
        return None
    return (f"the 1-minute load average was {load:.1f} on {cpus} CPU(s) before measuring with {threads} thread(s): "
            "other processes compete for the cores, so these latencies are unreliable; measure on a quiet machine "
            "or with fewer --threads")


# ---------------------------------------------------------------- the zip sent to a board


def runner_modules() -> list[str]:
    """Modules the runner needs on a board: this one, the runtime protocol and every adapter but torch."""
    from edgepack.runtimes import ADAPTERS

    adapters = [spec.partition(":")[0] for name, spec in ADAPTERS.items() if name != "torch"]
    return ["edgepack", "edgepack.errors", "edgepack.fsutil", "edgepack.verify", "edgepack.runtimes",
            "edgepack.runtimes.artifact", MODULE, *adapters]


def build_runner_zip(dest: Path) -> Path:
    """A zip holding the runner and what it imports from edgepack (stdlib + numpy + runtime beyond
    that); `python3 dest.zip ARGS` runs it."""
    import importlib.util

    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in runner_modules():
            origin = Path(importlib.util.find_spec(name).origin)
            arcname = name.replace(".", "/") + ("/__init__.py" if origin.name == "__init__.py" else ".py")
            zf.writestr(arcname, origin.read_text())
        zf.writestr("__main__.py", f"from {MODULE} import main\nraise SystemExit(main())\n")
    return dest


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=MODULE, description="edgepack's benchmark runner (see edgepack bench)")
    p.add_argument("artifact")
    p.add_argument("--runtime", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--min-seconds", type=float, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--input-shape", action="append", default=[])
    p.add_argument("--no-optimize", action="store_true")
    p.add_argument("--allow-pickle", action="store_true", help="a .pt2: load pickled members that fail the weights-only check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--child", choices=["baseline", "measure"], default=None)
    p.add_argument("--verify", default=None, help="an export's verify.npz: check the outputs against its references")
    p.add_argument("--entry", default=None, help="with --verify: the artifact's report.json entry (JSON file)")
    p.add_argument("--protocol", action="store_true", help="print the runner protocol version and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv == ["--protocol"]:
        print(PROTOCOL)
        return 0
    args = _parser().parse_args(argv)
    try:
        if args.child == "baseline":
            result = child_baseline(args)
        elif args.child == "measure":
            result = child_measure(args)
        else:
            from edgepack.runtimes import runtime_for

            result = benchmark(args.artifact, runtime=args.runtime or runtime_for(args.artifact), threads=args.threads,
                               runs=args.runs, min_seconds=args.min_seconds, warmup=args.warmup,
                               input_shapes=args.input_shape, optimize=not args.no_optimize, seed=args.seed,
                               timeout=args.timeout, verify=(args.verify, args.entry) if args.verify else None)
    except RunnerError as exc:
        result = {"error": str(exc), "error_type": exc.error_type}
    except Exception as exc:  # noqa: BLE001  an EdgepackError from runtime_for/get_runtime, or a bug: still one JSON line
        result = {"error": _first_line(exc), "error_type": type(exc).__name__}
    print(MARKER + json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
