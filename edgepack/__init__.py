"""edgepack: compressed PyTorch models to verified ONNX / TFLite / ncnn artifacts for edge devices.

Python API mirroring `edgepack export`:

    import edgepack
    report = edgepack.export("model.pt2", output_dir="out", input_shape="1x3x224x224", target="rpi4")
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

try:
    __version__ = metadata.version("edgepack")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"


def export(
    model_or_path: Any,
    *,
    output_dir: str | Path = "out",
    input_shape: Any = None,
    formats: str | tuple[str, ...] = ("onnx",),
    target: str = "host",
    name: str | None = None,
    allow_pickle: bool = False,
    arch: str | None = None,
    calib: str | Path | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    scale: float | None = None,
    bgr: bool = False,
    layout: str | None = None,
    opset: int = 18,
    seed: int = 0,
    tolerance: float | None = None,
    prune: bool = True,
    prune_approx: bool = False,
    round_channels: int | None = None,
    int8: bool = False,
    fp16: bool = False,
    int8_weights_only: bool = False,
    fp16_io: bool = False,
    calib_method: str = "minmax",
    calib_samples: int | None = None,
    resize: int | tuple[int, int] | None = None,
    crop: int | tuple[int, int] | None = None,
    min_cosine: float | None = None,
    min_top1: float | None = None,
    eval_data: str | Path | None = None,
    tflite_nchw_input: bool = False,
    int8_io: bool = False,
    ncnn_fp32: bool = False,
    console: Any = None,
) -> dict:
    """Export and verify; returns the report (also written to OUTDIR/report.json).

    `input_shape`: "1x3x224x224", "name:1x3x224x224", a tuple of ints, a list of those strings, or
    a dict name -> shape. Raises `edgepack.errors.EdgepackError` subclasses on bad input; an
    artifact that fails verification is reported with ok=False (report["exit_code"] says why)."""
    from edgepack.options import ExportOptions, Preprocessing
    from edgepack.pipeline import run_export

    options = ExportOptions(
        output_dir=Path(output_dir),
        formats=formats,
        target=target,
        inputs=_input_specs(input_shape),
        name=name,
        allow_pickle=allow_pickle,
        arch=arch,
        calib=Path(calib) if calib is not None else None,
        preprocessing=Preprocessing(mean=_tuple(mean), std=_tuple(std), scale=scale, bgr=bgr, layout=layout,
                                    resize=_size(resize), crop=_size(crop)),
        opset=opset,
        seed=seed,
        fp32_tolerance=tolerance,
        prune=prune,
        prune_approx=prune_approx,
        round_channels=round_channels,
        int8=int8,
        fp16=fp16,
        int8_weights_only=int8_weights_only,
        fp16_io=fp16_io,
        calib_method=calib_method,
        calib_samples=calib_samples,
        min_cosine=min_cosine,
        min_top1=min_top1,
        eval_data=Path(eval_data) if eval_data is not None else None,
        tflite_nchw_io=tflite_nchw_input,
        int8_io=int8_io,
        ncnn_fp32=ncnn_fp32,
    )
    return run_export(model_or_path, options, console)


def _tuple(x: Any) -> tuple[float, ...] | None:
    return None if x is None else tuple(float(v) for v in (x if isinstance(x, (list, tuple)) else [x]))


def _size(x: Any) -> tuple[int, int] | None:
    if x is None:
        return None
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[-1]))


def _input_specs(value: Any) -> tuple:
    from edgepack.options import InputSpec

    if value is None:
        return ()
    if isinstance(value, str):
        return (InputSpec.parse(value),)
    if isinstance(value, dict):
        return tuple(InputSpec(str(k), tuple(int(d) for d in v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and value and all(isinstance(d, int) for d in value):
        return (InputSpec(None, tuple(value)),)
    return tuple(InputSpec.parse(v) if isinstance(v, str) else InputSpec(None, tuple(v)) for v in value)


__all__ = ["export", "__version__"]
