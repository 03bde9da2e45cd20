"""Wall time of a 12-cell sweep on the digits example, three ways, interleaved in one run:

- serial: what users do today, a shell loop of one `edgepack export` process per cell (each one
  loads, converts, passes and calibrates again, and builds the fp32 artifact it always makes);
- pool: `edgepack sweep` in the local process pool (one conversion, one processed graph per rounding,
  one calibration per graph, shared by the cells);
- ray: the same sweep as Ray tasks on a local Ray cluster (ray.init(num_cpus=JOBS), started before the
  timing: --ray uses an existing cluster), plus the overhead per Ray task (a no-op task's round trip
  through the sweep's executor, against the local pool's).

Grid: precisions fp32, fp16, int8 x formats onnx, tflite x round_channels 1, 4 (12 cells), with
--calib and --eval, target host.

    nice python benchmarks/bench_sweep.py --rounds 1 --jobs 2

Measured on the shared 2-core machine (2026-12-03, one round, load average 13-15 from other
engineers' jobs: the seconds are slow and noisy, the ratio is the point):

    tasks in a sweep: {'convert': 1, 'calibrate': 2, 'build': 12}
    mode       wall s   speed-up vs serial
    serial      463.9                1.00x
    pool         55.8                8.31x
    ray          40.3               11.51x
    overhead per task (no-op round trip): pool 0.48 ms, ray 3.06 ms
    (ray cluster start 17.8 s, not counted)

Most of the win is sharing: each serial export process imports torch, loads the .pt2 and runs the
dynamo ONNX export again (the load + to_onnx steps are ~90% of one digits export's wall time here);
the sweep does that once. Ray's lead over the pool in this run is within the machine's noise (its
worker processes were already started with the cluster; the pool spawns its two at the sweep's start).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples"
PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8"]}


def _sweep_toml(folder: Path) -> Path:
    path = folder / "sweep.toml"
    path.write_text(f'''
models = ["{EX / 'digits_cnn.pt2'}"]
precisions = ["fp32", "fp16", "int8"]
formats = ["onnx", "tflite"]
round_channels = [1, 4]
targets = ["host"]

[export]
calib = "{EX / 'digits_calib.npy'}"
eval_data = "{EX / 'digits_test.npz'}"
''')
    return path


def serial(folder: Path) -> float:
    """One `edgepack export` process per cell, one after the other."""
    exe = str(Path(sys.executable).parent / "edgepack")
    start = time.perf_counter()
    n = 0
    for rounding in (1, 4):
        for precision, flags in PRECISION_FLAGS.items():
            for fmt in ("onnx", "tflite"):
                out = folder / f"serial-{rounding}-{precision}-{fmt}"
                cmd = [exe, "export", str(EX / "digits_cnn.pt2"), "-o", str(out), "--format", fmt, *flags,
                       "--round-channels", str(rounding), "--calib", str(EX / "digits_calib.npy"),
                       "--eval", str(EX / "digits_test.npz"), "--target", "host"]
                subprocess.run(cmd, check=True, capture_output=True)
                n += 1
    assert n == 12
    return time.perf_counter() - start


def pool(folder: Path, jobs: int) -> tuple[float, dict]:
    from edgepack.commands.sweep import sweep

    out = folder / "pool"
    start = time.perf_counter()
    result = sweep(_sweep_toml(folder), out, jobs=jobs)
    return time.perf_counter() - start, result


def ray_sweep(folder: Path) -> tuple[float, dict]:
    from edgepack.commands.sweep import sweep

    out = folder / "ray"
    start = time.perf_counter()
    result = sweep(_sweep_toml(folder), out, ray="auto")
    return time.perf_counter() - start, result


def _noop() -> tuple[dict, None]:
    return {"ok": True}, None


def task_overhead(executor, n: int = 200) -> float:
    """Seconds per no-op task submitted and collected through a sweep executor (workers warm)."""
    for _ in range(4):
        executor.submit(_noop)
    while executor.pending():
        executor.wait(1)
    start = time.perf_counter()
    for _ in range(n):
        executor.submit(_noop)
    while executor.pending():
        executor.wait(1)
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    try:
        import ray
    except ImportError:
        ray = None
    use_ray = ray is not None and not args.no_ray
    if use_ray:
        t = time.perf_counter()
        ray.init(address="local", num_cpus=args.jobs, include_dashboard=False, log_to_driver=False)
        print(f"ray cluster start: {time.perf_counter() - t:.1f} s (not counted: --ray uses a running cluster)")
    times: dict[str, list[float]] = {"serial": [], "pool": [], "ray": []}
    for r in range(args.rounds):
        folder = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
        try:
            times["serial"].append(serial(folder))
            t, res = pool(folder, args.jobs)
            assert res["exit_code"] == 0 and len(res["cells"]) == 12, res["cells"]
            times["pool"].append(t)
            if use_ray:
                t, res_ray = ray_sweep(folder)
                assert res_ray["exit_code"] == 0 and len(res_ray["cells"]) == 12
                times["ray"].append(t)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items() if v), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    from edgepack.commands.sweep_exec import LocalPool, RayExecutor

    lp = LocalPool(args.jobs)
    pool_task = task_overhead(lp)
    lp.close()
    ray_task = None
    if use_ray:
        ex = RayExecutor("auto")
        ray_task = task_overhead(ex)
        ray.shutdown()
    best = {k: min(v) for k, v in times.items() if v}
    print(f"\n12-cell grid (digits: fp32/fp16/int8 x onnx/tflite x round 1/4), {args.jobs} jobs, best of {args.rounds}")
    print(f"tasks in a sweep: {res['tasks_run']}")
    print(f"{'mode':8s} {'wall s':>8s} {'speed-up vs serial':>20s}")
    for k, v in best.items():
        print(f"{k:8s} {v:8.1f} {best['serial'] / v:19.2f}x")
    print(f"overhead per task (no-op round trip): pool {pool_task * 1e3:.2f} ms"
          + (f", ray {ray_task * 1e3:.2f} ms" if ray_task is not None else ""))


if __name__ == "__main__":
    main()
