"""Intermediate float tensors of an ONNX model over calibration feeds, one feed at a time, and the
int8-vs-float cosine the PTQ passes are judged by.

Shared by the PTQ passes (search_ranges, correct_bias, improve_int8): ONNX Runtime runs a copy of
the model whose graph outputs are extended with the tensors asked for (graph optimizations off, so
every tensor keeps its name and its float value). Samples are streamed: nothing keeps all
activations of all feeds at once (80 MB per sample for a MobileNet at 224)."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

QDQ_COMPUTE = ("Conv", "Gemm", "MatMul")


def float_tensors(model) -> list[str]:
    """Names of the graph inputs and node outputs that hold float32 data (what ONNX Runtime's
    calibrator records), in graph order; initializers and Constant outputs excluded."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        names += [o for o in node.output if o]
    return [n for n in dict.fromkeys(names) if types.get(n, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT]


def session(model, outputs: Sequence[str] = (), optimize: bool = False):
    """ONNX Runtime session over a copy of `model` with `outputs` appended to its graph outputs."""
    import onnx
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in outputs:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            present.add(name)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(copy.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def iterate(model, feeds: Sequence[dict[str, np.ndarray]], names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    """For each feed, {name: value} of the tensors `names` (streamed, one feed at a time)."""
    sess = session(model, names)
    names = list(names)
    for feed in feeds:
        yield dict(zip(names, sess.run(names, feed)))


def run(model, feeds: Sequence[dict[str, np.ndarray]], optimize: bool = True) -> list[list[np.ndarray]]:
    """The graph outputs of `model` for each feed."""
    sess = session(model, optimize=optimize)
    return [sess.run(None, feed) for feed in feeds]


def cosine(reference: list[list[np.ndarray]], other: list[list[np.ndarray]]) -> float:
    """Mean over feeds and outputs of the cosine similarity of the flattened outputs."""
    values = []
    for ref, out in zip(reference, other):
        for a, b in zip(ref, out):
            a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
            denom = np.linalg.norm(a) * np.linalg.norm(b)
            values.append(1.0 if denom == 0 and not a.any() and not b.any() else float(a @ b / denom) if denom else 0.0)
    return float(np.mean(values)) if values else 1.0
