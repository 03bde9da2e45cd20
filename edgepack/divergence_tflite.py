"""Compare a TFLite artifact with an ONNX model tensor by tensor, to find the operator that breaks
the TFLite int8 (or fp16) graph.

The TFLite exporter names every tensor that holds an ONNX value after that value, so a TFLite
tensor and an ONNX tensor with the same name are the same value (possibly in another layout:
NHWC inside for images). The TFLite model runs in LiteRT with `experimental_preserve_all_tensors`
(every intermediate tensor readable after `invoke`, XNNPACK off so the reference kernels run);
int8 tensors are dequantized with their own scale and zero point. The reference runs in ONNX
Runtime with every float tensor exposed (`divergence.intermediate_outputs`); for a QDQ int8
ONNX reference a tensor's value is the one its consumers see, after its QuantizeLinear ->
DequantizeLinear pair (`divergence._Graph.seen_as`).

Layout: a TFLite tensor whose shape is the ONNX shape is compared as is; otherwise the stored
axes are matched to the ONNX axes by the permutations the exporter uses (NHWC, NWC, channels-last
of rank 5), then by any permutation that gives the same shape; when several fit (H = W = C), the
one closest to the reference counts and the row says `layout_ambiguous`.

Per row, in the TFLite operator order: tensor, TFLite op, dtype, scale / zero point (int8),
cosine, SQNR (dB) and max abs error against the reference, `upstream_sqnr_db` (the worst matched
input of that operator), and `sqnr_drop_db`, the damage done between them: the largest drop is
the culprit. Written by hand: LiteRT's own debugger (QuantizationDebugger) needs TensorFlow.

onnx, onnxruntime and ai_edge_litert are imported inside the functions; torch not at all.
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.divergence import _Accumulator, _drop, _Graph, intermediate_outputs, load_model
from edgepack.errors import UsageError

_CHANNELS_LAST = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}


def tflite_per_tensor(tflite_path: str | Path, reference: Any, feeds_list: Sequence[Mapping[str, np.ndarray]]) -> list[dict]:
    """One row per TFLite tensor that holds a tensor of `reference` (an ONNX model: path or
    ModelProto, float or QDQ int8), in TFLite operator order; `feeds_list` in ONNX layout. See the
    module doc for the columns."""
    if not feeds_list:
        raise UsageError("no input samples to compare on")
    ref_graph = _Graph(load_model(reference, "reference"))
    model = _TfliteRun(Path(tflite_path))
    onnx_names = {t for t in ref_graph.node_outputs if ref_graph.matchable(t)} | set(ref_graph.input_names)
    shared = [n for n in model.names if n in onnx_names]
    if not shared:
        raise UsageError(f"{tflite_path} shares no tensor name with the reference ONNX model: compare artifacts of one export")
    view = {n: ref_graph.seen_as(n) for n in shared}
    ref = intermediate_outputs(ref_graph.proto, feeds_list, [view[n] for n in shared if view[n] in ref_graph.producer])
    for name in ref_graph.input_names:
        ref[name] = np.stack([np.asarray(f[name], np.float32) for f in feeds_list])
    acc: dict[str, _Accumulator] = {}
    perms: dict[str, tuple[int, ...] | None] = {}
    ambiguous: set[str] = set()
    for k, feed in enumerate(feeds_list):
        values = model.run(feed, {n: ref[n].shape[1:] for n in ref_graph.input_names})
        for n in shared:
            r = ref.get(view[n])
            if r is None or n not in values:
                continue
            r = r[k]
            if n not in perms:
                candidates = _layouts(values[n].shape, r.shape)
                if len(candidates) > 1:
                    ambiguous.add(n)
                perms[n] = max(candidates, key=lambda p: _cos(r, _to_onnx(values[n], p))) if candidates else None
            if perms[n] is None:
                continue
            acc.setdefault(n, _Accumulator()).add(r, _to_onnx(values[n], perms[n]))
    sqnr = {n: a.sqnr_db() for n, a in acc.items()}
    producer = {o: ins for _, ins, outs in model.ops for o in outs}

    def seen(t: str) -> float:  # a tensor without an ONNX counterpart: the worst of what it is made from
        if t not in sqnr:
            sqnr[t] = float("inf")  # constants, graph inputs; also stops a cycle
            sqnr[t] = min((seen(i) for i in producer.get(t, ())), default=float("inf"))
        return sqnr[t]

    rows = []
    for op_name, inputs, outputs in model.ops:
        upstream = min((seen(i) for i in inputs), default=float("inf"))
        for o in outputs:
            if o not in acc:
                continue
            info = model.info[o]
            rows.append({"tensor": o, "op": op_name, "dtype": info["dtype"], "scale": info["scale"],
                         "zero_point": info["zero_point"], "cosine": acc[o].cosine(), "sqnr_db": sqnr[o],
                         "max_abs_error": acc[o].max_abs_error(), "upstream_sqnr_db": upstream,
                         "sqnr_drop_db": _drop(upstream, sqnr[o]), "layout_ambiguous": o in ambiguous})
    return rows


def worst(rows: Sequence[dict], top: int = 10) -> list[dict]:
    """The `top` rows with the largest SQNR drop (then the lowest SQNR)."""
    return sorted(rows, key=lambda r: (-r["sqnr_drop_db"], r["sqnr_db"]))[:top]


class _TfliteRun:
    """A LiteRT interpreter with every tensor kept, read back as float in stored layout."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        with warnings.catch_warnings():  # keeping every tensor is a debugging aid: that is the point here
            warnings.simplefilter("ignore")
            self.it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True, num_threads=1,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.it.allocate_tensors()
        details = self.it.get_tensor_details()
        self.info: dict[str, dict] = {}
        index_of: dict[str, int] = {}
        names_by_index = {}
        for d in details:
            q = d.get("quantization_parameters") or {}
            scales, zps = q.get("scales", np.zeros(0)), q.get("zero_points", np.zeros(0))
            quantized = d["dtype"] in (np.int8, np.uint8, np.int16) and len(scales) == 1
            self.info[d["name"]] = {"dtype": np.dtype(d["dtype"]).name, "scale": float(scales[0]) if quantized else None,
                                    "zero_point": int(zps[0]) if quantized else None}
            index_of[d["name"]] = d["index"]
            names_by_index[d["index"]] = d["name"]
        self.index_of = index_of
        self.ops = [(op["op_name"], [names_by_index[i] for i in op["inputs"] if i >= 0],
                     [names_by_index[i] for i in op["outputs"]]) for op in self.it._get_ops_details()]
        produced = {o for _, _, outs in self.ops for o in outs}
        self.inputs = self.it.get_input_details()
        self.names = [d["name"] for d in self.inputs] + [o for _, _, outs in self.ops for o in outs if o in produced]

    def run(self, feed: Mapping[str, np.ndarray], onnx_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        for d in self.inputs:
            name = d["name"]
            if name not in feed:
                raise UsageError(f"the TFLite input {name!r} is not among the feeds {sorted(feed)}")
            x = np.asarray(feed[name], np.float32)
            perm = next(iter(_layouts(tuple(d["shape"]), x.shape)), None)
            if perm is None:
                raise UsageError(f"TFLite input {name!r} has shape {list(d['shape'])}; the feed has {list(x.shape)}")
            stored = np.array(x.transpose(perm), order="C")  # (ascontiguousarray makes a scalar 1-D)
            if d["dtype"] == np.int8:
                scale, zp = d["quantization"]
                stored = np.clip(np.round(stored / scale) + zp, -128, 127).astype(np.int8)
            self.it.set_tensor(d["index"], stored)
        self.it.invoke()
        out = {}
        for name in self.names:
            try:
                v = self.it.get_tensor(self.index_of[name])
            except ValueError:
                continue
            info = self.info[name]
            if info["scale"] is not None:
                v = (v.astype(np.float32) - info["zero_point"]) * info["scale"]
            elif v.dtype.kind != "f":
                continue
            out[name] = v.astype(np.float32)
        return out


def _layouts(stored: tuple[int, ...], onnx_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Permutations p (stored axis i = ONNX axis p[i]) with stored == onnx_shape[p]: identity and
    channels-last first, then any other; empty when none fits."""
    stored, onnx_shape = tuple(int(d) for d in stored), tuple(int(d) for d in onnx_shape)
    if len(stored) != len(onnx_shape):
        return []
    rank = len(stored)
    first = [tuple(range(rank))] + ([_CHANNELS_LAST[rank]] if rank in _CHANNELS_LAST else [])
    fits = [p for p in first if tuple(onnx_shape[a] for a in p) == stored]
    if fits or rank > 5:
        return fits
    return [p for p in itertools.permutations(range(rank)) if tuple(onnx_shape[a] for a in p) == stored]


def _to_onnx(stored: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    return stored.transpose(np.argsort(perm))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else 0.0
