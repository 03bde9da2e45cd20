"""ncnn next to ONNX Runtime and LiteRT, side by side in one run: the same models exported once by
edgepack (`formats=("onnx", "tflite", "ncnn")`, fp32 plus ncnn's default fp16-weight artifact), each
run on one thread through edgepack's runtime adapters, median latency over interleaved rounds, and
each runtime's latency as a ratio of ONNX Runtime's.

    python benchmarks/bench_ncnn.py [--models mobilenetv2,resnet18] [--shape 1x3x224x224] [--rounds 20] [--int8]

--int8 adds the int8 artifact of each format, all from one calibration file (seeded N(0, 1) samples:
a latency comparison, not an accuracy one).

How it is timed:
- every artifact is loaded with `threads=1` (ncnn fp32: its fp16 storage off, as edgepack verifies
  it; ncnn fp16: ncnn's defaults; LiteRT: XNNPACK, its default delegate; ONNX Runtime: all graph
  optimizations);
- warm-up runs, then `--rounds` rounds in which every session runs once, the order reversed every
  round, so load from other processes on the machine hits all runtimes alike; the median per session
  is reported, with the interquartile range of the per-round ratio to ONNX Runtime;
- `Session.run` includes each adapter's feed/fetch copies (small next to the model);
- rel err: max |artifact - PyTorch| / max |PyTorch| from edgepack's verification (report.json);
  cos: cosine similarity with PyTorch (the int8 figure to read).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {"mobilenetv2": "MobileNetV2", "resnet18": "ResNet18"}
# (label, format, precision, runtime, adapter options)
SIDES = [("onnxruntime fp32", "onnx", "fp32", "onnxruntime", {}),
         ("litert fp32", "tflite", "fp32", "litert", {}),
         ("ncnn fp32", "ncnn", "fp32", "ncnn", {"fp16": False}),
         ("ncnn fp16", "ncnn", "fp16", "ncnn", {}),
         ("onnxruntime int8", "onnx", "int8", "onnxruntime", {}),
         ("litert int8", "tflite", "int8", "litert", {}),
         ("ncnn int8", "ncnn", "int8", "ncnn", {})]


def export(name: str, shape: str, out: Path, seed: int, int8: bool) -> dict:
    import torch

    import edgepack
    from benchmarks import zoo

    torch.manual_seed(seed)
    model = zoo.randomize_batchnorm(getattr(zoo, MODELS[name])(), seed=seed)
    calib = None
    if int8:
        calib = out.parent / f"{name}.calib.npy"
        dims = [int(d) for d in shape.split("x")]
        np.save(calib, np.random.default_rng(seed).standard_normal((40, *dims[1:]), dtype=np.float32))
    return edgepack.export(model, output_dir=out, input_shape=shape, formats=("onnx", "tflite", "ncnn"),
                           ncnn_fp32=True, fp16=True, prune=False, int8=int8, calib=calib)


def sessions(report: dict, out: Path, x: np.ndarray) -> list[dict]:
    from edgepack.converters.export_tflite import to_stored
    from edgepack.runtimes import get_runtime

    rows = []
    for label, fmt, precision, runtime, options in SIDES:
        art = next((a for a in report["artifacts"] if a["format"] == fmt and a["precision"] == precision), None)
        if art is None:
            continue
        if not art["ok"] and art["fidelity"] is None:
            print(f"  {label}: not built ({art['error']})")
            continue
        session = get_runtime(runtime).load(out / art["path"], threads=1, **options)
        d = art["inputs"][0]
        name = d.get("ncnn_blob", d["name"])
        feed = {name: to_stored(x, d["perm"]) if "perm" in d else x}
        rows.append({"label": label, "session": session, "feed": feed, "err": art["fidelity"]["rel_error"],
                     "cos": art["fidelity"]["cosine"],
                     "size_mb": art["size_bytes"] / 1e6, "times": []})
    return rows


def interleaved(rows: list[dict], rounds: int, warmup: int = 3) -> None:
    for r in rows:
        for _ in range(warmup):
            r["session"].run(r["feed"])
    order = list(range(len(rows)))
    for _ in range(rounds):
        for i in order:
            t = time.perf_counter()
            rows[i]["session"].run(rows[i]["feed"])
            rows[i]["times"].append((time.perf_counter() - t) * 1000)
        order.reverse()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenetv2,resnet18")
    parser.add_argument("--shape", default="1x3x224x224")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--int8", action="store_true", help="also the int8 artifacts (random calibration data)")
    args = parser.parse_args()
    names = args.models.split(",")
    if unknown := [n for n in names if n not in MODELS]:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    from edgepack.runtimes import get_runtime

    versions = ", ".join(f"{n} {get_runtime(n).version()}" for n in ("onnxruntime", "litert", "ncnn"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = Path(tmp) / name
            print(f"exporting {name} ({args.shape}) ...", flush=True)
            report = export(name, args.shape, out, args.seed, args.int8)
            x = np.random.default_rng(args.seed + 1).standard_normal(tuple(int(d) for d in args.shape.split("x")),
                                                                     dtype=np.float32)
            rows = sessions(report, out, x)
            interleaved(rows, args.rounds)
            results.append((name, rows))

    print(f"\n1 thread, median of {args.rounds} interleaved rounds, input {args.shape}; {versions}")
    header = f"{'model':12s} {'runtime':17s} {'latency ms':>10s} {'vs ORT':>7s} {'ratio IQR':>11s} {'size MB':>8s} {'rel err':>9s} {'cos':>8s}"
    print(header)
    print("-" * len(header))
    for name, rows in results:
        base = next((r for r in rows if r["label"].startswith("onnxruntime")), None)
        for r in rows:
            ms = statistics.median(r["times"])
            ratio, iqr = "", ""
            if base is not None:
                per_round = [a / b for a, b in zip(r["times"], base["times"])]
                q1, _, q3 = statistics.quantiles(per_round, n=4)
                ratio, iqr = f"{ms / statistics.median(base['times']):.2f}x", f"{q1:.2f}-{q3:.2f}"
            print(f"{name:12s} {r['label']:17s} {ms:10.2f} {ratio:>7s} {iqr:>11s} {r['size_mb']:8.2f} {r['err']:9.1e} {r['cos']:8.5f}")


if __name__ == "__main__":
    main()
