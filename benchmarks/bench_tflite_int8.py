"""edgepack's full-integer int8 TFLite next to litert-torch's PT2E int8 output (static, per-channel
weights, the same calibration samples), side by side in one run: LiteRT latency (XNNPACK, 1 thread),
file size and agreement with the fp32 PyTorch model (cosine of the logits, top-1 agreement) on the
same held-out inputs, for a MobileNetV2-sized and a ResNet-18-sized model with the same weights.
Goal for edgepack: int8 latency 0.9x litert-torch's or less.

litert-torch lives in its own venv (see benchmarks/bench_tflite.py for how to create it):

    python benchmarks/bench_tflite_int8.py [--models mobilenetv2,resnet18] [--rounds 30]
                                           [--calib-n 32] [--eval-n 16]
                                           [--litert-python ../bench-venv/bin/python] [--keep DIR]

Data: calibration and evaluation inputs are seeded N(0,1) noise (no image data set on the machine),
so agreement numbers compare the two quantizers with each other, not with real-image accuracy.
- edgepack gets a (calib-n, 3, 224, 224) .npy as --calib; it holds out a seeded 20% for its own
  verification and calibrates on the rest. litert-torch's PT2E observers see exactly that rest
  (indices from `edgepack.verify.make_verification_set`, the split edgepack itself uses).
- Evaluation: eval-n further seeded N(0,1) inputs that neither side calibrated on. With random
  weights the logits can barely depend on the input (zoo's MobileNetV2 after randomize_batchnorm:
  all inputs give the same top-1), so the table also shows ccos, the cosine after subtracting
  PyTorch's mean logits, and the run prints how much the reference logits vary across inputs.
- litert-torch flow (as in litert_torch/_convert/test/test_convert.py, per-channel case):
  torch.export -> prepare_pt2e(PT2EQuantizer().set_global(get_symmetric_quantization_config(
  is_per_channel=True, is_dynamic=False))) -> calibrate -> convert_pt2e(fold_quantize=False) ->
  litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(path).
- Latency: both files in `ai_edge_litert.interpreter.Interpreter(num_threads=1)` (XNNPACK default
  delegate), warmed up, then --rounds interleaved rounds (order flips every round), median invoke().
  Each file gets its input in its own layout and dtype (int8 inputs are quantized with the file's
  own scale/zero point; int8 outputs are dequantized before comparing).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_tflite import MODELS, SHAPE, _census_text, build_model, tflite_census  # noqa: E402

LATENCY_GOAL = 0.9

# Runs in the litert-torch venv. argv: repo root, JSON list of jobs. Prints one RESULT JSON line per job.
_LITERT_PT2E = r"""
import json, sys, time, traceback
sys.path.insert(0, sys.argv[1])
import numpy as np
import torch
import litert_torch
from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
from litert_torch.quantize.quant_config import QuantConfig
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, convert_pt2e
from benchmarks import zoo
print("INFO " + json.dumps({"version": litert_torch.__version__}), flush=True)

