"""Time and peak memory of `edgepack export` (fp32 ONNX + verification) for a MobileNetV2-sized and a
ResNet-50-sized model, next to the dynamo exporter alone measured in the same run.

Each measurement is a fresh process (imports included, as a user sees it); peak memory is that
process's max RSS. Where the time goes comes from report.json's `timings_s`.

    python benchmarks/bench_export.py [--repeat 2] [--models mobilenetv2,resnet50]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_S, GOAL_MB = 15.0, 1536.0

_DYNAMO_ONLY = """
import sys, torch
ep = torch.export.load(sys.argv[1])
torch.onnx.export(ep, ep.example_inputs[0], dynamo=True, optimize=True, opset_version=18, external_data=False)
"""


def _measure_rss(cmd: list[str]) -> tuple[float, float]:
    """Run under a wrapper that reports this child's own max RSS (not the max over earlier children)."""
    wrapper = (
        "import resource, subprocess, sys, time; t=time.perf_counter(); "
        "r=subprocess.run(sys.argv[1:]); w=time.perf_counter()-t; "
        "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    wall, rss_kb = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), float(rss_kb) / 1024.0


def _save_model(name: str, folder: Path) -> Path:
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.zoo import MobileNetV2, ResNet50, randomize_batchnorm

    model = randomize_batchnorm({"mobilenetv2": MobileNetV2, "resnet50": ResNet50}[name]())
    ep = torch.export.export(model, (torch.randn(1, 3, 224, 224),))
    path = folder / f"{name}.pt2"
    torch.export.save(ep, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--models", default="mobilenetv2,resnet50")
    args = parser.parse_args()
    edgepack = [sys.executable, "-m", "edgepack"]
    print(f"machine: {os.cpu_count()} cores; each figure is the best of {args.repeat} fresh processes")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            model = _save_model(name, folder)
            rows = []
            for _ in range(args.repeat):
                ep_wall, ep_rss = _measure_rss(edgepack + ["export", str(model), "-o", str(folder / name), "--json"])
                dy_wall, dy_rss = _measure_rss([sys.executable, "-c", _DYNAMO_ONLY, str(model)])
                report = json.loads((folder / name / "report.json").read_text())
                rows.append((ep_wall, ep_rss, dy_wall, dy_rss, report))
            ep_wall, ep_rss, _, _, report = min(rows, key=lambda r: r[0])
            dy_wall, dy_rss = min(r[2] for r in rows), min(r[3] for r in rows)
            art = report["artifacts"][0]
            print(f"\n{name}: {report['model']['params'] / 1e6:.2f} M params, {report['model']['macs'] / 1e9:.2f} GMACs, "
                  f"{art['size_bytes'] / 1e6:.1f} MB onnx, rel err {art['fidelity']['rel_error']:.1e}, ok={art['ok']}")
            print(f"  edgepack export (end to end): {ep_wall:6.2f} s  peak RSS {ep_rss:7.0f} MB"
                  f"   goal <{GOAL_S:.0f} s, <{GOAL_MB:.0f} MB (mobilenetv2)")
            print(f"  dynamo exporter alone       : {dy_wall:6.2f} s  peak RSS {dy_rss:7.0f} MB")
            print(f"  ratio edgepack / dynamo alone: time {ep_wall / dy_wall:.2f}x, memory {ep_rss / dy_rss:.2f}x")
            timings = report["timings_s"]
            inside = timings["total"]
            print(f"  where the time goes (in-process total {inside:.2f} s; the rest is interpreter start + imports):")
            for key, value in timings.items():
                if key != "total" and value >= 0.01:
                    print(f"    {key:28s} {value:6.2f} s  {100 * value / ep_wall:5.1f}%")


if __name__ == "__main__":
    main()
