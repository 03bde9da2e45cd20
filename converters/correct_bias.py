"""Empirical bias correction (Nagel et al. 2019, Sec. 4.2; NNCF's fast bias correction): int8
rounding of weights and activations shifts the mean of a layer's output channels. For each Conv,
Gemm and MatMul+Add with a constant weight, the per-output-channel mean of (output from int8-rounded
input and weights - float output) over the calibration feeds is subtracted from its float bias
(a zero bias is added where there was none).

The error is each layer's own: its input comes from the float graph and is rounded with the
range the exporters will use (ONNX Runtime's asymmetric int8 formula), its weight is rounded
per output channel as ONNX Runtime, TFLite and ncnn do. Measured that way the layers do not see
each other's corrections, so one pass corrects all of them without counting an error twice (a
measurement on the whole int8 model corrects every later layer for an error the earlier ones
remove: it made MobileNetV3 worse). The correction goes into the float model, before any format
is quantized, so every int8 exporter inherits it; that float model is for quantization only
(its fp32 output differs slightly from the original's).
Written here because ONNX Runtime has no bias correction and NNCF's needs its own graph."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgepack.converters import PassResult
from edgepack.converters.collect_activations import session

@dataclass(frozen=True)
class Target:
    node: str  # name of the node whose output is compared (Conv, Gemm, or the Add after a MatMul)
    output: str  # its output tensor in the float model
    bias: str  # the initializer corrected
    axis: int  # channel axis of the output


def name_nodes(model) -> None:
    """Give every node a unique name (the int8 model's nodes are matched by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_ptq_{i}"
        seen.add(node.name)


def find_targets(model) -> tuple[list[Target], list[dict]]:
    """Layers whose bias can be corrected, and the ones refused with the reason."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
            readers.setdefault(name, []).append(node)
    targets, skipped = [], []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        if node.op_type == "MatMul":
            add = readers.get(node.output[0], [])
            if len(add) != 1 or add[0].op_type != "Add":
                skipped.append({"node": node.name, "reason": "MatMul without a following bias Add"})
                continue
            bias = [i for i in add[0].input if i != node.output[0]]
            channels = w.dims[-1]
            if not bias or bias[0] not in inits or list(inits[bias[0]].dims) != [channels] or uses[bias[0]] != 1:
                skipped.append({"node": node.name, "reason": f"the Add after it has no own constant bias of [{channels}]"})
                continue
            targets.append(Target(add[0].name, add[0].output[0], bias[0], -1))
            continue
        channels = w.dims[0]
        if node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            channels = w.dims[0] if attrs.get("transB", 0) else w.dims[1]
            if attrs.get("beta", 1.0) != 1.0:
                skipped.append({"node": node.name, "reason": "Gemm with beta != 1"})
                continue
        if len(node.input) > 2 and node.input[2]:
            b = node.input[2]
            if b not in inits or list(inits[b].dims) != [channels] or uses[b] != 1:
                skipped.append({"node": node.name, "reason": f"bias is not an own constant of [{channels}]"})
                continue
        else:  # no bias: add a zero one
            b = f"{node.name}_ptq_bias"
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(channels, np.float32), b))
            inits[b] = model.graph.initializer[-1]
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = b
        targets.append(Target(node.name, node.output[0], b, 1))
    return targets, skipped


def _qparams(lo: float, hi: float) -> tuple[float, int]:
    """ONNX Runtime's asymmetric int8 activation scale and zero point for the range (lo, hi)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    return scale, int(np.clip(np.round(-128.0 - lo / scale), -128, 127))


def fake_quantize_weight(w: np.ndarray, axis: int) -> np.ndarray:
    """int8 symmetric per-channel quantize-dequantize along `axis` (ONNX Runtime's weight scheme:
    scale = max |w| / 127 per channel, values in [-127, 127])."""
    other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    scale = np.abs(w).max(axis=other, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(w.dtype)


def local_error_model(model, ranges: dict[str, tuple[float, float]], targets: Sequence[Target]):
    """A copy of `model` that also computes, for each target, its output from int8-rounded input and
    weights (the input taken from the float graph): outputs '<bias>__int8' beside the float ones.
    Each layer's own error, free of the error of the layers before (which their own corrections
    remove), so all layers are corrected at once without counting an error twice."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    by_name = {n.name: n for n in g.node}
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    for t in targets:
        last = by_name[t.node]
        layer = producer[[i for i in last.input if i in producer][0]] if last.op_type == "Add" else last
        x = layer.input[0]
        if x in ranges:
            scale, zero = _qparams(*ranges[x])
            g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{t.bias}__s"),
                                  numpy_helper.from_array(np.array(zero, np.int8), f"{t.bias}__z")])
            g.node.extend([helper.make_node("QuantizeLinear", [x, f"{t.bias}__s", f"{t.bias}__z"], [f"{t.bias}__xq"]),
                           helper.make_node("DequantizeLinear", [f"{t.bias}__xq", f"{t.bias}__s", f"{t.bias}__z"],
                                            [f"{t.bias}__x"])])
            x = f"{t.bias}__x"
        w = numpy_helper.to_array(inits[layer.input[1]])
        attrs = {a.name: helper.get_attribute_value(a) for a in layer.attribute}
        axis = {"Conv": 0, "MatMul": -1}.get(layer.op_type, 0 if attrs.get("transB", 0) else 1)
        g.initializer.append(numpy_helper.from_array(fake_quantize_weight(w, axis), f"{t.bias}__w"))
        result = f"{t.bias}__int8" if layer is last else f"{t.bias}__mm"
        copy = helper.make_node(layer.op_type, [x, f"{t.bias}__w", *layer.input[2:]], [result])
        copy.attribute.extend(layer.attribute)
        g.node.append(copy)
        if layer is not last:
            g.node.append(helper.make_node("Add", [result, t.bias], [f"{t.bias}__int8"]))
    return out


def mean_errors(model, ranges: dict[str, tuple[float, float]], feeds: Sequence[dict[str, np.ndarray]],
                targets: Sequence[Target]) -> dict[str, np.ndarray]:
    """Per target (by bias name): per-channel mean of (int8-rounded layer - float layer) over the feeds."""
    names = [n for t in targets for n in (t.output, f"{t.bias}__int8")]
    sess = session(local_error_model(model, ranges, targets), names)
    sums: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = dict(zip(names, sess.run(names, feed)))
        for t in targets:
            d = np.moveaxis(values[f"{t.bias}__int8"].astype(np.float64) - values[t.output], t.axis, 0)
            sums[t.bias] = sums.get(t.bias, 0.0) + d.reshape(d.shape[0], -1).mean(axis=1)
    return {k: v / max(len(feeds), 1) for k, v in sums.items()}


def correct_bias(model, feeds: Sequence[dict[str, np.ndarray]], ranges: dict[str, tuple[float, float]]
                 ) -> tuple[object, PassResult]:
    """A new float ModelProto whose biases cancel the mean int8 error measured with `ranges`."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    name_nodes(out)
    targets, skipped = find_targets(out)
    inits = {i.name: i for i in out.graph.initializer}
    errors = mean_errors(out, ranges, feeds, targets)
    for name, err in errors.items():
        bias = numpy_helper.to_array(inits[name])
        inits[name].CopyFrom(numpy_helper.from_array((bias - err).astype(bias.dtype), name))
    return out, PassResult("correct_bias", bool(errors), counts={"corrected": len(errors), "skipped": len(skipped)},
                           details=[{"bias": k, "mean_abs_shift": round(float(np.abs(v).mean()), 6)}
                                    for k, v in errors.items()],
                           skipped=skipped)