for job in json.loads(sys.argv[2]):
    try:
        model = getattr(zoo, job["cls"])()
        model.load_state_dict(torch.load(job["weights"], weights_only=True))
        model.eval()
        calib = torch.from_numpy(np.load(job["calib"]))
        sample = calib[:1]
        t0 = time.perf_counter()
        quantizer = PT2EQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
        m = torch.export.export(model, (sample,)).module()
        m = prepare_pt2e(m, quantizer)
        with torch.no_grad():
            for i in job["calib_indices"]:
                m(calib[i : i + 1])
        m = convert_pt2e(m, fold_quantize=False)
        edge = litert_torch.convert(m, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        edge.export(job["out"])
        print("RESULT " + json.dumps({"name": job["name"], "convert_s": time.perf_counter() - t0,
                                      "calib_samples": len(job["calib_indices"])}), flush=True)
    except Exception as e:
        print("RESULT " + json.dumps({"name": job["name"], "error": f"{type(e).__name__}: {e}",
                                      "trace": traceback.format_exc()[-3000:]}), flush=True)
"""


def convert_edgepack(model, out: Path, calib_npy: Path, calib_n: int) -> dict:
    import edgepack

    t = time.perf_counter()
    report = edgepack.export(model, output_dir=out, input_shape="1x3x224x224", formats=("tflite",), int8=True,
                             calib=calib_npy, prune=False, calib_samples=calib_n)
    wall = time.perf_counter() - t
    arts = [a for a in report["artifacts"] if a.get("precision") == "int8"]
    if not arts:
        raise RuntimeError(f"no int8 artifact in the report; got {[a.get('precision') for a in report['artifacts']]}")
    art = arts[0]
    path = Path(art["path"]) if Path(art["path"]).is_absolute() else out / art["path"]
    if not art.get("ok", False):
        print(f"  warning: edgepack reports ok=False for {path.name}: {art.get('error')} (exit_code {report.get('exit_code')})")
    calib_info = report.get("calibration") or {}
    return {"path": path, "convert_s": wall, "census": art["op_census"], "calib_samples": calib_info.get("samples")}


def convert_litert_torch(python: Path, jobs: list[dict]) -> tuple[dict[str, dict], dict, str | None]:
    """Returns ({model name: result}, {version}, None), or ({}, {}, why litert-torch is not available)."""
    if not python.exists():
        return {}, {}, f"no python at {python}; create the venv as the top of benchmarks/bench_tflite.py says"
    proc = subprocess.run([str(python), "-c", _LITERT_PT2E, str(ROOT), json.dumps(jobs)],
                          check=False, capture_output=True, text=True)
    results, info = {}, {}
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


def _load(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    return interp


def _feed(interp, x_nchw: np.ndarray) -> np.ndarray:
    """The NCHW float input as this file wants it: NCHW or NHWC, float or quantized with its own scale."""
    d = interp.get_input_details()[0]
    shape = tuple(d["shape"])
    if shape == x_nchw.shape:
        x = x_nchw
    elif shape == tuple(x_nchw.transpose(0, 2, 3, 1).shape):
        x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    else:
        raise SystemExit(f"input shape {shape} is neither NCHW {x_nchw.shape} nor NHWC")
    if np.issubdtype(d["dtype"], np.integer):
        scale, zero = d["quantization"]
        info = np.iinfo(d["dtype"])
        x = np.clip(np.round(x / scale) + zero, info.min, info.max)
    return x.astype(d["dtype"])


def _logits(interp, x_nchw: np.ndarray) -> np.ndarray:
    interp.set_tensor(interp.get_input_details()[0]["index"], _feed(interp, x_nchw))
    interp.invoke()
    d = interp.get_output_details()[0]
    y = interp.get_tensor(d["index"]).astype(np.float64)
    if np.issubdtype(d["dtype"], np.integer):
        scale, zero = d["quantization"]
        y = (y - zero) * scale
    return y.reshape(-1)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def agreement(interp, xs: np.ndarray, reference: np.ndarray) -> tuple[float, float, float, float]:
    """(mean cosine, min cosine, top-1 agreement, mean centered cosine) of the file's logits against
    PyTorch fp32 over xs. Centered: both minus PyTorch's mean logits over xs, i.e. agreement on the
    part of the logits that depends on the input (random-weight models can have almost none)."""
    center = reference.mean(axis=0)
    cos, top1, centered = [], [], []
    for x, ref in zip(xs, reference):
        got = _logits(interp, x[None])
        cos.append(_cosine(got, ref))
        centered.append(_cosine(got - center, ref - center))
        top1.append(int(got.argmax()) == int(ref.argmax()))
    return float(np.mean(cos)), float(np.min(cos)), float(np.mean(top1)), float(np.mean(centered))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenetv2,resnet18")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved latency rounds (median)")
    parser.add_argument("--calib-n", type=int, default=32, help="samples in the --calib .npy (edgepack holds out 20%%)")
    parser.add_argument("--eval-n", type=int, default=16, help="held-out inputs for cosine / top-1 agreement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--litert-python", type=Path, default=ROOT.parent / "bench-venv" / "bin" / "python")
    parser.add_argument("--keep", type=Path, help="write the weights, .npy and .tflite files here instead of a temp dir")
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")

    import torch

    from edgepack.verify import make_verification_set

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        calib = np.random.default_rng(args.seed + 100).standard_normal((args.calib_n,) + SHAPE[1:], dtype=np.float32)
        calib_npy = work / "calib.npy"
        np.save(calib_npy, calib)
        # The split edgepack makes (export's default seed 0): it calibrates on calibration_indices.
        vset = make_verification_set({"input": SHAPE}, seed=0, calib={"input": calib})
        calib_indices = [int(i) for i in vset.calibration_indices]
        evals = np.random.default_rng(args.seed + 200).standard_normal((args.eval_n,) + SHAPE[1:], dtype=np.float32)
        print(f"data: seeded N(0,1) noise, not images. calib.npy {calib.shape}: edgepack holds out {vset.count} "
              f"for its verification and calibrates on {len(calib_indices)}; litert-torch PT2E calibrates on those "
              f"same {len(calib_indices)}. agreement: {args.eval_n} further N(0,1) inputs neither side saw.")

        models, jobs = {}, []
        for name in names:
            models[name] = build_model(name, args.seed)
            weights = work / f"{name}.state_dict.pt"
            torch.save(models[name].state_dict(), weights)
            jobs.append({"name": name, "cls": MODELS[name], "weights": str(weights), "calib": str(calib_npy),
                         "calib_indices": calib_indices, "out": str(work / f"{name}.litert_torch_int8.tflite")})

        print(f"converting with litert-torch PT2E int8 ({args.litert_python}) ...", flush=True)
        theirs, info, unavailable = convert_litert_torch(args.litert_python, jobs)
        if unavailable:
            print(f"litert-torch: not available ({unavailable})")
        else:
            print(f"  litert-torch {info.get('version', '?')}")
        for name, r in theirs.items():
            if "error" in r:
                print(f"  litert-torch PT2E int8 failed on {name}: {r['error']}\n{r['trace']}")

        ours: dict[str, dict | None] = {}
        for name in names:
            print(f"converting {name} with edgepack --int8 ...", flush=True)
            try:
                ours[name] = convert_edgepack(models[name], work / f"{name}.edgepack", calib_npy, args.calib_n)
            except Exception as e:  # noqa: BLE001  (report the converter's exact error, go on with the next model)
                print(f"  edgepack failed on {name}: {type(e).__name__}: {e}")
                ours[name] = None

        rows = []
        for name, job in zip(names, jobs):
            ep = ours.get(name)
            if ep:
                parsed = tflite_census(ep["path"])
                if parsed != ep["census"]:
                    print(f"  note: {name}: report op_census {ep['census']} differs from the file's {parsed}")
                ep["census"] = parsed
            lt = theirs.get(name)
            if lt and "error" in lt:
                lt = None
            if lt:
                lt["path"] = Path(job["out"])
                lt["census"] = tflite_census(lt["path"])
            with torch.no_grad():
                reference = models[name](torch.from_numpy(evals)).numpy().astype(np.float64)
            spread = float(reference.std(axis=0).mean() / (reference.std(axis=1).mean() + 1e-30))
            print(f"  {name}: PyTorch logits vary {spread:.1e}x as much across the {args.eval_n} inputs as across classes, "
                  f"{len(np.unique(reference.argmax(axis=1)))} distinct top-1 class(es)"
                  + ("; the logits barely depend on the input, so cos/top1 mostly measure the constant part "
                     "(see ccos)" if spread < 1e-3 else ""))
            entries, interps = [], []
            for label, r in (("edgepack", ep), ("litert-torch", lt)):
                if r is None:
                    continue
                try:
                    interps.append(_load(r["path"]))
                    entries.append(r)
                except (RuntimeError, ValueError) as e:  # report LiteRT's exact refusal, measure the other file
                    r["load_error"] = f"{type(e).__name__}: {e}"
                    print(f"  {name}: LiteRT cannot load the {label} file {r['path'].name}: {r['load_error']}")
            for r, interp in zip(entries, interps):
                d_in, d_out = interp.get_input_details()[0], interp.get_output_details()[0]
                r["size_mb"] = r["path"].stat().st_size / 1e6
                r["io"] = f"{'x'.join(map(str, d_in['shape']))} {np.dtype(d_in['dtype']).name}->{np.dtype(d_out['dtype']).name}"
                r["cos"], r["cos_min"], r["top1"], r["ccos"] = agreement(interp, evals, reference)
            for r, times in zip(entries, interleaved_latency(interps, evals[:1], args.rounds)):
                r["ms"], r["times"] = statistics.median(times), times
            rows.append((name, ep, lt))

    print(f"\nint8 TFLite. LiteRT (ai-edge-litert), XNNPACK, 1 thread, median of {args.rounds} interleaved rounds. "
          f"cos: cosine of logits vs PyTorch fp32, mean (min) over {args.eval_n} held-out N(0,1) inputs; "
          f"top1: fraction agreeing with PyTorch's argmax; ccos: mean cosine after subtracting PyTorch's mean logits "
          f"over those inputs (agreement on the input-dependent part)")
    header = f"{'model':12s} {'converter':13s} {'size MB':>8s} {'latency ms':>10s} {'cos mean (min)':>16s} {'top1':>5s} {'ccos':>6s} " \
             f"{'calib':>5s}  {'io':28s} census (T=TRANSPOSE Q=QUANTIZE DQ=DEQUANTIZE)"
    print(header)
    print("-" * len(header))
    for name, ep, lt in rows:
        for label, r in (("edgepack", ep), ("litert-torch", lt)):
            if r is None or "load_error" in r:
                why = f"not available ({unavailable})" if label == "litert-torch" and unavailable else "failed (see above)"
                if r is not None:
                    why = f"{r['path'].stat().st_size / 1e6:8.2f} LiteRT cannot run it: {r['load_error']}  {_census_text(r['census'])}"
                print(f"{name:12s} {label:13s} {why}")
                continue
            cos = f"{r['cos']:.4f} ({r['cos_min']:.4f})"
            print(f"{name:12s} {label:13s} {r['size_mb']:8.2f} {r['ms']:10.2f} {cos:>16s} {r['top1']:5.2f} {r['ccos']:6.3f} "
                  f"{r['calib_samples'] or '?':>5}  {r['io']:28s} {_census_text(r['census'])}")
    for name, ep, lt in rows:
        if ep and lt and "ms" in ep and "ms" in lt:
            lat = ep["ms"] / lt["ms"]
            q1, _, q3 = statistics.quantiles([a / b for a, b in zip(ep["times"], lt["times"])], n=4)
            print(f"{name}: edgepack int8 latency {lat:.2f}x litert-torch's, per-round ratios IQR {q1:.2f}-{q3:.2f} "
                  f"(goal <= {LATENCY_GOAL}x: {'met' if lat <= LATENCY_GOAL else 'missed'}); "
                  f"size {ep['size_mb'] / lt['size_mb']:.2f}x; cos {ep['cos']:.4f} vs {lt['cos']:.4f}, "
                  f"top1 {ep['top1']:.2f} vs {lt['top1']:.2f}, ccos {ep['ccos']:.3f} vs {lt['ccos']:.3f}")
            only_ep = {k: v - lt["census"].get(k, 0) for k, v in ep["census"].items() if v > lt["census"].get(k, 0)}
            only_lt = {k: v - ep["census"].get(k, 0) for k, v in lt["census"].items() if v > ep["census"].get(k, 0)}
            print(f"  op census difference: edgepack +{only_ep or '{}'}, litert-torch +{only_lt or '{}'}")


if __name__ == "__main__":
    main()
