"""int8 post-training quantization side by side, same ONNX models, same calibration samples:
edgepack before (min/max) and after its PTQ passes (improve_int8: CLE, MSE range search, bias
correction), ONNX Runtime's quantize_static (QDQ, per-channel, best of MinMax/Entropy/Percentile on
the evaluation crops) and NNCF's nncf.quantize (run in its own venv through a subprocess; attention
hybrids also with model_type=TRANSFORMER, the better kept). Prints cosine vs float per model and
the calibration time of each.

Models and images: benchmarks/ptq_zoo.py (random weights, BN statistics re-estimated on 64 crops of
scikit-learn's sample photos; calibration on 64 other crops; cosine on 32 further crops).
Cosine is measured with ONNX Runtime on each int8 QDQ ONNX, graph optimizations off: the QDQ
graph's reference semantics (what int8 kernels without saturation compute, e.g. on ARM). The
`x86` columns run the same files with ONNX Runtime's fused int8 kernels on this host (AVX2 without
VNNI saturates u8 x s8 pair sums, so those figures also measure this CPU).

    python -m venv /work/nncf-venv && /work/nncf-venv/bin/pip install nncf onnx onnxruntime numpy
    PYTHONPATH=/work/shared/tools/torchvision-cpu-shim YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 \\
        python benchmarks/ptq_compare.py [--models a,b] [--skip ort,nncf] [--fresh]

Per-model results are cached in benchmarks/results/ptq/compare.json (--fresh recomputes)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
NNCF_PYTHON = Path("/work/nncf-venv/bin/python")
ATTENTION = {"efficientformerv2_s0", "mobilevit_xxs", "fastvit_t8"}
ORT_METHODS = ("MinMax", "Percentile", "Entropy")


def _evaluate(qpath: Path, ref: list, feeds: list) -> dict[str, float]:
    import onnx

    from edgepack.converters.collect_activations import cosine, run

    q = onnx.load(str(qpath))
    return {"cosine": cosine(ref, run(q, feeds, optimize=False)), "cosine_x86": cosine(ref, run(q, feeds))}


def _edgepack(model, calib: list, tmp: Path, improve: bool) -> tuple[Path, float, dict]:
    from edgepack.converters.improve_int8 import PtqOptions, improve_int8
    from edgepack.converters.quantize_int8 import quantize_int8, save_ranges

    out, cache = tmp / f"edgepack_{improve}.onnx", tmp / f"calibration_{improve}.json"
    start = time.perf_counter()
    summary = {}
    if improve:
        model, ranges, result = improve_int8(model, calib, PtqOptions())
        save_ranges(ranges, cache)
        summary = result.to_json()
        quantize_int8(model, out, cache_path=cache, method="minmax", calib_feeds=None)
    else:
        quantize_int8(model, out, cache_path=cache, method="minmax", calib_feeds=calib)
    return out, time.perf_counter() - start, summary


def _ort(path: Path, calib: list, tmp: Path, method: str) -> tuple[Path, float]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgepack.converters.quantize_int8 import _quiet, _Reader, _stride

    out = tmp / f"ort_{method}.onnx"
    start = time.perf_counter()
    with _quiet():
        quantize_static(str(path), str(out), _Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method),
                        extra_options={"CalibStridedMinMax": _stride(len(calib))})
    return out, time.perf_counter() - start


def _nncf(path: Path, images: np.ndarray, tmp: Path, transformer: bool) -> tuple[Path, float]:
    data, out = tmp / "calib.npy", tmp / f"nncf_{transformer}.onnx"
    np.save(data, images)
    cmd = [str(NNCF_PYTHON), str(ROOT / "benchmarks" / "ptq_nncf_worker.py"), str(path), str(data), str(out)]
    done = subprocess.run(cmd + (["transformer"] if transformer else []), capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "nncf failed")
    return out, json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def compare(name: str, skip: set[str]) -> dict:
    import onnx

    from benchmarks.ptq_zoo import images, prepare
    from edgepack.converters.collect_activations import run

    path = prepare(name)
    model = onnx.load(str(path))
    inp = model.graph.input[0].name
    calib_images, eval_images = images("calib"), images("eval")
    calib = [{inp: calib_images[i:i + 1]} for i in range(len(calib_images))]
    feeds = [{inp: eval_images[i:i + 1]} for i in range(len(eval_images))]
    ref = run(model, feeds)
    row: dict = {"model": name}
    with tempfile.TemporaryDirectory(prefix="ptq-compare-") as tmp:
        tmp = Path(tmp)
        for improve in (False, True):
            out, seconds, summary = _edgepack(model, calib, tmp, improve)
            row["edgepack_ptq" if improve else "edgepack_minmax"] = {**_evaluate(out, ref, feeds), "seconds": seconds,
                                                                     **({"summary": summary} if summary else {})}
        if "ort" not in skip:
            tried = {}
            for method in ORT_METHODS:
                out, seconds = _ort(path, calib, tmp, method)
                tried[method] = {**_evaluate(out, ref, feeds), "seconds": seconds}
            method = max(tried, key=lambda k: tried[k]["cosine"])
            row["ort"] = {**tried[method], "method": method, "all": {k: v["cosine"] for k, v in tried.items()}}
        if "nncf" not in skip:
            tried = {}
            for transformer in ((False, True) if name in ATTENTION else (False,)):
                try:
                    out, seconds = _nncf(path, calib_images, tmp, transformer)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    tried["transformer" if transformer else "default"] = {"error": str(exc)[:200]}
                    continue
                tried["transformer" if transformer else "default"] = {**_evaluate(out, ref, feeds), "seconds": seconds}
            ok = {k: v for k, v in tried.items() if "cosine" in v}
            row["nncf"] = ({**ok[max(ok, key=lambda k: ok[k]["cosine"])], "preset": max(ok, key=lambda k: ok[k]["cosine"])}
                           if ok else {"error": next(iter(tried.values()))["error"]})
    return row


def _cell(entry: dict | None, key: str = "cosine") -> str:
    if not entry:
        return "-"
    return f"{entry[key]:.4f}" if key in entry else "error"


def table(rows: list[dict]) -> str:
    head = ("| model | edgepack min/max | edgepack PTQ | ORT best (method) | NNCF | x86: edgepack PTQ / ORT / NNCF "
            "| calibration s: edgepack min/max / PTQ / ORT / NNCF |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        secs = " / ".join(f"{r[k]['seconds']:.0f}" if r.get(k) and "seconds" in r[k] else "-"
                          for k in ("edgepack_minmax", "edgepack_ptq", "ort", "nncf"))
        ort = f"{_cell(r.get('ort'))} ({r['ort']['method']})" if r.get("ort") else "-"
        x86 = " / ".join(_cell(r.get(k), "cosine_x86") for k in ("edgepack_ptq", "ort", "nncf"))
        lines.append(f"| {r['model']} | {_cell(r['edgepack_minmax'])} | {_cell(r['edgepack_ptq'])} | {ort} | "
                     f"{_cell(r.get('nncf'))} | {x86} | {secs} |")
    ptq = [r["edgepack_ptq"]["cosine"] for r in rows]
    beats = sum(1 for r in rows if "cosine" in (r.get("nncf") or {}) and r["edgepack_ptq"]["cosine"] >= r["nncf"]["cosine"])
    lines.append(f"\nedgepack PTQ >= 0.99 on {sum(c >= 0.99 for c in ptq)} of {len(ptq)}; >= NNCF on {beats} of "
                 f"{sum(1 for r in rows if 'cosine' in (r.get('nncf') or {}))}")
    return "\n".join(lines)


def main() -> None:
    from benchmarks.ptq_zoo import CACHE, MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--skip", default="", help="comma list of ort,nncf")
    parser.add_argument("--fresh", action="store_true", help="recompute models already in the cache")
    args = parser.parse_args()
    cache_file = CACHE / "compare.json"
    cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    rows = []
    for name in args.models.split(","):
        if args.fresh or name not in cached:
            cached[name] = compare(name, set(filter(None, args.skip.split(","))))
            CACHE.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps(cached, indent=1))
        rows.append(cached[name])
        print(json.dumps({k: v for k, v in cached[name].items() if k != "summary"}), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
