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


def export(model_or_path: Any, *, output_dir: str | Path = "out", console: Any = None, **options: Any) -> dict:
    """Export and verify; returns the report (also written to OUTDIR/report.json).

    Keyword options are the fields of `edgepack.options` (the same names as `edgepack export`'s
    flags, dashes as underscores: input_shape, formats, target, calib, int8, fp16, min_cosine, ...;
    `edgepack.options.option_fields()` lists them). `input_shape`: "1x3x224x224",
    "name:1x3x224x224", a tuple of ints, a list of those strings, or a dict name -> shape. Raises
    `edgepack.errors.EdgepackError` subclasses on bad input; an artifact that fails verification is
    reported with ok=False (report["exit_code"] says why)."""
    from edgepack.devices import load_profile
    from edgepack.options import ExportOptions

    # Every flag (formats, shapes, target) is checked before the pipeline imports onnx_ir, onnxscript
    # and torch (seconds): a typo is rejected at once.
    opts = ExportOptions.create(output_dir, **options)
    load_profile(opts.target.target)
    from edgepack.pipeline import run_export

    return run_export(model_or_path, opts, console)


__all__ = ["export", "__version__"]
