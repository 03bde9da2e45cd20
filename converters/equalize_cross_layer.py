"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction"; as in AIMET and NNCF): for two convolutions in a row, Conv1 -> [Relu |
LeakyRelu | nothing] -> Conv2, output channel i of Conv1 is divided by s_i and input channel i of
Conv2 multiplied by s_i, with s_i = sqrt(r1_i / r2_i) (r = the largest |weight| of that channel),
so both end up with the range sqrt(r1_i * r2_i). The float function is unchanged (ReLU is
positively homogeneous), while the per-tensor activation between them and the per-channel weights
of depthwise convolutions (whose channels BN folding leaves with ranges 100x apart) lose their
outlier channels. Chains (dw -> pw -> dw ...) are swept until the scales settle.

Refused, with the reason in the result: Clip/Relu6/HardSwish/SiLU/Sigmoid between the two (not
scale-equivariant: the clip bound or curve would change), a tensor read by more than one node or
by the graph output, shared or non-constant weights. BN is expected folded before (edgepack folds
it in fold_batchnorm.py), so the bias of Conv1 is the only other parameter to scale.

Written here because ONNX Runtime has no equalization and AIMET/NNCF work on their own graph
representations (PyTorch / OpenVINO), not on a plain ONNX graph."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepack.converters import PassResult

EQUIVARIANT = ("Relu", "LeakyRelu")  # f(s x) = s f(x) for s > 0
NOT_EQUIVARIANT = ("Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Silu", "Swish", "Tanh", "Gelu", "Mish", "Elu",
                   "Selu", "Softplus")
SWEEPS = 20
_EPS = 1e-12


@dataclass(frozen=True)
class Pair:
    first: str  # Conv1 node name (output channels scaled by 1/s)
    second: str  # Conv2 node name (input channels scaled by s)
    through: str  # op between them ("" if none)


class _Graph:
    """Index over a ModelProto: producers, consumers, initializers (as numpy, written back on save)."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        self.model = model
        self.consumers: dict[str, list] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in model.graph.output}
        self.inits = {i.name: i for i in model.graph.initializer}
        self.arrays = {name: numpy_helper.to_array(t).astype(np.float64) for name, t in self.inits.items()}
        self.changed: set[str] = set()

    def only_reader(self, tensor: str):
        readers = self.consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in self.outputs else None

    def save(self) -> None:
        from onnx import numpy_helper

        for name in self.changed:
            dtype = numpy_helper.to_array(self.inits[name]).dtype
            self.inits[name].CopyFrom(numpy_helper.from_array(self.arrays[name].astype(dtype), name))


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def can_equalize(g: _Graph, conv1) -> tuple[object | None, str, str]:
    """(Conv2 node, op between, "") when conv1's output feeds exactly one Conv2 through nothing or a
    scale-equivariant activation; else (None, op between, the reason it is refused)."""
    if len(conv1.input) < 2 or conv1.input[1] not in g.inits:
        return None, "", "Conv1's weight is not a constant"
    nxt = g.only_reader(conv1.output[0])
    if nxt is None:
        return None, "", "Conv1's output is read by several nodes or is a graph output"
    through = ""
    if nxt.op_type in EQUIVARIANT:
        through = nxt.op_type
        nxt = g.only_reader(nxt.output[0])
        if nxt is None:
            return None, through, f"the {through} output is read by several nodes or is a graph output"
    elif nxt.op_type in NOT_EQUIVARIANT:
        return None, nxt.op_type, f"{nxt.op_type} between the convolutions is not scale-equivariant"
    if nxt.op_type != "Conv":
        return None, through, f"followed by {nxt.op_type}, not Conv"
    if nxt.input[0] != (conv1.output[0] if not through else g.only_reader(conv1.output[0]).output[0]):
        return None, through, "Conv1's output is Conv2's weight or bias, not its data"
    if len(nxt.input) < 2 or nxt.input[1] not in g.inits:
        return None, through, "Conv2's weight is not a constant"
    params = [conv1.input[1], nxt.input[1]] + ([conv1.input[2]] if len(conv1.input) > 2 and conv1.input[2] else [])
    if any(p not in g.inits or len(g.consumers.get(p, [])) != 1 for p in params):
        return None, through, "a weight or bias is shared with another node"
    w1, w2 = g.arrays[conv1.input[1]], g.arrays[nxt.input[1]]
    if w2.shape[1] * int(_attr(nxt, "group", 1)) != w1.shape[0]:
        return None, through, "Conv2's input channels do not match Conv1's output channels"
    return nxt, through, ""


def _input_view(w2: np.ndarray, group: int) -> np.ndarray:
    """Conv2's weight as (input channel, everything that multiplies it)."""
    cout, cpg = w2.shape[:2]
    opg = cout // group
    per = w2.reshape(group, opg, cpg, -1).transpose(0, 2, 1, 3)  # (group, in-per-group, out-per-group, k)
    return per.reshape(group * cpg, -1)


