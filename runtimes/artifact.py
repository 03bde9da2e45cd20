"""Run a built artifact on ONNX-layout feeds and get its outputs back in ONNX layout, whatever its
format: the one place that knows how an artifact's report entry describes its IO (a TFLite
tensor's `perm` from ONNX layout to its stored layout, int8 IO's `scale`/`zero_point`, an ncnn
blob name). Export verification, `pack` and `bench --verify` all run artifacts through it.

`run_feeds_isolated` is what export uses: ncnn and LiteRT run in one child process per call
(edgepack.runtimes.isolated), so a native crash on an artifact becomes an error for that artifact
instead of the end of the export.

Device side: numpy and the artifact's runtime only (no converters, no torch)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgepack.runtimes import get_runtime, runtime_for

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def to_stored(array: np.ndarray, perm: list[int]) -> np.ndarray:
    """An ONNX-layout array (batch of samples) in a TFLite tensor's stored layout."""
    if not perm:  # a scalar: np.ascontiguousarray would make it 1-D
        return np.array(array, copy=True).reshape(())
    return np.ascontiguousarray(array.transpose(perm))


def to_onnx_layout(array: np.ndarray, perm: list[int]) -> np.ndarray:
    if not perm:  # a scalar (LiteRT may hand back a rank-0 tensor as shape (1,))
        return np.array(array.reshape(()))  # (np.ascontiguousarray would make it 1-D)
    return np.ascontiguousarray(array.transpose(np.argsort(perm)))


def artifact_runner(path: Path, entry: dict, *, threads: int | None = None) -> Runner:
    """A function running the artifact at `path` (described by its report.json `entry`: format,
    precision, inputs, outputs) on ONNX-layout feeds, returning float32 outputs in ONNX layout in
    the order of entry["outputs"]."""
    path = Path(path)
    runtime = runtime_for(path)
    if runtime == "litert":
        return _tflite(path, entry["inputs"], entry["outputs"], threads)
    if runtime == "ncnn":
        return _ncnn(path, entry.get("precision"), entry["inputs"], entry["outputs"], threads)
    session = get_runtime(runtime).load(path, threads=threads)
    names = [d["name"] for d in entry["outputs"]]
    return lambda feed: [np.asarray(session.run(feed)[n]).astype(np.float32) for n in names]


ISOLATED_RUNTIMES = ("litert", "ncnn")  # native runtimes that can crash the process on an artifact they dislike


def run_feeds(path: str | Path, entry: dict, feeds: list[dict[str, np.ndarray]], threads: int | None = None
              ) -> list[list[np.ndarray]]:
    """The artifact's outputs (ONNX layout, float32) for each feed, in this process."""
    run = artifact_runner(Path(path), entry, threads=threads)
    return [run(feed) for feed in feeds]


def run_feeds_isolated(path: str | Path, entry: dict, feeds: list[dict[str, np.ndarray]], threads: int | None = None
                       ) -> list[list[np.ndarray]]:
    """`run_feeds`, with ncnn and LiteRT in one child process for all feeds (ONNX Runtime runs
    here). A crash raises edgepack.runtimes.isolated.ChildFailed naming the signal."""
    runtime = runtime_for(Path(path))
    if runtime not in ISOLATED_RUNTIMES:
        return run_feeds(path, entry, feeds, threads)
    from edgepack.runtimes import isolated

    return isolated.call(run_feeds, str(path), entry, feeds, threads, artifact=path, what=runtime, timeout=None)


def _tflite(path: Path, inputs: list[dict], outputs: list[dict], threads: int | None) -> Runner:
    session = get_runtime("litert").load(path, threads=threads)
    ins = {d["name"]: d for d in inputs}

    def quantize(x: np.ndarray, d: dict) -> np.ndarray:  # int8 IO (--int8-io)
        if "scale" not in d:
            return x
        return np.clip(np.round(x / d["scale"]) + d["zero_point"], -128, 127).astype(np.int8)

    def dequantize(y: np.ndarray, d: dict) -> np.ndarray:
        return (y.astype(np.float32) - d["zero_point"]) * d["scale"] if "scale" in d else y.astype(np.float32)

    def stored(x: np.ndarray, d: dict) -> np.ndarray:
        return to_stored(x, d["perm"]) if d.get("perm") is not None else x

    def onnx_layout(y: np.ndarray, d: dict) -> np.ndarray:
        return to_onnx_layout(y, d["perm"]) if d.get("perm") is not None else y

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        got = session.run({k: quantize(stored(v, ins[k]), ins[k]) for k, v in feed.items()})
        return [onnx_layout(dequantize(got[d["name"]], d), d) for d in outputs]

    return run


def _ncnn(path: Path, precision: str | None, inputs: list[dict], outputs: list[dict], threads: int | None) -> Runner:
    """ncnn is NCHW like ONNX with no batch axis inside (the adapter loops over it). ncnn stores
    activations in fp16 by default where the CPU can (x86 with F16C too): an fp32 artifact runs
    with that off, the others with ncnn's defaults, as deployed."""
    session = get_runtime("ncnn").load(path, threads=threads, fp16=False if precision == "fp32" else None)
    blob = {d["name"]: d.get("ncnn_blob", d["name"]) for d in inputs}

    def shaped(y: np.ndarray, d: dict) -> np.ndarray:
        shape = d.get("shape")
        fits = shape and all(isinstance(n, int) for n in shape) and int(np.prod(shape)) == y.size
        return y.reshape(shape) if fits else y

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        got = session.run({blob[k]: v for k, v in feed.items()})
        return [shaped(np.asarray(got[d.get("ncnn_blob", d["name"])], dtype=np.float32), d) for d in outputs]

    return run
