"""What every artifact is built and verified from, and what a builder returns."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from edgepack.options import ExportOptions
from edgepack.verify import VerificationSet

if TYPE_CHECKING:
    from edgepack.artifacts.guard import Guard
    from edgepack.calibrate import Calibration


@dataclass
class EvalSet:
    """Labelled data for task accuracy (--eval): x (M, *input_shape[1:]) for the first input (and
    `more_inputs` {name: (samples, shape)} for the others), labels y (M, ...). Scored by top-1 of the
    first output, or by the user's --eval-metric `module:function(outputs, labels) -> float`
    (`metric`: its text; `metric_fn`: the function, see edgepack.evaluate)."""

    path: Path
    x: np.ndarray
    y: np.ndarray
    input_name: str
    input_shape: tuple[int, ...]
    reference_top1: float | None = None  # the reference model's score (top-1, or the metric's value)
    metric: str | None = None
    metric_fn: Callable[[list[np.ndarray], np.ndarray], float] | None = field(default=None, repr=False)
    more_inputs: dict[str, tuple[np.ndarray, tuple[int, ...]]] = field(default_factory=dict)

    def accuracy(self, run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]) -> float:
        return self.score([run(feed) for feed in self.feeds()])

    def feeds(self) -> list[dict[str, np.ndarray]]:
        """One feed per batch of the model's batch size, every input."""
        batch = self.input_shape[0]
        n = (len(self.x) // batch) * batch
        inputs = {self.input_name: (self.x, self.input_shape), **self.more_inputs}
        return [{name: x[i : i + batch].reshape(shape) for name, (x, shape) in inputs.items()} for i in range(0, n, batch)]

    def score(self, outputs: list[list[np.ndarray]]) -> float:
        """Top-1 of the first output, or the user's metric, from each feed's outputs (in feed order)."""
        batch = self.input_shape[0]
        n = len(outputs) * batch
        if self.metric is None:
            correct = sum(int((np.asarray(outs[0]).reshape(batch, -1).argmax(-1) == self.y[i * batch : (i + 1) * batch]).sum())
                          for i, outs in enumerate(outputs))
            return correct / n
        from edgepack.evaluate import load_metric, score

        if self.metric_fn is None:  # after pickling (a sweep's worker): import it here
            self.metric_fn = load_metric(self.metric)
        return score(self.metric, self.metric_fn, [np.concatenate([np.asarray(o) for o in outs])
                                                   for outs in zip(*outputs)], self.y[:n])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "metric_fn": None}  # the user's function is imported again where it runs

    def entry(self, value: float) -> dict:
        """An artifact's report `accuracy`: {"top1", "samples"}, or with a metric {"metric", "value", "samples"}."""
        if self.metric is None:
            return {"top1": value, "samples": len(self.y)}
        return {"metric": self.metric, "value": value, "samples": len(self.y)}

    def to_report(self) -> dict:
        """The report's `evaluation` section."""
        if self.metric is None:
            return {"file": str(self.path), "samples": len(self.y), "reference_top1": self.reference_top1}
        return {"file": str(self.path), "samples": len(self.y), "metric": self.metric, "reference_value": self.reference_top1}


@dataclass
class Built:
    """What a builder made: its files (the one a runtime loads first), report details, IO rows as
    written, and for int8 the accuracy guard's hooks (None: the guard does not apply)."""

    files: list[Path]
    details: dict
    inputs: list[dict]
    outputs: list[dict]
    guard: "Guard | None" = None


