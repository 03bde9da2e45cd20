"""Is `edgepack bench` honest? Its p50 next to an independent timing loop over the same file, and
the harness's own overhead per run.

For a MobileNetV2-sized model (benchmarks/zoo.py, 224x224, random weights) exported to fp32 ONNX
and fp32 TFLite, each round runs (a) edgepack's bench (fresh child processes, adapters, runner)
and (b) a fresh Python process that calls onnxruntime.InferenceSession.run or the LiteRT
Interpreter's set_tensor/invoke/get_tensor directly in a plain perf_counter loop, with the same
threads, warmup and run count. Rounds alternate a, b, a, b so machine load hits both alike.
Goal: bench p50 / independent p50 within 10%.

Overhead: time_runs' loop around a no-op call, and the adapter layer (ONNX Runtime adapter's
run() vs InferenceSession.run on a 1-element Relu model), in microseconds per run.

    python benchmarks/bench_bench.py [--runs 100] [--rounds 3] [--threads 1]
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

INDEPENDENT = r"""
import json, sys, time
import numpy as np
path, threads, runs, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if path.endswith(".onnx"):
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal(i.shape).astype(np.float32)
    call = lambda: s.run(None, {i.name: x})
else:
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=threads); it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    x = np.random.default_rng(0).standard_normal(d["shape"]).astype(np.float32)
    def call():
        it.set_tensor(d["index"], x); it.invoke(); return it.get_tensor(o["index"])
call()
for _ in range(warmup):
    call()
t = []
for _ in range(runs):
    t0 = time.perf_counter(); call(); t.append(time.perf_counter() - t0)
t.sort()
print(json.dumps({"p50": 1e3 * (t[(len(t) - 1) // 2] + t[len(t) // 2]) / 2}))
"""


def export_models(out: Path) -> Path:
    import torch

    import edgepack
    from benchmarks.zoo import MobileNetV2

    torch.manual_seed(0)
    model = MobileNetV2().eval()
    ep = torch.export.export(model, (torch.zeros(1, 3, 224, 224),))
    torch.export.save(ep, out / "mnv2.pt2")
    report = edgepack.export(out / "mnv2.pt2", output_dir=out / "export", formats="onnx,tflite")
    assert report["ok"], report
    return out / "export"


def independent_p50(path: Path, threads: int, runs: int, warmup: int) -> float:
    proc = subprocess.run([sys.executable, "-c", INDEPENDENT, str(path), str(threads), str(runs), str(warmup)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["p50"]


def harness_overhead_us(n: int = 200_000) -> tuple[float, float]:
    """(time_runs loop per run, ONNX Runtime adapter run() minus InferenceSession.run) in µs."""
    import onnx
    import onnxruntime as ort
    from edgepack.runtimes import get_runtime
    from edgepack.runtimes.bench_runner import time_runs
    from onnx import TensorProto, helper

    t0 = time.perf_counter()
    time_runs(lambda: None, runs=n, min_seconds=None, warmup=0)
    loop = (time.perf_counter() - t0) / n * 1e6
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "relu.onnx"
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                                    opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
        feed = {"x": np.ones(1, np.float32)}
        session = get_runtime("onnxruntime").load(path, threads=1)
        raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        m = 20_000
        adapter_t, raw_t = [], []
        for _ in range(5):  # interleaved blocks
            t0 = time.perf_counter()
            for _ in range(m):
                session.run(feed)
            adapter_t.append((time.perf_counter() - t0) / m)
            t0 = time.perf_counter()
            for _ in range(m):
                raw.run(None, feed)
            raw_t.append((time.perf_counter() - t0) / m)
    return loop, (statistics.median(adapter_t) - statistics.median(raw_t)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()

    from edgepack.runtimes import runtime_for
    from edgepack.runtimes.bench_runner import benchmark

    with tempfile.TemporaryDirectory() as tmp:
        out = export_models(Path(tmp))
        print(f"MobileNetV2 224x224, fp32, {args.threads} thread(s), {args.runs} runs after {args.warmup} warmup, "
              f"{args.rounds} alternating rounds")
        print(f"{'artifact':24s} {'bench p50 ms':>13s} {'loop p50 ms':>12s} {'ratio':>7s}  (per round)")
        for name in ("mnv2.fp32.onnx", "mnv2.fp32.tflite"):
            path = out / name
            ratios, ours, theirs = [], [], []
            for _ in range(args.rounds):
                r = benchmark(path, runtime=runtime_for(path), threads=args.threads, runs=args.runs, warmup=args.warmup)
                ind = independent_p50(path, args.threads, args.runs, args.warmup)
                ours.append(r["latency_ms"]["p50"])
                theirs.append(ind)
                ratios.append(r["latency_ms"]["p50"] / ind)
            rounds = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(ours, theirs))
            print(f"{name:24s} {statistics.median(ours):13.3f} {statistics.median(theirs):12.3f} "
                  f"{statistics.median(ratios):7.3f}  ({rounds})")
        loop, adapter = harness_overhead_us()
        print(f"harness overhead per run: timing loop {loop:.3f} us; ONNX Runtime adapter vs raw session.run {adapter:+.2f} us")


if __name__ == "__main__":
    main()
