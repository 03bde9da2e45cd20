"""Calibration, its own pipeline step: the activation ranges of the processed fp32 graph, measured
once on the calibration samples and written to OUTDIR/calibration.json (ONNX Runtime's calibration
cache format: the float (min, max) of every tensor, keyed by its ONNX tensor name). Every int8
exporter reads these ranges -- the int8 ONNX (ONNX Runtime's QDQ quantizer takes the file as its
cache), the TFLite writer and the ncnn table -- so all int8 artifacts of an export share them.

The measurement is ONNX Runtime's calibrators (`create_calibrator`: min/max, percentile or
entropy), fed in strides so their per-sample intermediate tensors stay bounded; `mse` adds a
per-tensor search of the clipping range that minimises the int8 rounding error
(converters/search_ranges.py) on top of min/max."""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
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
    ptq: dict | None = None  # what the range search did (--calib-method mse)

    def to_report(self, source: str | None, seed: int) -> dict:
        return {"file": self.path.name, "method": self.method, "samples": len(self.feeds), "source": source, "seed": seed,
                **({"ptq": self.ptq} if self.ptq else {}),
                "note": "float (min, max) per ONNX tensor name; every int8 exporter derives its scales from these ranges"}

    def summary(self) -> dict:
        """What an int8 artifact's report entry says about the calibration it used."""
        return {"file": self.path.name, "method": self.method, "samples": len(self.feeds)}


def calibrate(fp32_proto: Any, feeds: Sequence[dict[str, np.ndarray]], method: str, path: Path) -> Calibration:
    """Measure the ranges of every float tensor of `fp32_proto` over `feeds` and write them to `path`."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    from edgepack.converters.quantize_int8 import _method, _quantizer_errors, _quiet, _Reader, _stride, load_ranges

    feeds = list(feeds)
    if not feeds:
        raise UsageError("int8 needs calibration data: pass --calib, or --int8-weights-only for weights-only int8")
    path = Path(path)
    if method == "mse":  # min/max, then a per-tensor MSE search of the clipping range (converters/search_ranges.py)
        from edgepack.converters.improve_int8 import PtqOptions, improve_int8
        from edgepack.converters.quantize_int8 import save_ranges

        _, ranges, summary = improve_int8(fp32_proto, feeds, PtqOptions(equalize=False, correct_bias=False))
        save_ranges(ranges, path, method="minmax")
        path.chmod(0o644)
        return Calibration(path, "mse", feeds, load_ranges(path), "minmax", summary.to_json())
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
    path.chmod(0o644)
    return Calibration(path, method, feeds, load_ranges(path), method)

