"""Calibration, its own pipeline step: the activation ranges of the processed fp32 graph, measured
once on the calibration samples and written to OUTDIR/calibration.json (ONNX Runtime's calibration
cache format: the float (min, max) of every tensor, keyed by its ONNX tensor name). Every int8
exporter reads these ranges -- the int8 ONNX (ONNX Runtime's QDQ quantizer takes the file as its
cache), the TFLite writer and the ncnn table -- so all int8 artifacts of an export share them.

The measurement is ONNX Runtime's calibrators (`create_calibrator`: min/max, percentile or
entropy), fed in strides so their per-sample intermediate tensors stay bounded; `mse` adds a
per-tensor search of the clipping range that minimises the int8 rounding error
(converters/search_ranges.py) on top of min/max.

The same step runs the PTQ passes that change the float graph (converters/improve_int8.py):
cross-layer equalization and bias correction. Their result, `Calibration.model`, is the float
graph every int8 exporter quantizes (ONNX, TFLite and ncnn alike; the fp32/fp16 artifacts keep
the original). A pass is kept only where the int8 model's cosine to the float model on the
calibration samples does not drop, and `Calibration.ptq` says what each one did."""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import UsageError

CALIBRATION_NAME = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    path: Path  # calibration.json
    method: str
    feeds: list[dict[str, np.ndarray]]  # the samples it was measured on (also the TFLite-only tensors' ranges)
    ranges: dict[str, tuple[float, float]]
    ort_method: str = "minmax"  # the ONNX Runtime method the file is read back with (it checks they match)
    ptq: dict | None = None  # what the PTQ passes did (cosine per step), for report.calibration.ptq
    model: Any = field(default=None, repr=False)  # the float ModelProto the int8 exporters quantize (None: unchanged)
    graph_passes: list[dict] | None = None  # the int8 graph's passes before calibration (pipeline.int8_graph)

    def to_report(self, source: str | None, seed: int) -> dict:
        return {"file": self.path.name, "method": self.method, "samples": len(self.feeds), "source": source, "seed": seed,
                **({"ptq": self.ptq} if self.ptq else {}),
                **({"int8_graph_passes": self.graph_passes} if self.graph_passes is not None else {}),
                "note": "float (min, max) per ONNX tensor name; every int8 exporter derives its scales from these ranges"}

    def summary(self) -> dict:
        """What an int8 artifact's report entry says about the calibration it used."""
        return {"file": self.path.name, "method": self.method, "samples": len(self.feeds)}


def calibrate(fp32_proto: Any, feeds: Sequence[dict[str, np.ndarray]], method: str, path: Path, *,
              equalize: bool = False, correct_bias: bool = False) -> Calibration:
    """Measure the ranges of every float tensor of `fp32_proto` over `feeds` and write them to
    `path`; with `equalize` / `correct_bias` (or method 'mse') also run the PTQ passes."""
    from edgepack.converters.quantize_int8 import load_ranges

    feeds = list(feeds)
    if not feeds:
        raise UsageError("int8 needs calibration data: pass --calib, or --int8-weights-only for weights-only int8")
    path = Path(path)
    if method == "mse" or equalize or correct_bias:
        from edgepack.converters.improve_int8 import PtqOptions, improve_int8
        from edgepack.converters.quantize_int8 import save_ranges

        base = None if method in ("minmax", "mse") else (lambda model: ort_ranges(model, feeds, method))
        options = PtqOptions(equalize=equalize, search_ranges=method == "mse", correct_bias=correct_bias)
        model, ranges, summary = improve_int8(fp32_proto, feeds, options, base_ranges=base)
        save_ranges(ranges, path, method="minmax")  # read back as plain ranges: no calibrator runs again
        path.chmod(0o644)
        return Calibration(path, method, feeds, load_ranges(path), "minmax", summary.to_json(),
                           model if model is not fp32_proto else None)
    save_ort_ranges(fp32_proto, feeds, method, path)
    return Calibration(path, method, feeds, load_ranges(path), method)


def save_ort_ranges(fp32_proto: Any, feeds: Sequence[dict[str, np.ndarray]], method: str, path: Path) -> None:
    """ONNX Runtime's calibrator (`method`: minmax, percentile or entropy) over `feeds`, its
    calibration cache written to `path`."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    from edgepack.converters.quantize_int8 import _method, _quantizer_errors, _quiet, _Reader, _stride

    with tempfile.TemporaryDirectory(prefix="edgepack-calib-") as tmp, _quiet(), _quantizer_errors():
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(fp32_proto.SerializeToString())
        calibrator = create_calibrator(model_path, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=_method(method))
        reader = _Reader(feeds)
        stride = _stride(len(feeds))
        for start in range(0, len(feeds), stride):
            reader.set_range(start_index=start, end_index=start + stride)
            calibrator.collect_data(reader)
        tensors = calibrator.compute_data()
        del calibrator
    save_tensors_data(tensors, path)
    Path(path).chmod(0o644)


def ort_ranges(fp32_proto: Any, feeds: Sequence[dict[str, np.ndarray]], method: str) -> dict[str, tuple[float, float]]:
    """{tensor: (min, max)} of ONNX Runtime's calibrator `method` (percentile, entropy) on `feeds`."""
    from edgepack.converters.quantize_int8 import load_ranges

    with tempfile.TemporaryDirectory(prefix="edgepack-calib-") as tmp:
        save_ort_ranges(fp32_proto, feeds, method, Path(tmp) / CALIBRATION_NAME)
        return load_ranges(Path(tmp) / CALIBRATION_NAME)
