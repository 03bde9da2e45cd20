"""The TFLite graph being built: tensors, buffers, operators, written with the flatbuffer object
API of the schema that ships in ai-edge-litert (`ai_edge_litert.schema_py_generated`).

Layout bookkeeping lives here too. Every ONNX value maps to a `TVal`: the TFLite tensor that holds
it and `perm`, how that tensor's axes relate to the ONNX ones (stored axis i = ONNX axis perm[i]).
Image tensors are stored NHWC (perm (0, 2, 3, 1)); a Transpose in ONNX only relabels `perm`; a
TRANSPOSE op is emitted only when an op needs an order that no relabelling gives (counted)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgepack.errors import UnsupportedError

NHWC = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


@dataclass(frozen=True)
class TVal:
    index: int  # TFLite tensor index
    perm: tuple[int, ...]  # stored axis i = ONNX axis perm[i]
    feature_perm: tuple[int, ...] | None = None  # rank-2 only: stored feature j = ONNX feature feature_perm[j]

    def stored_axis(self, onnx_axis: int) -> int:
        return self.perm.index(onnx_axis % len(self.perm))


@dataclass
class TfliteGraph:
    fp16_weights: bool = False
    tensors: list = field(default_factory=list)
    buffers: list = field(default_factory=list)
    operators: list = field(default_factory=list)
    opcodes: dict = field(default_factory=dict)  # builtin code -> index
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    names: set = field(default_factory=set)
    transposes: int = 0
    origin: dict = field(default_factory=dict)  # id(operator) -> names of the ONNX nodes it came from
    no_int8: dict = field(default_factory=dict)  # id(operator) -> why it stays float in an int8 graph (set by lowerings)

    def __post_init__(self) -> None:
        from ai_edge_litert import schema_py_generated as s

        self.s = s
        empty = s.BufferT()
        self.buffers.append(empty)  # buffer 0 is the empty sentinel

    # ---------------------------------------------------------------- tensors

    def _unique(self, name: str) -> str:
        base, k = name or "t", 0
        while name in self.names or not name:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def tensor(self, name: str, shape, dtype=np.float32) -> int:
        s = self.s
        t = s.TensorT()
        t.name = self._unique(name)
        t.shape = [int(d) for d in shape]
        t.type = _TYPES[np.dtype(dtype)]
        t.buffer = 0
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, array: np.ndarray, name: str, *, weight: bool = False) -> int:
        """A constant tensor. Float weights become float16 + DEQUANTIZE when fp16_weights is set
        (TFLite's standard fp16 scheme: the interpreter dequantizes once at load time)."""
        array = np.ascontiguousarray(array)
        if weight and self.fp16_weights and array.dtype == np.float32:
            half = self._buffer_tensor(array.astype(np.float16), name + "_fp16")
            out = self.tensor(name, array.shape, np.float32)
            self.op("DEQUANTIZE", [half], [out])
            return out
        return self._buffer_tensor(array, name)

    def _buffer_tensor(self, array: np.ndarray, name: str) -> int:
        s = self.s
        buf = s.BufferT()
        buf.data = np.frombuffer(array.tobytes(), dtype=np.uint8)
        self.buffers.append(buf)
        index = self.tensor(name, array.shape, array.dtype)
        self.tensors[index].buffer = len(self.buffers) - 1
        return index

    def shape_of(self, index: int) -> list[int]:
        return list(self.tensors[index].shape)

    def name_of(self, index: int) -> str:
        return self.tensors[index].name

    # ---------------------------------------------------------------- operators

    def op(self, builtin: str, inputs: list[int], outputs: list[int], options: object | None = None,
           options_type: str | None = None) -> None:
        s = self.s
        code = getattr(s.BuiltinOperator, builtin)
        if code not in self.opcodes:
            oc = s.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = 1
            self.opcodes[code] = len(self.opcodes)
        o = s.OperatorT()
        o.opcodeIndex = self.opcodes[code]
        o.inputs = list(inputs)
        o.outputs = list(outputs)
        if options is not None:
            o.builtinOptionsType = getattr(s.BuiltinOptions, options_type or type(options).__name__[:-1])
            o.builtinOptions = options
        self.operators.append(o)

    def options(self, kind: str, **fields) -> object:
        obj = getattr(self.s, kind + "T")()
        for key, value in fields.items():
            if not hasattr(obj, key):
                raise AttributeError(f"{kind} has no field {key}")
            setattr(obj, key, value)
        return obj

    def transpose(self, index: int, perm: tuple[int, ...], name: str) -> int:
        """Stored axes reordered: folded at export time for a constant, a RESHAPE when only size-1
        axes move (same data order), else one TRANSPOSE (counted)."""
        data = self.data_of(index)
        if data is not None:
            return self._buffer_tensor(np.ascontiguousarray(data.transpose(perm)), name)
        shape = self.shape_of(index)
        out = self.tensor(name, [shape[p] for p in perm], _np_type(self.tensors[index].type))
        moved = [p for p in perm if shape[p] != 1]
        if moved == sorted(moved):
            self.reshape(index, out)
            return out
        self.op("TRANSPOSE", [index, self.const(np.array(perm, np.int32), name + "_perm")], [out],
                self.options("TransposeOptions"))
        self.transposes += 1
        return out

    def reshape(self, index: int, out: int) -> None:
        """RESHAPE `index` into the (already created) tensor `out`, whose shape says the new one."""
        shape = self.shape_of(out)
        self.op("RESHAPE", [index, self.const(np.array(shape, np.int32), self.name_of(out) + "_shape")], [out],
                self.options("ReshapeOptions", newShape=shape))

    def data_of(self, index: int) -> np.ndarray | None:
        """The array of a constant tensor (one with a buffer), else None."""
        t = self.tensors[index]
        if not t.buffer or self.buffers[t.buffer].data is None:
            return None
        raw = np.asarray(self.buffers[t.buffer].data, np.uint8).tobytes()
        return np.frombuffer(raw, dtype=_np_type(t.type)).reshape(t.shape)

    def relayout(self, tv: TVal, perm: tuple[int, ...], name: str) -> TVal:
        """The same ONNX value stored with axes `perm` (see `transpose`: folded, RESHAPE or TRANSPOSE)."""
        if tv.perm == perm:
            return tv
        # stored_new axis i = ONNX axis perm[i] = stored_old axis tv.perm.index(perm[i])
        order = tuple(tv.perm.index(p) for p in perm)
        return TVal(self.transpose(tv.index, order, name), perm)

    def drop_unused(self) -> int:
        """Remove the operators whose outputs nothing reads (left behind when a pattern such as GELU
        replaced the ops after them), then the tensors and buffers no one references; returns how
        many operators were removed. Tensor indices change: call it last, before serialising."""
        needed = set(self.outputs)
        kept = []
        for op in reversed(self.operators):
            if any(o in needed for o in op.outputs):
                kept.append(op)
                needed.update(i for i in op.inputs if i >= 0)
        kept_ids = {id(op) for op in kept}
        dropped = [op for op in self.operators if id(op) not in kept_ids]
        transpose = self.opcodes.get(self.s.BuiltinOperator.TRANSPOSE)
        self.transposes -= sum(op.opcodeIndex == transpose for op in dropped)
        self.operators = kept[::-1]
        used = sorted({*self.inputs, *self.outputs, *(i for op in self.operators for i in [*op.inputs, *op.outputs] if i >= 0)})
        new_index = {old: new for new, old in enumerate(used)}
        self.tensors = [self.tensors[i] for i in used]
        self.inputs = [new_index[i] for i in self.inputs]
        self.outputs = [new_index[i] for i in self.outputs]
        for op in self.operators:
            op.inputs = [new_index[i] if i >= 0 else i for i in op.inputs]
            op.outputs = [new_index[i] for i in op.outputs]
        buffers = sorted({0, *(t.buffer for t in self.tensors)})
        new_buffer = {old: new for new, old in enumerate(buffers)}
        self.buffers = [self.buffers[b] for b in buffers]
        for t in self.tensors:
            t.buffer = new_buffer[t.buffer]
        self.names = {t.name for t in self.tensors}
        return len(dropped)

    # ---------------------------------------------------------------- serialise

    def serialize(self, description: str) -> bytes:
        import flatbuffers

        s = self.s
        sub = s.SubGraphT()
        sub.tensors, sub.inputs, sub.outputs, sub.operators = self.tensors, self.inputs, self.outputs, self.operators
        sub.name = "main"
        model = s.ModelT()
        model.version = 3
        codes = [None] * len(self.opcodes)
        for code, i in self.opcodes.items():
            oc = s.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = _OP_VERSIONS.get(code, 1)
            codes[i] = oc
        model.operatorCodes = codes
        model.subgraphs = [sub]
        model.buffers = self.buffers
        model.description = description
        # Sized for every weight up front: growing by doubling copies the whole buffer each time.
        weights = sum(len(b.data) for b in self.buffers if b.data is not None)
        builder = flatbuffers.Builder(weights + 4 * 1024 * 1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _np_type(code: int):
    return {v: k for k, v in _TYPES.items()}[code]


def _types() -> dict:
    from ai_edge_litert import schema_py_generated as s

    t = s.TensorType
    return {np.dtype(np.float32): t.FLOAT32, np.dtype(np.float16): t.FLOAT16, np.dtype(np.int32): t.INT32,
            np.dtype(np.int64): t.INT64, np.dtype(np.int8): t.INT8, np.dtype(np.uint8): t.UINT8,
            np.dtype(np.bool_): t.BOOL}


_TYPES = _types()


def _op_versions() -> dict[int, int]:
    """Builtins whose kernels are registered from a version above 1."""
    from ai_edge_litert import schema_py_generated as s

    return {s.BuiltinOperator.BROADCAST_TO: 2}


_OP_VERSIONS = _op_versions()


# ONNX op type -> its lowering (filled by registry.lowering as the ops_* modules load)
LOWERINGS: dict = {}


def unsupported(node, why: str) -> UnsupportedError:
    outputs = getattr(node, "outputs", None)
    label = repr(node.name) if node.name or not outputs else f"(unnamed, output {outputs[0].name!r})"
    return UnsupportedError(
        f"TFLite export: {node.op_type} node {label} {why}; supported ops: {', '.join(sorted(LOWERINGS))}; "
        "use --format onnx for this model"
    )
