"""edgepack's TFLite export next to Google's litert-torch, side by side in one run: conversion time,
file size, LiteRT latency (XNNPACK, 1 thread) and error against PyTorch, for a MobileNetV2-sized and
a ResNet-18-sized model with the same weights. Goals for edgepack: fp32 latency 1.0x litert-torch's
or less, conversion at least 2x faster.

litert-torch is never a dependency of edgepack: it lives in a virtual environment of its own, next to
the repo by default (torch first, from the CPU wheel, so pip pulls no CUDA build):

    python3 -m venv ../bench-venv
    ../bench-venv/bin/pip install torch==2.13.0
    ../bench-venv/bin/pip install litert-torch        # 0.10.0 when written; the older name was ai-edge-torch

    python benchmarks/bench_tflite.py [--models mobilenetv2,resnet18] [--rounds 30] [--repeat 3]
                                      [--litert-python ../bench-venv/bin/python] [--keep DIR]

If that python is missing or cannot import litert_torch, the edgepack side still runs and the table
says "litert-torch: not available (reason)".

How each side is timed:
- edgepack: `edgepack.export(..., formats=("tflite",), prune=False)` in this process, which includes
  its verification against PyTorch (the report's `timings_s` shows where the time goes).
- litert-torch: `litert_torch.convert(model, (sample,))` + `.export(path)`, timed inside one subprocess
  of that venv's python after its imports (interpreter start and `import litert_torch` excluded). Both
  sides convert the models in the same order in one process each, so the one-off torch.export warm-up
  lands on the first model on both sides. `--repeat N` converts N times per side and keeps the best
  (the table shows first/best); on a small shared machine the first, cold time is the noisy one.
  With another process busy on a 2-core machine, edgepack's multi-threaded PyTorch reference step
  swung from 0.1 s to 8 s; `OMP_NUM_THREADS=1` (applies to both sides) kept it at 0.1-0.25 s.
- Latency: both files in `ai_edge_litert.interpreter.Interpreter(num_threads=1)` (XNNPACK is its default
  delegate), warmed up, then `--rounds` interleaved rounds (the order flips every round); median
  `invoke()` time. Each model gets its own input layout from `get_input_details()`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {"mobilenetv2": "MobileNetV2", "resnet18": "ResNet18"}
CENSUS_OPS = ("TRANSPOSE", "QUANTIZE", "DEQUANTIZE")
SHAPE = (1, 3, 224, 224)

# Runs in the litert-torch venv. argv: repo root, JSON list of jobs, repeats. Prints one JSON line per
# job: the first and the best of `repeats` conversions (all in this one process, like the edgepack side).
_LITERT_CONVERT = r"""
import time
start = time.perf_counter()
import json, sys, traceback
sys.path.insert(0, sys.argv[1])
import torch
import litert_torch
from benchmarks import zoo
print("INFO " + json.dumps({"version": litert_torch.__version__, "import_s": time.perf_counter() - start}), flush=True)

jobs, repeats = json.loads(sys.argv[2]), int(sys.argv[3])
best = {}
for _ in range(repeats):
    for job in jobs:
        if "error" in best.get(job["name"], {}):
            continue
        try:
            model = getattr(zoo, job["cls"])()
            model.load_state_dict(torch.load(job["weights"], weights_only=True))
            sample = torch.randn(1, 3, 224, 224)
            t0 = time.perf_counter()
            edge = litert_torch.convert(model.eval(), (sample,))
            t1 = time.perf_counter()
            edge.export(job["out"])
            t2 = time.perf_counter()
            r = {"name": job["name"], "convert_s": t1 - t0, "total_s": t2 - t0, "first_s": t2 - t0}
            if job["name"] in best:
                r["first_s"] = best[job["name"]]["first_s"]
            if job["name"] not in best or r["total_s"] < best[job["name"]]["total_s"]:
                best[job["name"]] = r
        except Exception as e:
            best[job["name"]] = {"name": job["name"], "error": f"{type(e).__name__}: {e}",
                                 "trace": traceback.format_exc()[-2000:]}
for r in best.values():
    print("RESULT " + json.dumps(r), flush=True)
