"""int8 post-training quantization with ONNX Runtime's tooling (onnxruntime.quantization).

- `quantize_int8`: static, full integer in QDQ format: int8 weights per output channel
  (symmetric), int8 activations from calibrated ranges. On x86-64 CPUs without VNNI, where ONNX
  Runtime's int8 kernels saturate with 8-bit weights (`runtimes.ort.int8_products_saturate`),
  weights use 7 bits, so the artifact verified here computes what it should. Calibration runs once: the first call
  calibrates and writes the ranges to `calibration.json` (ONNX Runtime's calibration cache: the
  float (min, max) of every tensor, keyed by its ONNX tensor name); later calls (accuracy-guard
  retries, other exporters) reuse that file, so every artifact derives its scales from the same
  ranges. `nodes_to_exclude` keeps nodes in float with a Q/DQ pair around them.
- `quantize_int8_weights`: dynamic-range (int8 weights, activations quantized at run time), no
  data needed; labelled `int8-weights`, never plain int8.
- `load_ranges`: the calibration file as {tensor name: (min, max)} for the other exporters;
  `save_ranges` writes one from such a dict (ranges chosen by the PTQ passes, improve_int8.py), so
  that `quantize_int8(..., calib_feeds=None)` and every other exporter read those.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import ConversionError, EdgepackError, UsageError
from edgepack.fsutil import atomic_path

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QUANTIZED_OPS = QDQ_OPS + ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
                           "QGemm", "QLinearAdd", "QLinearMul")
# ONNX Runtime's calibrators keep every intermediate output of the samples they are given before
# reducing them (80 MB per sample for MobileNetV2 at 224): feed them in strides of at most this
# many samples (its `CalibStridedMinMax` option, which merges ranges and histograms across strides).
_MAX_STRIDE = 20


def _stride(n: int) -> int:
    """Largest divisor of n not above _MAX_STRIDE (ONNX Runtime requires strides to divide n)."""
    return next(d for d in range(min(_MAX_STRIDE, max(n, 1)), 0, -1) if n % d == 0)


@dataclass(frozen=True)
class Int8Result:
    quantized_nodes: int
    float_nodes: int
    excluded: tuple[str, ...]


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}
    if name not in table:
        raise UsageError(f"--calib-method {name!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    return table[name]


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __len__(self) -> int:
        return len(self._feeds)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer prints progress and logs advice on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _quantizer_errors() -> Iterator[None]:
    """ONNX Runtime's quantizer raises plain exceptions: name it and keep the other artifacts going."""
    try:
        yield
    except EdgepackError:
        raise
    except Exception as exc:  # ValueError, RuntimeError, onnx errors ...
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"ONNX Runtime's int8 quantizer failed: {text}; the fp32 and fp16 artifacts "
                              "are unaffected; --int8-weights-only needs no calibration") from None


def quantize_int8(fp32_model, out_path: Path, *, cache_path: Path, method: str,
                  calib_feeds: Sequence[dict[str, np.ndarray]] | None,
                  nodes_to_exclude: Sequence[str] = ()) -> Int8Result:
    """Static QDQ int8 of `fp32_model` (ModelProto or path) into `out_path` (atomic)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgepack.runtimes.ort import int8_products_saturate

    if not Path(cache_path).is_file() and not calib_feeds:
        raise UsageError("int8 needs calibration data: pass --calib, or --int8-weights-only for weights-only int8")
    out_path = Path(out_path)
    with _as_file(fp32_model) as src, atomic_path(out_path) as tmp, _quiet(), _quantizer_errors():
        quantize_static(
            str(src), str(tmp), _Reader(calib_feeds or []),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=int8_products_saturate(),
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude) or None,
            calibrate_method=_method(method),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                           "CalibStridedMinMax": _stride(len(calib_feeds or [1]))},
            calibration_cache_path=str(cache_path),
        )
    quantized, floating = count_quantized_nodes(onnx.load(str(out_path)))
    return Int8Result(quantized, floating, tuple(nodes_to_exclude))


def quantize_int8_weights(fp32_model, out_path: Path) -> Int8Result:
    """Dynamic-range quantization: int8 weights per channel, activations quantized at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _as_file(fp32_model) as src, atomic_path(Path(out_path)) as tmp, _quiet():
        quantize_dynamic(str(src), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
    quantized, floating = count_quantized_nodes(onnx.load(str(out_path)))
    return Int8Result(quantized, floating, ())


# Per-channel Q/DQ (the axis attribute of QuantizeLinear / DequantizeLinear) exists from opset 13;
# ONNX Runtime's quantizer writes it into an older model anyway, which then does not load.
MIN_QDQ_OPSET = 13


def _upgraded(model):
    """The model at opset >= MIN_QDQ_OPSET (onnx's version converter keeps tensor names, so the
    calibration file still matches the fp32 graph), or the model itself when it already is."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), MIN_QDQ_OPSET)
    if opset >= MIN_QDQ_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(proto, MIN_QDQ_OPSET)
    except Exception as exc:
        raise ConversionError(f"int8 ONNX: the model is opset {opset}; per-channel int8 needs opset {MIN_QDQ_OPSET} and "
                              f"onnx's version converter failed ({str(exc).strip().splitlines()[0][:200]}); re-export "
                              f"the model at opset {MIN_QDQ_OPSET} or newer") from None


@contextlib.contextmanager
def _as_file(model) -> Iterator[Path]:
    """ONNX Runtime's quantizers read a file most reliably: write a ModelProto to a temporary one."""
    model = _upgraded(model)
    if isinstance(model, (str, Path)):
        yield Path(model)
        return
    with tempfile.TemporaryDirectory(prefix="edgepack-q-") as tmp:
        path = Path(tmp) / "model.fp32.onnx"
        path.write_bytes(model.SerializeToString())
        yield path


def count_quantized_nodes(model) -> tuple[int, int]:
    """(compute nodes that run on int8 data, compute nodes that run in float). Q/DQ themselves and
    shape plumbing (Reshape, Flatten, ...) are not compute nodes."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    plumbing = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Gather", "Concat", "Slice",
                "Split", "Identity", "Cast"}
    quantized = floating = 0
    for node in model.graph.node:
        if node.op_type in QDQ_OPS or node.op_type in plumbing or node.op_type == "DynamicQuantizeLinear":
            continue
        if node.op_type in QUANTIZED_OPS:
            quantized += 1
            continue
        data = [i for i in node.input if i and i not in inits]
        if data and all(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in data):
            quantized += 1
        else:
            floating += 1
    return quantized, floating


def load_ranges(cache_path: Path) -> dict[str, tuple[float, float]]:
    """{tensor name: (min, max)} from the calibration file (ONNX Runtime's calibration cache)."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(Path(cache_path))
    return {name: (float(np.min(t.range_value[0])), float(np.max(t.range_value[1])))
            for name, t in data.data.items()}


def save_ranges(ranges: dict[str, tuple[float, float]], cache_path: Path, method: str = "minmax") -> None:
    """Write {tensor name: (min, max)} as the calibration file `load_ranges` and `quantize_int8` read
    (`method` is the --calib-method the file will be read with: ONNX Runtime checks they match)."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = {name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
            for name, (lo, hi) in ranges.items()}
    save_tensors_data(TensorsData(_method(method), data), Path(cache_path))
