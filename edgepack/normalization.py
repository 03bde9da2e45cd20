"""The input normalisation for image calibration when the user gives no --scale/--mean/--std: the one
the model ships, where it ships one, else raw pixels with a warning.

A model ships it as data, read here without importing its library: timm models carry
`pretrained_cfg` (mean and std in 0-1 units, so pixels are scaled by 1/255 first); ultralytics
models (`ultralytics.nn.tasks.*Model`) take RGB scaled to 0-1 (their `LetterBox` + `/ 255`), no mean
or std. An ExportedProgram, a TorchScript file or an ONNX model records neither: the user's flags
decide, and raw 0-255 pixels are named as such."""
from __future__ import annotations

import dataclasses
from typing import Any

from edgepack.options import Preprocessing

PIXEL_SCALE = 1.0 / 255.0


def shipped_normalization(model: Any) -> tuple[dict[str, Any], str] | None:
    """(Preprocessing fields, where they came from) for a model that ships its normalisation, else None."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and _floats(cfg.get("mean")) and _floats(cfg.get("std")):
        return ({"scale": PIXEL_SCALE, "mean": _floats(cfg["mean"]), "std": _floats(cfg["std"])},
                f"timm pretrained_cfg of {type(model).__name__}")
    if type(model).__module__.startswith("ultralytics."):
        return {"scale": PIXEL_SCALE}, f"ultralytics {type(model).__name__} (RGB scaled to 0-1)"
    return None


def image_preprocessing(preprocessing: Preprocessing, model: Any) -> tuple[Preprocessing, str, str | None]:
    """(the preprocessing applied to an image folder, its source, a warning or None)."""
    if any(v is not None for v in (preprocessing.scale, preprocessing.mean, preprocessing.std)):
        return preprocessing, "flags", None
    shipped = shipped_normalization(model)
    if shipped is not None:
        fields, source = shipped
        applied = dataclasses.replace(preprocessing, **fields)
        return applied, source, (f"image calibration: no --scale/--mean/--std given; applied the normalisation the "
                                 f"model ships ({source}): {_describe(applied)}")
    return preprocessing, "none given: raw 0-255 pixels", (
        "image calibration feeds raw 0-255 pixels: no --scale/--mean/--std was given and the model ships no "
        "normalisation; torchvision and timm models expect --scale 0.00392157 --mean 0.485,0.456,0.406 "
        "--std 0.229,0.224,0.225")


def _describe(p: Preprocessing) -> str:
    parts = [f"x * {p.scale:.6g}"] if p.scale is not None else []
    if p.mean is not None or p.std is not None:
        parts.append(f"(x - {list(p.mean or (0.0,))}) / {list(p.std or (1.0,))}")
    return ", then ".join(parts)


def _floats(values: Any) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return out or None
