"""Task accuracy on labelled data (--eval): reading the .npz and the user's metric.

The data: an .npz with the labels `y` (M, ...) and the inputs, `x` (M, ...) for a model with one
input or one array per input name for several. The score: top-1 of the first output against integer
labels y (M,), or --eval-metric `module:function` (or `path/to/file.py:function`) called as
`function(outputs, labels) -> float`, with `outputs` a list of (M, ...) arrays, one per model output
in order, and `labels` the y array as stored (mAP, IoU, exact match: whatever the task's metric is).
The metric is the user's code: it is imported where the artifact is evaluated (a sweep's worker
process too), so its module must be importable there or given as a file path."""
from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import UsageError, first_line

Metric = Callable[[list[np.ndarray], np.ndarray], float]


def load_metric(spec: str) -> Metric:
    """`package.module:function` (importable here) or `path/to/file.py:function`."""
    module_name, _, func_name = spec.rpartition(":")
    if not module_name or not func_name:
        raise UsageError(f"--eval-metric {spec!r} must be 'module:function' or 'file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UsageError(f"--eval-metric {spec!r}: {path} not found; give the metric's file path or an importable module")
            mod_spec = importlib.util.spec_from_file_location(f"edgepack_user_metric_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import
        raise UsageError(f"--eval-metric {spec!r}: cannot import {module_name} ({type(exc).__name__}: {first_line(exc)}); "
                         "check that it is importable here (PYTHONPATH) or give it as a file path") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise UsageError(f"--eval-metric {spec!r}: {module_name} has no function {func_name!r}")
    return fn


def score(spec: str, fn: Metric, outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Call the user's metric; its exception or a non-number is one line naming the metric."""
    try:
        value = fn(outputs, labels)
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise UsageError(f"--eval-metric {spec} raised {type(exc).__name__}: {first_line(exc)}") from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--eval-metric {spec} returned {type(value).__name__}, not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"--eval-metric {spec} returned {value}; it must return a finite number")
    return value


def load_eval_arrays(path: Path, specs: list[Any], with_metric: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The inputs {name: (M, ...)} and labels of an --eval .npz, checked against the model's inputs
    (`specs`: name and shape of each)."""
    try:
        data = np.load(path, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise UsageError(f"--eval {path} not found") from None
    except (ValueError, OSError) as exc:
        raise UsageError(f"--eval {path} must be an .npz with arrays x (samples) and y (labels) ({exc})") from None
    names = [s.name for s in specs]
    wanted = ["x"] if len(specs) == 1 and "x" in arrays else names
    missing = [k for k in wanted + ["y"] if k not in arrays]
    if missing:
        expected = "x and y" if len(specs) == 1 else f"y and one array per input ({', '.join(names)})"
        raise UsageError(f"--eval {path} has arrays {sorted(arrays)}; missing {missing}: expected {expected}")
    y = arrays["y"]
    inputs = {s.name: arrays[key] for s, key in zip(specs, wanted)}
    for spec, key in zip(specs, wanted):
        x = inputs[spec.name]
        if tuple(x.shape[1:]) != tuple(spec.shape[1:]) or len(x) != len(y):
            raise UsageError(f"--eval {path}: {key} has shape {list(x.shape)} and y {list(y.shape)}; expected {key} (M, "
                             f"{', '.join(map(str, spec.shape[1:]))}) and y (M, ...)")
    if not with_metric and y.ndim != 1:
        raise UsageError(f"--eval {path}: y has shape {list(y.shape)}; top-1 needs one integer label per sample (M,): "
                         "pass --eval-metric module:function for other labels")
    return {k: v.astype(np.float32) for k, v in inputs.items()}, (y if with_metric else y.astype(np.int64))
