"""Calibration + int8 quantization time per method, and int8 / fp16 sizes against fp32.

Exports a MobileNetV2-sized and a ResNet-50-sized model to fp32 ONNX with edgepack, then, for the
MobileNetV2-sized one, calibrates and quantizes from scratch with 200 samples once per method
(minmax, percentile, entropy), each in a fresh process, timing calibration + quantization
together (what `edgepack export --int8` spends). Goals: minmax under 15 s, the histogram methods
under 45 s; int8/fp32 size 0.27 or less on large models.

    python benchmarks/bench_quantize.py [--samples 200] [--methods minmax,percentile,entropy]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GOALS = {"minmax": 15.0, "percentile": 45.0, "entropy": 45.0}

_ONE_METHOD = """
import json, sys, time
import numpy as np
from edgepack.converters.quantize_int8 import quantize_int8
fp32, out, cache, method, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
rng = np.random.default_rng(0)
feeds = [{"x": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(n)]
start = time.perf_counter()
quantize_int8(fp32, out, cache_path=cache, method=method, calib_feeds=feeds)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def _export(name: str, folder: Path) -> dict:
    import edgepack
    from benchmarks.zoo import MobileNetV2, ResNet50, randomize_batchnorm

    model = randomize_batchnorm({"mobilenetv2": MobileNetV2, "resnet50": ResNet50}[name]())
    return edgepack.export(model, output_dir=folder / name, input_shape="1x3x224x224", name=name, fp16=True,
                           int8_weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--methods", default="minmax,percentile,entropy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reports = {name: _export(name, folder) for name in ("mobilenetv2", "resnet50")}
        fp32 = folder / "mobilenetv2" / "mobilenetv2.fp32.onnx"
        print(f"MobileNetV2-sized model, {args.samples} calibration samples, calibration + quantization per method "
              "(fresh process each):")
        sizes = {}
        for method in args.methods.split(","):
            out = folder / f"mnv2.{method}.int8.onnx"
            proc = subprocess.run([sys.executable, "-c", _ONE_METHOD, str(fp32), str(out), str(folder / f"{method}.json"),
                                   method, str(args.samples)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
            seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            sizes[method] = out.stat().st_size
            print(f"  {method:10s} {seconds:6.1f} s   goal < {GOALS[method]:.0f} s   {'ok' if seconds < GOALS[method] else 'MISSED'}")
        print("\nsizes (ratio to fp32 in the same run):")
        int8_sizes = {"mobilenetv2": sizes.get("minmax")}
        if "resnet50" in reports:  # one minmax quantization of the large model for its size
            out = folder / "resnet50.int8.onnx"
            subprocess.run([sys.executable, "-c", _ONE_METHOD, str(folder / "resnet50" / "resnet50.fp32.onnx"), str(out),
                            str(folder / "r50.json"), "minmax", "20"], check=True, capture_output=True)
            int8_sizes["resnet50"] = out.stat().st_size
        for name, report in reports.items():
            arts = {a["precision"]: a["size_bytes"] for a in report["artifacts"]}
            fp = arts["fp32"]
            line = f"  {name:12s} fp32 {fp / 1e6:6.1f} MB   fp16 {arts['fp16'] / fp:.2f}x   int8-weights {arts['int8-weights'] / fp:.2f}x"
            if int8_sizes.get(name):
                line += f"   int8 {int8_sizes[name] / fp:.2f}x" + ("   (goal <= 0.27 on large models)" if name == "resnet50" else "")
            print(line)


if __name__ == "__main__":
    main()
