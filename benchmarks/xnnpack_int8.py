"""Does int8 TFLite stay inside XNNPACK, and is it faster than fp32? Per model of a zoo of mobile
architectures (hard-swish, GELU, SE blocks, attention): XNNPACK partitions and operators left
outside the delegate (fp32, int8), fp32 and int8 latency (LiteRT with its default XNNPACK
delegate, 1 thread, interleaved runs, median) and the int8 / fp32 ratio.

Models: timm lcnet_050, fastvit_t8, mobilevit_xxs; torchvision mobilenet_v3_small/large,
efficientnet_b0 (weights=None, BatchNorm statistics re-estimated on real image crops, as
benchmarks/ptq_zoo.py does); ultralytics YOLOv8n (from its yaml); PP-OCRv4 det (the ONNX with
real weights from rapidocr_onnxruntime's models folder, 1x3x320x320). Each is exported with
`edgepack.export(..., formats=("tflite",), int8=True)` calibrated on 64 crops; exports are cached
under benchmarks/results/xnnpack_int8/ (gitignored; delete to re-export after a writer change).

Command (benchmark extras installed, see README):
    PYTHONPATH=/work/shared/tools/torchvision-cpu-shim YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 \\
        nice python benchmarks/xnnpack_int8.py [model ...]

Measured on this 2-core x86 host (shared, noisy), LiteRT 2.3, see the final report for the table.
"""
from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / "results" / "xnnpack_int8"
MODELS = ("lcnet_050", "fastvit_t8", "mobilevit_xxs", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
          "yolov8n", "ppocr_det")
PPOCR_SIZE = 320
RUNS = 20


def _onnx(name: str) -> tuple[Path, int]:
    """The fp32 ONNX of `name` (BatchNorm statistics re-estimated) and its input size."""
    if name == "ppocr_det":
        import rapidocr_onnxruntime

        return Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx", PPOCR_SIZE
    import ptq_zoo

    if name == "lcnet_050":
        ptq_zoo.TIMM.add(name)
    return ptq_zoo.prepare(name), ptq_zoo.SIZE


def export(name: str) -> dict[str, Path]:
    """Cached fp32 and int8 TFLite of `name`, exported by edgepack."""
    out = CACHE / name
    paths = {p: out / f"{name}.{p}.tflite" for p in ("fp32", "int8")}
    if all(p.is_file() for p in paths.values()):
        return paths
    import ptq_zoo

    import edgepack

    onnx_path, size = _onnx(name)
    calib = ptq_zoo.crops(64, 2, size)
    with tempfile.TemporaryDirectory(prefix="xnnpack-int8-") as tmp:
        np.save(Path(tmp) / "calib.npy", calib)
        edgepack.export(str(onnx_path), output_dir=Path(tmp) / "out", input_shape=f"1x3x{size}x{size}", name=name,
                        formats=("tflite",), int8=True, calib=str(Path(tmp) / "calib.npy"))
        out.mkdir(parents=True, exist_ok=True)
        for p in paths.values():
            shutil.copy(Path(tmp) / "out" / p.name, p)
    return paths


def measure(paths: dict[str, Path], runs: int = RUNS) -> dict:
    """Delegation of each artifact and interleaved latencies (ms, median), in a child process."""
    from edgepack.runtimes import isolated
    from edgepack.runtimes.litert_speed import compare_speed

    return isolated.call(compare_speed, str(paths["int8"]), str(paths["fp32"]), runs, artifact=paths["int8"],
                         what="litert", timeout=1800)


def main(names: list[str]) -> None:
    from edgepack.runtimes.litert_delegation import summary

    rows = []
    for name in names:
        t0 = time.time()
        paths = export(name)
        m = measure(paths)
        rows.append((name, m))
        print(f"{name}: fp32 {summary(m['reference_delegation'])} | int8 {summary(m['delegation'])} | "
              f"fp32 {m['reference_ms']:.2f} ms, int8 {m['ms']:.2f} ms, ratio {m['ratio']:.2f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    print()
    print("| model | partitions fp32 | partitions int8 | ops outside int8 | fp32 ms | int8 ms | int8/fp32 |")
    print("|---|---|---|---|---|---|---|")
    for name, m in rows:
        outside = ", ".join(sorted({r["op"] for r in m["delegation"]["outside"]})) or "none"
        print(f"| {name} | {m['reference_delegation']['partitions']} | {m['delegation']['partitions']} | "
              f"{len(m['delegation']['outside'])} ({outside}) | {m['reference_ms']:.2f} | {m['ms']:.2f} | "
              f"{m['ratio']:.2f} |")
    print(f"median of {RUNS} interleaved runs each, 1 thread; median ratio "
          f"{statistics.median(m['ratio'] for _, m in rows):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
