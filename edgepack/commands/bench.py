"""`edgepack bench`: one artifact, or every artifact of an export folder, measured on this machine
or on a board over SSH with the same runner (`edgepack.runtimes.bench_runner`).

Never imports torch: a board needs numpy and a runtime only."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack import errors
from edgepack.options import opt
from edgepack.errors import UsageError

# The --json keys (also `artifacts[i].bench` in report.json); the runner adds a few more.
JSON_KEYS = ("latency_ms", "peak_rss_mb", "model_rss_mb", "load_ms", "first_run_ms", "runtime", "runtime_version",
             "threads", "runs", "size_bytes")
LATENCY_KEYS = ("p50", "p90", "p99", "mean", "std", "min", "max")


@dataclass(frozen=True)
class BenchOptions:
    """How to measure; the `edgepack bench` flags are derived from these fields (edgepack.options.opt)."""

    threads: int | None = field(default=None, metadata=opt(
        "Runtime threads (default: every CPU available; reported).", kind=int))
    runs: int | None = field(default=None, metadata=opt("Exactly N timed runs.", kind=int))
    min_seconds: float | None = field(default=None, metadata=opt(
        "Time runs for at least S seconds (default 1, >= 10 runs).", kind=float))
    warmup: int = field(default=3, metadata=opt("Untimed runs after the first run.", kind=int))
    input_shapes: tuple[str, ...] = field(default=(), metadata=opt(
        "1x3x224x224 or name:1x3x224x224, for dynamic inputs.", flag="--input-shape", multiple=True, parse=tuple))
    optimize: bool = field(default=True, metadata=opt(
        "ONNX Runtime graph optimizations off; LiteRT without XNNPACK.", off_flag="--no-optimize", is_flag=True))
    timeout_s: float = field(default=600.0, metadata=opt("Seconds per measuring process.", flag="--timeout", kind=float))
    allow_pickle: bool = field(default=False, metadata=opt(
        "A .pt2 (the torch runtime): also load pickled members that fail PyTorch's weights-only check (runs code "
        "from the file: only for files you trust), as `edgepack export --allow-pickle`.", is_flag=True))
    verify: bool = field(default=False, metadata=opt(
        "Also run the export's verification inputs (verify.npz) through the artifact where it runs and hold the "
        "outputs to the artifact's floor (fp16 and int8 numerics of the board checked too).", is_flag=True))

    def __post_init__(self) -> None:
        if self.runs is not None and self.min_seconds is not None:
            raise UsageError("--runs and --min-seconds exclude each other; pass one of them")
        if self.runs is not None and self.runs < 1:
            raise UsageError(f"--runs {self.runs}: must be at least 1")
        if self.min_seconds is not None and not 0 < self.min_seconds < float("inf"):
            raise UsageError(f"--min-seconds {self.min_seconds}: must be a finite number of seconds more than 0")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads {self.threads}: must be at least 1")
        if self.warmup < 0:
            raise UsageError(f"--warmup {self.warmup}: must be 0 or more")
        if not self.timeout_s > 0:
            raise UsageError(f"--timeout {self.timeout_s}: must be more than 0")
        from edgepack.runtimes.bench_runner import RunnerError, parse_shapes

        try:
            parse_shapes(self.input_shapes)
        except RunnerError as exc:
            raise UsageError(str(exc)) from None

    def runner_args(self) -> list[str]:
        """The same options as bench_runner's command line (for --remote)."""
        args = ["--warmup", str(self.warmup), "--timeout", str(self.timeout_s)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        args += ["--runs", str(self.runs)] if self.runs else (["--min-seconds", str(self.min_seconds)] if self.min_seconds else [])
        for s in self.input_shapes:
            args += ["--input-shape", s]
        if not self.optimize:
            args.append("--no-optimize")
        if self.allow_pickle:
            args.append("--allow-pickle")
        return args


def verify_files(path: Path, tmp: Path) -> tuple[Path, Path]:
    """(verify.npz, the artifact's report entry as a JSON file in `tmp`) for `bench --verify`."""
    import json

    from edgepack.report import report_beside

    report, entry = report_beside(path)
    npz = path.parent / ((report.get("verification") or {}).get("file") or "verify.npz")
    if entry is None or not npz.is_file():
        raise UsageError(f"--verify needs the export folder of {path.name} (its report.json and verify.npz beside it); "
                         "bench the artifact where `edgepack export` wrote it")
    entry_path = tmp / f"{path.name}.entry.json"
    entry_path.write_text(json.dumps({k: entry.get(k) for k in ("format", "precision", "inputs", "outputs", "fidelity")}))
    return npz, entry_path


def raise_runner_error(error_type: str, message: str) -> None:
    """The runner names an edgepack.errors class (it may have run on a board); raise that class."""
    cls = getattr(errors, error_type, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.EdgepackError)):
        cls = errors.EdgepackError
    raise cls(message)


