"""Weight sharing (Deep Compression's second stage, Han et al. 2016): each layer's weights are
replaced by the nearest of K shared values (centroids), found by 1-D k-means with linear
initialisation (K values evenly spaced between the layer's min and max, which the paper found
keeps the large, rare weights best). The file keeps its format and size; what shrinks is the
deflated size (an app download, a zip), because a layer now holds K distinct values.

Applies to TFLite artifacts (the object model of `ai_edge_litert`'s schema): the weight input of
CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, FULLY_CONNECTED and BATCH_MATMUL, whether stored as
float32, as float16 behind a DEQUANTIZE (fp16 artifacts), or as int8 (full-integer artifacts: the
integer levels are shared, the per-channel scales stay). Biases and other constants are untouched.

The k-means is written with numpy (sorted centroids, assignment by `searchsorted` on the midpoints,
so one iteration is O(n log K)) rather than taken from scikit-learn, which is not a core
dependency and whose 1-D k-means is no shorter to call with this initialisation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.errors import UsageError
from edgepack.tflite_schema import builtin_names

WEIGHT_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "TRANSPOSE_CONV": 1, "FULLY_CONNECTED": 1, "BATCH_MATMUL": 1}
_MAX_ITERATIONS = 50


@dataclass(frozen=True)
class ClusterResult:
    clusters: int
    layers: list[dict]  # per weight tensor: name, op, dtype, size, distinct before/after, rel_error

    def to_json(self) -> dict:
        return {"clusters": self.clusters, "layers_clustered": len(self.layers), "layers": self.layers}


def kmeans_1d(values: np.ndarray, k: int, iterations: int = _MAX_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """(centroids sorted ascending, index of each value's centroid). Linear initialisation; an
    empty cluster keeps its centroid; stops when no assignment changes."""
    x = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(x.min()), float(x.max())
    centroids = np.linspace(lo, hi, k) if hi > lo else np.full(1, lo)
    labels = None
    for _ in range(iterations):
        new = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, x)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        sums = np.bincount(labels, weights=x, minlength=len(centroids))
        counts = np.bincount(labels, minlength=len(centroids))
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        order = np.argsort(centroids, kind="stable")  # keep them sorted for searchsorted
        if not np.array_equal(order, np.arange(len(order))):
            centroids = centroids[order]
            labels = None
    if labels is None:
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, x)
    return centroids, labels


def share_values(array: np.ndarray, k: int) -> np.ndarray:
    """`array` with every value replaced by its centroid, in the same dtype (integers: rounded)."""
    centroids, labels = kmeans_1d(array, k)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        centroids = np.clip(np.round(centroids), info.min, info.max)
    return centroids.astype(array.dtype)[labels].reshape(array.shape)


def cluster_tflite(model: Any, k: int) -> ClusterResult:
    """Share each weight tensor's values among `k` centroids, in place on a ModelT."""
    from ai_edge_litert import schema_py_generated as s

    if not 2 <= k <= 256:
        raise UsageError(f"--cluster {k}: the number of shared values per layer must be between 2 and 256")
    names = builtin_names()
    dtypes = {s.TensorType.FLOAT32: np.float32, s.TensorType.FLOAT16: np.float16, s.TensorType.INT8: np.int8}
    layers: list[dict] = []
    done: set[int] = set()
    for sub in model.subgraphs or []:
        producer = {int(o): op for op in sub.operators or [] for o in op.outputs}
        for op in sub.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            op_name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
            slot = WEIGHT_INPUT.get(op_name)
            if slot is None or len(op.inputs) <= slot:
                continue
            index = int(op.inputs[slot])
            source = producer.get(index)
            if source is not None and names.get(model.operatorCodes[source.opcodeIndex].builtinCode) == "DEQUANTIZE":
                index = int(source.inputs[0])  # fp16 weights: the float16 constant behind the DEQUANTIZE
            tensor = sub.tensors[index]
            buf = model.buffers[tensor.buffer] if tensor.buffer else None
            if buf is None or buf.data is None or tensor.type not in dtypes or tensor.buffer in done:
                continue
            raw = np.asarray(buf.data, dtype=np.uint8).tobytes()
            weights = np.frombuffer(raw, dtype=dtypes[tensor.type])
            if weights.size <= k:
                continue
            shared = share_values(weights, k)
            buf.data = np.frombuffer(shared.tobytes(), dtype=np.uint8)
            done.add(tensor.buffer)
            w64 = weights.astype(np.float64)
            scale = float(np.abs(w64).max()) or 1.0
            layers.append({
                "tensor": _text(tensor.name), "op": op_name, "dtype": np.dtype(dtypes[tensor.type]).name,
                "size": int(weights.size), "distinct_before": _distinct(weights), "distinct_after": _distinct(shared),
                "rel_error": float(np.abs(shared.astype(np.float64) - w64).max() / scale),
            })
    return ClusterResult(k, layers)


def _distinct(array: np.ndarray) -> int:
    """Distinct values, counted on the bit patterns (np.unique on float16 is unreliable in numpy 2)."""
    return int(np.unique(array.view(f"u{array.itemsize}")).size)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
