"""Speed-up from physically removing pruned channels, measured side by side in one run.

For a ResNet-18-sized and a MobileNetV2-sized model with half of each block's inner filters
pruned (filters and their BatchNorm zeroed, as structured-pruning tools leave a model), export
twice with edgepack -- `prune=False` (the masked model: zeros still there) and the default (the
slimmed model) -- and time both in ONNX Runtime with 1 thread, interleaving runs so machine noise
hits both alike. Prints the latency ratio next to the MACs ratio, and the pass's own time on a
ResNet-50-sized graph (goal: under 2 s).

    python benchmarks/bench_prune.py [--runs 30]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _interleaved_latency(paths: list[Path], runs: int, warmup: int = 5) -> list[float]:
    from edgepack.runtimes import get_runtime

    ort = get_runtime("onnxruntime")
    sessions = [ort.load(p, threads=1) for p in paths]
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    feeds = [{s.input_names[0]: x} for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(warmup):
            s.run(f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            t = time.perf_counter()
            s.run(f)
            times[i].append((time.perf_counter() - t) * 1000)
    return [statistics.median(t) for t in times]


def _pass_time_resnet50() -> tuple[float, dict]:
    import io

    import onnx
    import onnx_ir as ir
    import torch

    from benchmarks.zoo import ResNet50, prune_inner_filters, randomize_batchnorm
    from edgepack.converters.cleanup_graph import cleanup_graph
    from edgepack.converters.fold_batchnorm import fold_batchnorm
    from edgepack.converters.remove_pruned_channels import remove_pruned_channels

    model = randomize_batchnorm(ResNet50())
    prune_inner_filters(model, 0.5)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter keeps BatchNorm, like a user's own ONNX file
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), buf, dynamo=False, opset_version=17)
    graph = ir.from_proto(onnx.load_from_string(buf.getvalue()))
    for p in (cleanup_graph, fold_batchnorm, cleanup_graph):
        p(graph)
    start = time.perf_counter()
    result = remove_pruned_channels(graph)
    return time.perf_counter() - start, result.counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    import torch

    import edgepack
    from benchmarks.zoo import MobileNetV2, ResNet18, prune_inner_filters, randomize_batchnorm

    torch.manual_seed(0)
    print(f"ONNX Runtime, 1 thread, median of {args.runs} interleaved runs, input 1x3x224x224")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in (("resnet18", ResNet18), ("mobilenetv2", MobileNetV2)):
            model = randomize_batchnorm(cls())
            zeroed = prune_inner_filters(model, 0.5)
            masked = edgepack.export(model, output_dir=Path(tmp) / f"{name}-masked", input_shape="1x3x224x224",
                                     name=name, prune=False)
            slim = edgepack.export(model, output_dir=Path(tmp) / f"{name}-slim", input_shape="1x3x224x224", name=name)
            for rep in (masked, slim):
                assert rep["ok"], rep["artifacts"][0]["error"]
            pass_result = next(p for p in slim["passes"] if p["name"] == "remove_pruned_channels")
            counts = pass_result["counts"]
            lat_masked, lat_slim = _interleaved_latency(
                [Path(tmp) / f"{name}-masked" / masked["artifacts"][0]["path"],
                 Path(tmp) / f"{name}-slim" / slim["artifacts"][0]["path"]], args.runs)
            print(f"\n{name}: {zeroed} filters zeroed, {counts['channels_removed']} channels removed "
                  f"(rel err vs PyTorch {slim['artifacts'][0]['fidelity']['rel_error']:.1e})")
            print(f"  masked  : {lat_masked:7.2f} ms   {counts['macs_before'] / 1e9:.3f} GMACs   {counts['params_before'] / 1e6:.2f} M params")
            print(f"  slimmed : {lat_slim:7.2f} ms   {counts['macs_after'] / 1e9:.3f} GMACs   {counts['params_after'] / 1e6:.2f} M params")
            print(f"  ratio slimmed/masked: latency {lat_slim / lat_masked:.2f}x, MACs {counts['macs_after'] / counts['macs_before']:.2f}x"
                  + ("   (goal <= 0.60x)" if name == "resnet18" else ""))
    seconds, counts = _pass_time_resnet50()
    print(f"\nremove_pruned_channels on a ResNet-50-sized graph: {seconds:.2f} s (goal < 2 s), "
          f"{counts['channels_removed']} channels removed, MACs {counts['macs_after'] / counts['macs_before']:.2f}x")


if __name__ == "__main__":
    main()
