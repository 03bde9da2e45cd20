"""Which operators of a .tflite file LiteRT's XNNPACK delegate takes, and which it leaves to the
reference kernels (each one splits the graph into another delegate partition, with a
requantization round-trip at every border: an int8 model that does this runs slower than its fp32
sibling).

`delegation(path)` builds an interpreter with the default delegate (XNNPACK), as a user's app
would, and reads LiteRT's own account of the result: after delegation the interpreter's node list
holds the model's operators plus one DELEGATE node per partition, whose inputs and outputs are the
partition's borders. A model operator is inside a partition when it is reached walking back from
a DELEGATE node's outputs without crossing its inputs. (LiteRT's log line "Replacing N out of M
node(s) with delegate (TfLiteXNNPackDelegate) node, yielding K partitions" is VERBOSE and cannot be
switched on from Python; the node list holds the same facts.)

The reason for an operator left outside comes from `REFUSED` and `_quant_reason`, written from
XNNPACK's delegate source (tensorflow/lite/delegates/xnnpack/xnnpack_delegate.cc): LiteRT does
not say why. Run it in a child (`edgepack.runtimes.isolated.call`): LiteRT may crash on a damaged
file. No torch, no converters: the delegate is a runtime fact."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DELEGATE_OP = "DELEGATE"
# Builtins XNNPACK's delegate (LiteRT 2.3) takes only in float: an int8 one runs in LiteRT's
# reference kernels. Measured one op at a time (benchmarks/xnnpack_int8.py's docstring), and in
# the delegate's source (CheckTensorFloatType in VisitHardSwishNode, VisitGeluNode, ...).
FLOAT_ONLY = {"HARD_SWISH", "GELU", "SOFTMAX", "SQRT", "RSQRT", "DIV", "SQUARED_DIFFERENCE", "EXP", "LOG", "ABS", "NEG", "MAXIMUM",
              "MINIMUM"}
# Builtins it does not take in any precision (measured).
NOT_TAKEN = {"POW", "RELU_0_TO_1"}
# Fixed output quantization XNNPACK requires of an int8 op (scale, zero point).
FIXED_INT8_OUTPUT = {"LOGISTIC": (1.0 / 256.0, -128), "TANH": (1.0 / 128.0, 0)}
MUL_RATIO = (2.0**-16, 2.0**8)  # input1 scale x input2 scale / output scale must fall in [lo, hi)
ADD_RATIO = (2.0**-10, 2.0**8)  # each input scale / output scale must fall in [lo, hi)


def delegation(artifact: str | Path, threads: int = 1) -> dict:
    """{"delegate", "partitions", "nodes", "delegated", "outside": [{"index", "op", "why"}]} for
    `artifact` with LiteRT's default delegate on `threads` threads."""
    from edgepack.runtimes.litert import _interpreter_class

    it = _interpreter_class()(model_path=str(Path(artifact)), num_threads=threads)
    it.allocate_tensors()
    return partitions_of(it)


def partitions_of(interpreter: Any) -> dict:
    """The delegation facts of an interpreter whose tensors are allocated (see the module docstring)."""
    nodes = interpreter._get_ops_details()  # noqa: SLF001  (the only way Python sees the delegated plan)
    model = [n for n in nodes if n["op_name"] != DELEGATE_OP]
    parts = [n for n in nodes if n["op_name"] == DELEGATE_OP]
    producer = {int(t): n["index"] for n in model for t in n["outputs"]}
    by_index = {n["index"]: n for n in model}
    inside: set[int] = set()
    for part in parts:
        borders = {int(t) for t in part["inputs"]}
        stack = [int(t) for t in part["outputs"]]
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in seen or t in borders or t not in producer:
                continue
            seen.add(t)
            index = producer[t]
            if index in inside:
                continue
            inside.add(index)
            stack += [int(i) for i in by_index[index]["inputs"] if i >= 0]
    outside = [{"index": n["index"], "op": n["op_name"], "why": _why(interpreter, n)}
               for n in model if n["index"] not in inside]
    return {"delegate": "XNNPACK" if parts else None, "partitions": len(parts), "nodes": len(model),
            "delegated": len(inside), "outside": outside}


def _why(interpreter: Any, node: dict) -> str:
    op = node["op_name"]
    details = [_tensor(interpreter, int(i)) for i in list(node["inputs"]) + list(node["outputs"]) if i >= 0]
    quantized = any(d["dtype"] in (np.int8, np.uint8) for d in details)
    if op in NOT_TAKEN:
        return f"XNNPACK has no {op}"
    if op in FLOAT_ONLY and quantized:
        return f"XNNPACK takes {op} in float only"
    return _quant_reason(interpreter, node) or ("not taken by XNNPACK (operator, its options or its tensors' shapes "
                                                "or quantization; LiteRT gives no reason)")


def _quant_reason(interpreter: Any, node: dict) -> str | None:
    """The quantization rule of XNNPACK's delegate that an int8 node breaks, if one of those known."""
    op = node["op_name"]
    ins = [_tensor(interpreter, int(i)) for i in node["inputs"] if i >= 0]
    out = _tensor(interpreter, int(node["outputs"][0]))
    if out["dtype"] != np.int8 or not out["scale"]:
        return None
    if op in FIXED_INT8_OUTPUT:
        scale, zp = FIXED_INT8_OUTPUT[op]
        if abs(out["scale"] - scale) > 1e-9 * scale or out["zero_point"] != zp:
            return f"int8 {op} output must have scale {scale:g} and zero point {zp} (has {out['scale']:g}, {out['zero_point']})"
    if op == "MUL" and len(ins) == 2 and ins[0]["scale"] and ins[1]["scale"]:
        ratio = ins[0]["scale"] * ins[1]["scale"] / out["scale"]
        if not MUL_RATIO[0] <= ratio < MUL_RATIO[1]:
            return f"int8 MUL input-product-to-output scale ratio {ratio:.3g} outside [2^-16, 2^8)"
    if op in ("ADD", "SUB"):
        for d in ins:
            ratio = d["scale"] / out["scale"] if d["scale"] else 1.0
            if not ADD_RATIO[0] <= ratio < ADD_RATIO[1]:
                return f"int8 {op} input-to-output scale ratio {ratio:.3g} outside [2^-10, 2^8)"
    return None


def _tensor(interpreter: Any, index: int) -> dict:
    d = interpreter._get_tensor_details(index, 0)  # noqa: SLF001  (tensor details by index, subgraph 0)
    q = d.get("quantization_parameters") or {}
    scales = q.get("scales")
    zps = q.get("zero_points")
    return {"dtype": d["dtype"], "scale": float(scales[0]) if scales is not None and len(scales) == 1 else None,
            "zero_point": int(zps[0]) if zps is not None and len(zps) == 1 else None}


def summary(info: dict | None) -> str:
    """One line: "1 XNNPACK partition, all 57 ops delegated" or the ops left outside by type."""
    if info is None:
        return "delegation unknown (no LiteRT here)"
    if not info["partitions"]:
        return f"no XNNPACK partition: all {info['nodes']} ops in LiteRT's reference kernels"
    head = f"{info['partitions']} XNNPACK partition{'s' if info['partitions'] != 1 else ''}"
    if not info["outside"]:
        return f"{head}, all {info['nodes']} ops delegated"
    kinds: dict[str, int] = {}
    for row in info["outside"]:
        kinds[row["op"]] = kinds.get(row["op"], 0) + 1
    return f"{head}; {len(info['outside'])} of {info['nodes']} ops outside: " + ", ".join(f"{k} {v}" for k, v in kinds.items())
