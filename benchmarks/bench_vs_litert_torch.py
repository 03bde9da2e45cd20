"""`edgepack export MODEL --format tflite` end to end against litert-torch's `convert()`, side by side.

edgepack runs as a user runs it: a fresh process (start-up, `import torch`, load, reference,
conversion, verification, report). litert-torch runs in its own venv (made here, never a product
dependency) in a fresh process per measurement, and only its in-process conversion is timed: for
fp32 `litert_torch.convert(module, args)`; for int8 the PT2E flow (torch.export, prepare_pt2e with
litert-torch's symmetric per-channel quantizer, 32 calibration forward passes, convert_pt2e,
`litert_torch.convert(..., quant_config=...)`). Imports are not counted for it. Both convert the
same module: torchvision's mobilenet_v2 / resnet18 (weights=None, seed 0), which edgepack reads
as the `.pt2` saved from it and litert-torch rebuilds from the saved state dict. edgepack's int8
gets `--int8 --calib` with 40 samples (8 held out for verification, 32 for calibration); like
a user's `--int8` run it builds and verifies the fp32 artifact too.

Measurements are interleaved (per model and precision: edgepack then litert-torch, the order
swapped every round), quiet and then under a synthetic load of two busy-loop processes. The table
gives seconds and edgepack / litert-torch; below it, where edgepack's time went (report.json
`timings_s`, and "start" = process wall time outside run_export: interpreter start, imports).

    PYTHONPATH=/work/shared/tools/torchvision-cpu-shim python benchmarks/bench_vs_litert_torch.py \
        [--venv ~/.cache/edgepack-bench/litert-torch] [--rounds 1] [--models mobilenet_v2,resnet18] \
        [--precisions fp32,int8] [--loads quiet,busy]

The venv is made with `pip install litert-torch torch==2.13.0 torchvision==0.28.0` (torchvision
needs the CPU shim on PYTHONPATH there too). If pip cannot install it, the script prints what pip
said and measures edgepack alone against the figures quoted in issue 21.

Measured on the shared 2-core host (7 other engineers' jobs: load average 15-24 even "quiet"), one
round each, `nice`d; edgepack seconds / litert-torch seconds = ratio:

| model | precision | load | load avg | edgepack s | litert-torch s | ratio |
|---|---|---|---|---|---|---|
| MobileNetV2 | fp32 | quiet | 14.9 | 57.0 | 69.2 | 0.82 |
| ResNet-18 | fp32 | quiet | 16.8 | 56.5 | 45.9 | 1.23 |
| MobileNetV2 | fp32 | busy | 23.2 | 273.4 | 295.8 | 0.92 (before the background deflate) |
| ResNet-18 | fp32 | busy | 19.7 | 229.7 | 113.9 | 2.02 (before the background deflate) |
| MobileNetV2 | int8 | quiet | 16.4 | 90.5 | 364.3 | 0.25 |
| ResNet-18 | int8 | quiet | 18.1 | 162.8 | 314.5 | 0.52 (before the background deflate) |

Where ResNet-18 fp32's time went (quiet row): start/imports 12.4, load 13.1, reference 3.1,
to_onnx 15.4, passes 0.7, tflite fp32 5.5, estimate (incl. the deflated-size wait) 5.6 s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALIB_SAMPLES = 32
# issue 21's figures (2-core host, load average 4-6): (fp32, int8) seconds, low-high
ISSUE_LITERT = {"mobilenet_v2": ((8, 22), (97, 145)), "resnet18": ((9, 9), (58, 73))}
ISSUE_EDGEPACK = {"mobilenet_v2": ((28, 36), (24, 30)), "resnet18": ((26, 31), (37, 42))}

_LITERT_WORKER = r"""
import json, sys, time
import torch, torchvision
import litert_torch
name, state, precision, out = sys.argv[1:5]
model = getattr(torchvision.models, name)(weights=None).eval()
model.load_state_dict(torch.load(state, weights_only=True))
args = (torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)),)
if precision == "int8":
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e import quantize_pt2e
    calib = torch.randn(%d, 1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
start = time.perf_counter()
if precision == "fp32":
    edge = litert_torch.convert(model, args)
else:
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    m = quantize_pt2e.prepare_pt2e(torch.export.export(model, args).module(), quantizer)
    with torch.no_grad():
        for x in calib:
            m(x)
    m = quantize_pt2e.convert_pt2e(m, fold_quantize=False)
    edge = litert_torch.convert(m, args, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
seconds = time.perf_counter() - start
edge.export(out)
print("RESULT " + json.dumps({"seconds": seconds}))
""" % CALIB_SAMPLES


def make_venv(venv: Path) -> str | None:
    """litert-torch's own venv; None when ready, else what pip said."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import litert_torch, torchvision"]
    if py.exists() and subprocess.run(probe, capture_output=True, env=_env()).returncode == 0:
        return None
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    cmd = [str(py), "-m", "pip", "install", "-q", "litert-torch", "torch==2.13.0", "torchvision==0.28.0"]
    print("installing litert-torch:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        said = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
        return "\n".join(said[-15:])
    check = subprocess.run(probe, capture_output=True, text=True, env=_env())
    return None if check.returncode == 0 else check.stderr.strip().splitlines()[-1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "/work/shared/tools/torchvision-cpu-shim")}


def make_models(folder: Path, names: list[str]) -> None:
    import numpy as np
    import torch
    import torchvision

    for name in names:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        torch.export.save(torch.export.export(model, (torch.randn(1, 3, 224, 224),)), str(folder / f"{name}.pt2"))
        torch.save(model.state_dict(), folder / f"{name}.state.pt")
    calib = np.random.default_rng(0).standard_normal((CALIB_SAMPLES + 8, 3, 224, 224)).astype(np.float32)
    np.save(folder / "calib.npy", calib)


def run_edgepack(folder: Path, name: str, precision: str) -> dict:
    out = folder / f"out-{name}-{precision}"
    cmd = [sys.executable, "-m", "edgepack", "export", str(folder / f"{name}.pt2"), "--format", "tflite", "-o", str(out)]
    if precision == "int8":
        cmd += ["--int8", "--calib", str(folder / "calib.npy"), "--calib-samples", str(CALIB_SAMPLES)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"edgepack failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    if not all(a["ok"] for a in report["artifacts"]):
        raise SystemExit(f"edgepack artifact not verified: {' '.join(cmd)}")
    return {"seconds": wall, "timings": report["timings_s"], "threads": report.get("threads")}


def run_litert(venv: Path, folder: Path, name: str, precision: str) -> dict:
    cmd = [str(venv / "bin" / "python"), "-c", _LITERT_WORKER, name, str(folder / f"{name}.state.pt"), precision,
           str(folder / f"litert-{name}-{precision}.tflite")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-3:]
        return {"seconds": None, "error": " / ".join(tail)}
    return json.loads(lines[-1][len("RESULT "):])


class BusyLoad:
    """Two busy-loop processes for the duration of a `with` block."""

    def __enter__(self) -> "BusyLoad":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:6.1f}"


def where_time_went(timings: dict, wall: float) -> str:
    steps: dict[str, float] = {}
    for key, value in timings.items():
        if key == "total":
            continue
        group = "passes" if key.startswith("pass:") else key.replace("artifact:", "")
        steps[group] = steps.get(group, 0.0) + value
    start = wall - timings.get("total", 0.0)
    return ", ".join([f"start {start:.1f}"] + [f"{k} {v:.1f}" for k, v in steps.items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "edgepack-bench" / "litert-torch")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--models", default="mobilenet_v2,resnet18")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--loads", default="quiet,busy")
    args = parser.parse_args()
    models, precisions, loads = args.models.split(","), args.precisions.split(","), args.loads.split(",")

    pip_said = make_venv(args.venv)
    if pip_said:
        print(f"litert-torch could not be installed; pip said:\n{pip_said}\nmeasuring edgepack alone against issue 21's figures")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-litert-") as tmp:
        folder = Path(tmp)
        make_models(folder, models)
        for load in loads:
            with BusyLoad() if load == "busy" else _nothing():
                for rnd in range(args.rounds):
                    for name in models:
                        for precision in precisions:
                            order = ["edgepack", "litert"] if rnd % 2 == 0 else ["litert", "edgepack"]
                            got: dict[str, dict] = {}
                            for tool in order:
                                if tool == "litert" and pip_said:
                                    got[tool] = {"seconds": None}
                                    continue
                                got[tool] = (run_edgepack(folder, name, precision) if tool == "edgepack"
                                             else run_litert(args.venv, folder, name, precision))
                            loadavg = os.getloadavg()[0]
                            rows.append({"load": load, "round": rnd, "model": name, "precision": precision,
                                         "loadavg": loadavg, **{f"{k}": v for k, v in got.items()}})
                            r = rows[-1]
                            print(f"{load:5s} r{rnd} {name:12s} {precision}: edgepack {_fmt(r['edgepack']['seconds'])} s, "
                                  f"litert-torch {_fmt(r['litert']['seconds'])} s {r['litert'].get('error', '')}  "
                                  f"(load average {loadavg:.1f})", flush=True)

    print("\n| model | precision | load | load avg | edgepack s | litert-torch s | edgepack / litert-torch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        e, lt = r["edgepack"]["seconds"], r["litert"]["seconds"]
        if lt is None:
            (lo, hi) = ISSUE_LITERT[r["model"]][0 if r["precision"] == "fp32" else 1]
            ratio, lt_text = f"{e / hi:.2f}-{e / lo:.2f} (vs issue's {lo}-{hi} s)", "-"
        else:
            ratio, lt_text = f"{e / lt:.2f}", f"{lt:.1f}"
        print(f"| {r['model']} | {r['precision']} | {r['load']} | {r['loadavg']:.1f} | {e:.1f} | {lt_text} | {ratio} |")
    print("\nwhere edgepack's time went (s):")
    for r in rows:
        threads = (r["edgepack"].get("threads") or {}).get("reference_and_verification")
        print(f"  {r['model']} {r['precision']} {r['load']}: {where_time_went(r['edgepack']['timings'], r['edgepack']['seconds'])}"
              f" (threads {threads})")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