"""


def build_model(name: str, seed: int):
    import torch

    from benchmarks import zoo

    torch.manual_seed(seed)
    return zoo.randomize_batchnorm(getattr(zoo, MODELS[name])(), seed=seed)


def convert_edgepack(model, out: Path) -> dict:
    import edgepack

    t = time.perf_counter()
    report = edgepack.export(model, output_dir=out, input_shape="1x3x224x224", formats=("tflite",), prune=False)
    wall = time.perf_counter() - t
    art = report["artifacts"][0]
    path = Path(art["path"]) if Path(art["path"]).is_absolute() else out / art["path"]
    if not art.get("ok", False):
        print(f"  warning: edgepack reports ok=False for {path.name}: {art.get('error')} (exit_code {art.get('exit_code')})")
    return {"path": path, "convert_s": wall, "timings_s": report.get("timings_s", {}), "census": art["op_census"]}


def convert_litert_torch(python: Path, jobs: list[dict], repeats: int) -> tuple[dict[str, dict], dict, str | None]:
    """Returns ({model name: result}, {version, import_s}, None), or ({}, {}, why litert-torch is not available)."""
    if not python.exists():
        return {}, {}, f"no python at {python}; create the venv as the top of benchmarks/bench_tflite.py says"
    t = time.perf_counter()
    proc = subprocess.run([str(python), "-c", _LITERT_CONVERT, str(ROOT), json.dumps(jobs), str(repeats)],
                          check=False, capture_output=True, text=True)
    results, info = {}, {"wall_s": time.perf_counter() - t}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            results[r["name"]] = r
        elif line.startswith("INFO "):
            info.update(json.loads(line[len("INFO "):]))
    if not results:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {}, {}, f"{python} exited {proc.returncode}: {tail[-1] if tail else 'no output'}"
    return results, info, None


def tflite_census(path: Path) -> dict[str, int]:
    """Builtin (or custom) op name -> count over all subgraphs of a .tflite file."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            code = model.OperatorCodes(graph.Operators(o).OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = names.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = f"CUSTOM:{code.CustomCode().decode()}"
            counts[name] = counts.get(name, 0) + 1
    return counts


