"""Calibration / verification data from files: a `.npy` array (N, ...) shaped like one model input
as PyTorch takes it (batch dimension dropped, or the full input shape per sample), or a `.npz` with
one array per input name. Image folders and preprocessing arrive with int8 calibration."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.errors import UsageError


def load_samples(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Return name -> float32 array (N, *shape[1:]) of per-batch-element samples."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--calib {path} not found")
    if path.is_dir():
        raise UsageError(f"--calib {path} is a folder; this version reads .npy or .npz calibration data")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UsageError(f"--calib {path} is not a readable .npy/.npz file ({str(exc).splitlines()[0]})") from None
    if isinstance(data, np.ndarray):
        if len(shapes) != 1:
            raise UsageError(f"--calib {path} holds one array but the model has inputs {list(shapes)}; pass a .npz with one array per input name")
        arrays = {next(iter(shapes)): data}
    else:
        missing = [n for n in shapes if n not in data.files]
        if missing:
            raise UsageError(f"--calib {path} has arrays {data.files}; missing input(s) {missing}")
        arrays = {n: data[n] for n in shapes}
    counts = set()
    out = {}
    for name, arr in arrays.items():
        shape = shapes[name]
        if arr.dtype.kind not in "fiub":
            raise UsageError(f"--calib array for input {name!r} has dtype {arr.dtype}; expected numbers (float32)")
        if tuple(arr.shape[1:]) == tuple(shape[1:]):
            samples = arr
        elif tuple(arr.shape[1:]) == tuple(shape) and shape[0] == 1:
            samples = arr.reshape((arr.shape[0],) + tuple(shape[1:]))
        else:
            raise UsageError(
                f"--calib array for input {name!r} has shape {list(arr.shape)}; expected (N, {', '.join(map(str, shape[1:]))}) "
                f"for input shape {list(shape)}"
            )
        out[name] = samples.astype(np.float32)
        counts.add(samples.shape[0])
    if len(counts) != 1:
        raise UsageError(f"--calib arrays have different sample counts {sorted(counts)}; give the same N for every input")
    if next(iter(counts)) == 0:
        raise UsageError(f"--calib {path} has no samples")
    return out