def _scale_inputs(w2: np.ndarray, group: int, s: np.ndarray) -> np.ndarray:
    cout, cpg = w2.shape[:2]
    return (w2.reshape(group, cout // group, cpg, -1) * s.reshape(group, 1, cpg, 1)).reshape(w2.shape)


def channel_ranges(g: _Graph, conv1, conv2) -> tuple[np.ndarray, np.ndarray]:
    """(r1: max |w| per output channel of conv1, r2: max |w| per input channel of conv2)."""
    w1, w2 = g.arrays[conv1.input[1]], g.arrays[conv2.input[1]]
    r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)
    r2 = np.abs(_input_view(w2, int(_attr(conv2, "group", 1)))).max(axis=1)
    return r1, r2


def _equalize(g: _Graph, conv1, conv2) -> float:
    """Rescale one pair in place; returns the largest |log s| applied (0 when settled)."""
    r1, r2 = channel_ranges(g, conv1, conv2)
    ok = (r1 > _EPS) & (r2 > _EPS)
    s = np.ones_like(r1)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    w1 = conv1.input[1]
    g.arrays[w1] = g.arrays[w1] / s.reshape(-1, *([1] * (g.arrays[w1].ndim - 1)))
    g.changed.add(w1)
    if len(conv1.input) > 2 and conv1.input[2]:
        g.arrays[conv1.input[2]] = g.arrays[conv1.input[2]] / s
        g.changed.add(conv1.input[2])
    w2 = conv2.input[1]
    g.arrays[w2] = _scale_inputs(g.arrays[w2], int(_attr(conv2, "group", 1)), s)
    g.changed.add(w2)
    return float(np.abs(np.log(s)).max()) if s.size else 0.0


def range_spread(g: _Graph, conv1, conv2) -> float:
    """Mean over the pair's channels of max(r1, r2) / min(r1, r2): 1 when fully equalized."""
    r1, r2 = channel_ranges(g, conv1, conv2)
    ok = (r1 > _EPS) & (r2 > _EPS)
    return float(np.mean(np.maximum(r1[ok], r2[ok]) / np.minimum(r1[ok], r2[ok]))) if ok.any() else 1.0


def equalize_cross_layer(model, sweeps: int = SWEEPS) -> tuple[object, PassResult]:
    """A new ModelProto with every eligible Conv -> Conv pair equalized, and what was done."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    pairs, skipped = [], []
    for node in out.graph.node:
        if node.op_type != "Conv":
            continue
        conv2, through, why = can_equalize(g, node)
        if conv2 is None:
            if why and not why.startswith("followed by"):
                skipped.append({"node": node.name, "reason": why})
            continue
        pairs.append((node, conv2, through))
    before = [range_spread(g, a, b) for a, b, _ in pairs]
    for _ in range(sweeps):
        if max((_equalize(g, a, b) for a, b, _ in pairs), default=0.0) < 1e-4:
            break
    after = [range_spread(g, a, b) for a, b, _ in pairs]
    g.save()
    result = PassResult("equalize_cross_layer", bool(pairs), counts={"pairs": len(pairs), "skipped": len(skipped)},
                        details=[{"pair": [a.name, b.name], "through": t, "spread_before": round(x, 3),
                                  "spread_after": round(y, 3)} for (a, b, t), x, y in zip(pairs, before, after)],
                        skipped=skipped)
    return out, result