def bench_artifact(path: Path, options: BenchOptions, *, remote: Any = None, baseline_cache: dict | None = None) -> dict:
    """Benchmark one artifact here, or on `remote` (an edgepack.commands.remote.RemoteHost); returns the
    result dict (JSON_KEYS and more; `device` when remote)."""
    from edgepack.runtimes import runtime_for
    from edgepack.runtimes.bench_runner import RunnerError, benchmark

    path = Path(path)
    runtime = runtime_for(path)
    if not path.is_file():
        raise UsageError(f"artifact {path} not found; pass an .onnx, .tflite or ncnn .param file, or an export folder")
    from edgepack.check_artifact import check_artifact

    check_artifact(path)  # a damaged file: one line saying what is wrong, before any runtime sees it
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgepack-verify-") as tmp:
        verify = verify_files(path, Path(tmp)) if options.verify else None
        if remote is not None:
            return remote.bench(path, runtime, options, verify=verify)
        try:
            return benchmark(path, runtime=runtime, threads=options.threads, runs=options.runs, min_seconds=options.min_seconds,
                             warmup=options.warmup, input_shapes=options.input_shapes, optimize=options.optimize,
                             timeout=options.timeout_s, baseline_cache=baseline_cache, verify=verify,
                             allow_pickle=options.allow_pickle)
        except RunnerError as exc:
            raise_runner_error(exc.error_type, str(exc))
            raise  # unreachable: raise_runner_error always raises


def _with_report_shapes(options: BenchOptions, art: dict) -> BenchOptions:
    """ncnn params do not store input shapes: take them from the export's report unless given."""
    import dataclasses

    shapes = [d.get("shape") for d in art.get("inputs") or []]
    if options.input_shapes or art.get("format") != "ncnn" or not shapes or not all(
            isinstance(s, list) and all(isinstance(x, int) and x > 0 for x in s) for s in shapes):
        return options
    given = tuple(f"{d['name']}:{'x'.join(map(str, d['shape']))}" for d in art["inputs"])
    return dataclasses.replace(options, input_shapes=given)


def bench_export_dir(out_dir: Path, options: BenchOptions, *, remote: Any = None) -> tuple[dict, list[str]]:
    """Benchmark every artifact listed in OUTDIR/report.json; store each result in
    `artifacts[i].bench` (the --json dict, plus `device` when remote) or, when it fails,
    `artifacts[i].bench_error` {error, exit_code}; rewrite report.json; return (report, errors)."""

    from edgepack.report import read_report, write_report

    import platform

    report = read_report(Path(out_dir))
    machine = remote.device if remote is not None else f"host:{platform.node()}"
    failures = []
    cache: dict = {}
    for art in report.get("artifacts", []):
        if not art.get("path"):
            continue  # the export itself failed for this format: nothing to run
        try:
            result = bench_artifact(Path(out_dir) / art["path"], options=_with_report_shapes(options, art), remote=remote,
                                    baseline_cache=cache)
        except errors.EdgepackError as exc:  # a failure never replaces a measurement: it goes beside it
            art["bench_error"] = {"error": str(exc), "exit_code": exc.exit_code, "machine": machine,
                                  **({"device": remote.device} if remote is not None else {})}
            failures.append(f"{art['path']}: {exc}")
            continue
        art.pop("bench_error", None)
        art.setdefault("benches", {})[machine] = result  # one measurement per machine (host or board)
        art["bench"] = result
    write_report(report, out_dir)
    return report, failures