def _load(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    return interp


def _feed(interp, x_nchw: np.ndarray) -> np.ndarray:
    """The NCHW input as this model wants it: as is, or NHWC."""
    shape = tuple(interp.get_input_details()[0]["shape"])
    if shape == x_nchw.shape:
        return x_nchw
    if shape == tuple(x_nchw.transpose(0, 2, 3, 1).shape):
        return np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    raise SystemExit(f"input shape {shape} is neither NCHW {x_nchw.shape} nor NHWC")


def max_abs_error(interp, x_nchw: np.ndarray, expected: np.ndarray) -> float:
    interp.set_tensor(interp.get_input_details()[0]["index"], _feed(interp, x_nchw))
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    return float(np.abs(got.reshape(expected.shape) - expected).max())


def interleaved_latency(interps: list, x_nchw: np.ndarray, rounds: int, warmup: int = 5) -> list[list[float]]:
    """Per-round invoke() times in ms, one list per interpreter."""
    for interp in interps:
        interp.set_tensor(interp.get_input_details()[0]["index"], _feed(interp, x_nchw))
        for _ in range(warmup):
            interp.invoke()
    times: list[list[float]] = [[] for _ in interps]
    order = list(range(len(interps)))
    for _ in range(rounds):
        for i in order:
            t = time.perf_counter()
            interps[i].invoke()
            times[i].append((time.perf_counter() - t) * 1000)
        order.reverse()
    return times


def _census_text(census: dict[str, int]) -> str:
    return " ".join(f"{op[0] if op != 'DEQUANTIZE' else 'DQ'}={census.get(op, 0)}" for op in CENSUS_OPS) + \
        f" ops={sum(census.values())}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenetv2,resnet18")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved latency rounds (median)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="conversions per model and side, best kept (runs after the first are warm on both sides)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--litert-python", type=Path, default=ROOT.parent / "bench-venv" / "bin" / "python")
    parser.add_argument("--keep", type=Path, help="write the weights and .tflite files here instead of a temp dir")
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")

    import torch

    import edgepack  # noqa: F401  (imported before timing, as the litert-torch side imports first)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        models, jobs = {}, []
        for name in names:
            models[name] = build_model(name, args.seed)
            weights = work / f"{name}.state_dict.pt"
            torch.save(models[name].state_dict(), weights)
            jobs.append({"name": name, "cls": MODELS[name], "weights": str(weights),
                         "out": str(work / f"{name}.litert_torch.tflite")})

        load_before = os.getloadavg()[0]
        print(f"converting with litert-torch ({args.litert_python}) ...", flush=True)
        theirs, info, unavailable = convert_litert_torch(args.litert_python, jobs, args.repeat)
        if unavailable:
            print(f"litert-torch: not available ({unavailable})")
        else:
            print(f"  litert-torch {info.get('version', '?')}: subprocess wall {info['wall_s']:.1f} s, "
                  f"of which interpreter start + imports {info.get('import_s', float('nan')):.1f} s")
        for name, r in theirs.items():
            if "error" in r:
                print(f"  litert-torch failed on {name}: {r['error']}\n{r['trace']}")

        ours: dict[str, dict | None] = {}
        for _ in range(args.repeat):
            for name in names:
                if name in ours and ours[name] is None:
                    continue
                print(f"converting {name} with edgepack ...", flush=True)
                try:
                    r = convert_edgepack(models[name], work / f"{name}.edgepack")
                except Exception as e:  # noqa: BLE001  (report the converter's exact error, go on with the next model)
                    print(f"  edgepack failed on {name}: {type(e).__name__}: {e}")
                    ours[name] = None
                    continue
                print("  timings_s: " + ", ".join(f"{k} {v:.2f}" for k, v in r["timings_s"].items() if v >= 0.01))
                r["first_s"] = ours[name]["first_s"] if name in ours else r["convert_s"]
                if name not in ours or r["convert_s"] < ours[name]["convert_s"]:
                    ours[name] = r

        print(f"1-min load average before / after the conversions: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} cores (other work on the machine skews the convert times, not the interleaved latency)")
        rows = []
        for name, job in zip(names, jobs):
            ep = ours.get(name)
            if ep:
                parsed = tflite_census(ep["path"])
                if parsed != ep["census"]:
                    print(f"  note: {name}: report op_census {ep['census']} differs from the file's {parsed}")
            lt = theirs.get(name)
            if lt and "error" in lt:
                lt = None
            if lt:
                lt["path"] = Path(job["out"])
                lt["census"] = tflite_census(lt["path"])
            x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(args.seed + 1))
            with torch.no_grad():
                expected = models[name](x).numpy()
            x = x.numpy()
            entries = [r for r in (ep, lt) if r]
            interps = [_load(r["path"]) for r in entries]
            for r, interp in zip(entries, interps):
                r["size_mb"] = r["path"].stat().st_size / 1e6
                r["input"] = "x".join(map(str, interp.get_input_details()[0]["shape"]))
                r["err"] = max_abs_error(interp, x, expected)
            for r, times in zip(entries, interleaved_latency(interps, x, args.rounds)):
                r["ms"], r["times"] = statistics.median(times), times
            rows.append((name, ep, lt))

    print(f"\nLiteRT (ai-edge-litert), XNNPACK, 1 thread, median of {args.rounds} interleaved rounds. convert s: first "
          f"(cold) / best of {args.repeat}; edgepack: export() incl. its verification, litert-torch: convert() + export(). "
          f"err: max |tflite - PyTorch| on one input. ratios use the best convert time")
    header = f"{'model':12s} {'converter':13s} {'convert s':>11s} {'size MB':>8s} {'latency ms':>10s} " \
             f"{'max abs err':>11s}  {'edgepack/litert-torch':23s}  {'input':12s} census (T=TRANSPOSE Q=QUANTIZE DQ=DEQUANTIZE)"
    print(header)
    print("-" * len(header))
    for name, ep, lt in rows:
        for label, r in (("edgepack", ep), ("litert-torch", lt)):
            if r is None:
                why = f"not available ({unavailable})" if label == "litert-torch" and unavailable else "failed (see above)"
                print(f"{name:12s} {label:13s} {why}")
                continue
            convert_s = r["convert_s"] if label == "edgepack" else r["total_s"]
            ratio = f"lat {ep['ms'] / lt['ms']:.2f}x conv {ep['convert_s'] / lt['total_s']:.2f}x" \
                if label == "edgepack" and lt else ""
            convert = f"{r['first_s']:.2f}/{convert_s:.2f}" if args.repeat > 1 else f"{convert_s:.2f}"
            print(f"{name:12s} {label:13s} {convert:>11s} {r['size_mb']:8.2f} {r['ms']:10.2f} "
                  f"{r['err']:11.2e}  {ratio:23s}  {r['input']:12s} {_census_text(r['census'])}")
    for name, ep, lt in rows:
        if ep and lt:
            lat, conv = ep["ms"] / lt["ms"], lt["total_s"] / ep["convert_s"]
            q1, _, q3 = statistics.quantiles([a / b for a, b in zip(ep["times"], lt["times"])], n=4)
            noise = " (within noise)" if q1 <= 1.0 <= q3 else ""
            print(f"{name}: latency {lat:.2f}x litert-torch's, per-round ratios IQR {q1:.2f}-{q3:.2f} "
                  f"(goal <= 1.0x: {'met' if lat <= 1.0 else 'missed'}{noise}); "
                  f"conversion {conv:.2f}x as fast (goal >= 2x: {'met' if conv >= 2.0 else 'missed'})")
            only_ep = {k: v - lt["census"].get(k, 0) for k, v in ep["census"].items() if v > lt["census"].get(k, 0)}
            only_lt = {k: v - ep["census"].get(k, 0) for k, v in lt["census"].items() if v > ep["census"].get(k, 0)}
            print(f"  op census difference: edgepack +{only_ep or '{}'}, litert-torch +{only_lt or '{}'}")


if __name__ == "__main__":
    main()