@dataclass
class ExportContext:
    """What every artifact is built and verified from."""

    model: ir.Model
    name: str
    out_dir: Path
    vset: VerificationSet
    reference: list[np.ndarray]
    output_names: list[str]
    options: ExportOptions
    calibration: "Calibration | None" = None
    already_quantized: bool = False
    eval_set: EvalSet | None = None
    int8_float_nodes: list[str] = field(default_factory=list)  # the accuracy guard's choice for the int8 ONNX
    work_dir: Path = field(default_factory=Path)  # scratch files of this export (removed with it)
    cache: dict = field(default_factory=dict, repr=False)  # work shared by the artifacts of one export
    _proto: Any = field(default=None, repr=False)

    @property
    def fp32_proto(self) -> Any:
        if self._proto is None:
            self._proto = fp32_proto_of(self.model)
        return self._proto

    @property
    def int8_proto(self) -> Any:
        """The float ModelProto every int8 exporter quantizes (ONNX, TFLite, ncnn alike): the
        calibration step's (cross-layer equalized, bias corrected) when it changed the graph, else
        the folded int8 graph (pipeline.int8_graph), else the fp32 graph."""
        cal = self.calibration
        return cal.model if cal is not None and cal.model is not None else self.fp32_proto

    @property
    def int8_model(self) -> ir.Model:
        """`int8_proto` as the ir.Model the TFLite and ncnn writers read."""
        cal = self.calibration
        if cal is None or cal.model is None:
            return self.model
        if "int8_model" not in self.cache:
            self.cache["int8_model"] = ir.from_proto(cal.model)
        return self.cache["int8_model"]

    def runner(self, entry: dict) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
        """Run a built artifact on ONNX-layout feeds; outputs in ONNX layout (edgepack.runtimes.artifact)."""
        from edgepack.runtimes import work_threads
        from edgepack.runtimes.artifact import artifact_runner

        return artifact_runner(self.out_dir / entry["path"], entry, threads=work_threads())

    def outputs(self, entry: dict, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """A built artifact's outputs for each feed (ONNX layout); ncnn and LiteRT run in one child
        process for all of them, so a native crash fails this artifact, not the export."""
        from edgepack.runtimes import work_threads
        from edgepack.runtimes.artifact import run_feeds_isolated

        return run_feeds_isolated(self.out_dir / entry["path"], entry, feeds, threads=work_threads())


def fp32_proto_of(model: ir.Model) -> Any:
    """The processed fp32 graph as an ONNX ModelProto without edgepack's private metadata."""
    from edgepack.converters.export_onnx import strip_private_metadata, to_proto

    return strip_private_metadata(to_proto(model))


def io_rows(values: Any) -> list[dict]:
    layouts = {2: "NC", 3: "NCW", 4: "NCHW", 5: "NCDHW"}
    out = []
    for v in values:
        shape = [d if isinstance(d, int) else str(d) for d in v.shape] if v.shape is not None else None
        dtype = v.dtype.numpy().name if v.dtype is not None else None
        out.append({"name": v.name, "shape": shape, "dtype": dtype, "layout": layouts.get(len(shape)) if shape else None})
    return out


def describe(entry: dict, built: Built, ctx: ExportContext) -> None:
    """Copy what a builder made into the artifact's report entry."""
    from edgepack.fsutil import deflated_size, file_entry

    entry.update(built.details)
    entry["path"] = built.files[0].name
    entry["files"] = [file_entry(f, ctx.out_dir) for f in built.files]
    entry["size_bytes"] = sum(f["size_bytes"] for f in entry["files"])
    # what a download of it costs: zlib releases the GIL, so this runs on another core while the
    # artifact is verified (a ResNet-18-sized file takes seconds); settle_deflated fills it in
    pending = ctx.cache.setdefault("deflating", {})
    if "deflate_pool" not in ctx.cache:
        from concurrent.futures import ThreadPoolExecutor

        ctx.cache["deflate_pool"] = ThreadPoolExecutor(1, thread_name_prefix="edgepack-deflate")
    data = [f.read_bytes() for f in built.files]  # these bytes: a rebuild may rewrite the file meanwhile
    pending[id(entry)] = (entry, ctx.cache["deflate_pool"].submit(lambda: sum(deflated_size(d) for d in data)))
    entry["deflated_bytes"] = None
    entry["inputs"], entry["outputs"] = built.inputs, built.outputs


def settle_deflated(ctx: ExportContext) -> None:
    """Write each artifact's deflated size (computed in the background by `describe`) into its entry."""
    for entry, future in ctx.cache.pop("deflating", {}).values():
        entry["deflated_bytes"] = future.result()
    pool = ctx.cache.pop("deflate_pool", None)
    if pool is not None:
        pool.shutdown()


def int8_mac_share(ctx: ExportContext, entry: dict) -> float | None:
    """Share of the model's MACs that run in int8 in this artifact (None for other precisions):
    1 minus the MACs of the ONNX nodes it keeps float (accuracy-guard float nodes, ops without an int8
    kernel, ncnn layers kept fp32)."""
    if entry.get("precision") != "int8" or ctx.already_quantized:
        return None
    if "node_macs" not in ctx.cache:
        from edgepack.model_stats import node_macs

        ctx.cache["node_macs"] = {n.name: node_macs(n) for n in ctx.int8_model.graph}
    macs = ctx.cache["node_macs"]
    total = sum(macs.values())
    if total == 0:
        return 1.0
    floating = set(entry.get("float_nodes") or [])
    for op in entry.get("float_ops") or []:
        floating.update(op.get("from") or [])
    for layer in entry.get("float_layers") or []:
        if layer.get("onnx_node"):
            floating.add(layer["onnx_node"])
    return 1.0 - sum(macs.get(n, 0) for n in floating) / total
