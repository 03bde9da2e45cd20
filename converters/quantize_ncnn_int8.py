"""ncnn int8 from edgepack's calibration file, written without ncnn2int8 (which ships in neither the
ncnn nor the pnnx wheel), following ncnn's documented int8 format ("quantized int8 inference"):

- every Convolution / ConvolutionDepthWise / InnerProduct layer gets `8=int8_scale_term` (2 for
  Convolution and InnerProduct: one weight scale per output channel; 1 for ConvolutionDepthWise: one
  per group) and, in the .bin, its weights as int8 behind the int8 tag 0x000D4B38 (padded to 4
  bytes), the float bias unchanged, then `weight_data_int8_scales` and `bottom_blob_int8_scales`
  (raw float32);
- as ncnn2int8's fuse_requantize does, a convolution whose output is read only by int8 convolutions
  (directly or through a Split) gets `int8_scale_term + 100` and their input scale as
  `top_blob_int8_scales`, so int8 data flows between them without a float round trip;
- scales follow ncnn's convention, `127 / absmax` (the reciprocal of ONNX's scale): weights per
  output channel (per group for depthwise), the layer's input from the calibrated (min, max) of the
  ONNX tensor feeding the node it came from, symmetric (ncnn quantizes activations to [-127, 127]);
- LSTM / GRU / RNN layers keep their float weights (their .bin blocks are walked, not rewritten)
  and are reported as float layers;
- the calibration table ncnn2int8 reads (`<layer>_param_0 <weight scales...>` and `<layer> <input
  scale>` lines) is written too, for `ncnn2int8 model.fp32.param model.fp32.bin out.param out.bin
  model.int8.table` (ncnn's own tool, built from source; not run by edgepack or its tests).

pnnx renames blobs (`in0`, `1`, ...) and fuses Conv with Clip/ReLU, so layers are mapped to ONNX nodes
by structure, not by name: the k-th quantizable ncnn layer (in file order) is matched to the first
unmatched ONNX Conv/Gemm/MatMul (in graph order) whose constant weights are equal in ncnn's layout;
failing that, to the first unmatched node of the same kind and weight size ("order"). A layer with
no match or no calibrated input range stays fp32 and is reported with the reason.

`layer_divergence` (per int8 layer: SQNR of its output against the fp32 model, and the SQNR it loses)
ranks layers for the accuracy guard, which keeps the worst ones fp32 (`keep_float`).

The .bin is walked layer by layer with the sizes each ncnn layer loads (`_weight_blocks`); the walk
must end exactly at the end of the file, otherwise the pass refuses rather than guess."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir
from edgepack.converters.export_ncnn import NcnnLayer, NcnnParam

from edgepack.errors import ConversionError
from edgepack.fsutil import atomic_path

TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32 = 0x0002C056
QUANTIZABLE = {"Convolution": 2, "ConvolutionDepthWise": 1, "InnerProduct": 2}  # type -> int8_scale_term
# Recurrent layers (type -> gates) stay float: their int8 form wants per-gate weight scales for the input
# and the recurrent weights, which the one calibration of the ONNX graph does not give.
RECURRENT = {"LSTM": 4, "GRU": 3, "RNN": 1}
_CONV_TYPES = ("Convolution", "ConvolutionDepthWise", "Convolution1D", "ConvolutionDepthWise1D", "Convolution3D",
               "ConvolutionDepthWise3D", "Deconvolution", "DeconvolutionDepthWise", "Deconvolution1D",
               "DeconvolutionDepthWise1D", "Deconvolution3D", "DeconvolutionDepthWise3D")


@dataclass
class NcnnInt8Result:
    quantized: list[dict] = field(default_factory=list)  # layer, onnx_node, matched_by, input_tensor, input_scale
    float_layers: list[dict] = field(default_factory=list)  # layer, why
    requantized: list[str] = field(default_factory=list)  # layers whose output stays int8


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def _weight_blocks(layer: NcnnLayer) -> list[tuple[str, int]]:
    """What `layer.load_model` reads, in order: ("tagged", n) = a tagged array of n values, ("raw", n)
    = n float32 without a tag. Layers not listed load nothing (checked by the file-size walk)."""
    t, g = layer.type, layer.get
    if t in _CONV_TYPES:
        if g(19):  # dynamic_weight: weights come from a second input blob
            return []
        return [("tagged", g(6))] + ([("raw", g(0))] if g(5) else []) + _int8_scale_blocks(layer)
    if t == "InnerProduct":
        return [("tagged", g(2))] + ([("raw", g(0))] if g(1) else []) + _int8_scale_blocks(layer)
    if t == "MemoryData":
        return [("raw", int(np.prod([d for d in (g(0), g(1), g(11), g(2)) if d > 0] or [0])))]
    if t == "BatchNorm":
        return [("raw", g(0))] * 4
    if t == "Scale":
        return ([("raw", g(0))] if g(0) != -233 else []) + ([("raw", g(0))] if g(1) else [])
    if t == "PReLU":
        return [("raw", g(0))]
    if t in RECURRENT:  # ncnn's lstm.cpp / gru.cpp / rnn.cpp load_model: input, bias, recurrent weights
        dirs, out = (2 if g(2) == 2 else 1), g(0)
        hidden = g(3, out) if t == "LSTM" else out
        bias = hidden * (1 if t == "RNN" else 4) * dirs  # GRU keeps 4 rows: r, u, and the new gate's two
        blocks = [("tagged", g(1)), ("tagged", bias), ("tagged", out * hidden * RECURRENT[t] * dirs)]
        return blocks + ([("tagged", hidden * out * dirs)] if t == "LSTM" and out != hidden else [])  # projection
    if t == "MultiHeadAttention":  # q, k, v, out: tagged weights, raw biases
        embed = g(0)
        qdim = g(2) // embed if embed else 0
        kdim, vdim = g(3, embed), g(4, embed)
        return [("tagged", embed * qdim), ("raw", embed), ("tagged", embed * kdim), ("raw", embed),
                ("tagged", embed * vdim), ("raw", embed), ("tagged", qdim * embed), ("raw", qdim)]
    if t == "Gemm":  # constant A, B and C, all tagged; C sized by its broadcast type (-1: none)
        m, n, k = g(7), g(8), g(9)
        blocks = ([("tagged", m * k)] if g(4) else []) + ([("tagged", k * n)] if g(5) else [])
        c_size = {0: 1, 1: m, 2: m, 3: m * n, 4: n}.get(g(10))
        return blocks + ([("tagged", c_size)] if g(6) and c_size is not None else [])
    if t in ("LayerNorm", "InstanceNorm"):
        return [("raw", g(0))] * 2 if g(2, 1) else []
    if t == "GroupNorm":
        return [("raw", g(1))] * 2 if g(3, 1) else []
    return []


def _int8_scale_blocks(layer: NcnnLayer) -> list[tuple[str, int]]:
    """The scales an int8 layer loads after its bias (int8_scale_term = param 8; > 100: requantized output)."""
    term = layer.get(8)
    if not term:
        return []
    if "DepthWise" in layer.type:
        per_weight = layer.get(7, 1) if term % 100 == 1 else 1  # one scale per group, or one for all
    else:
        per_weight = layer.get(0)  # one per output channel
    return [("raw", per_weight), ("raw", 1)] + ([("raw", 1)] if term > 100 else [])


def _read_tagged(data: bytes, pos: int, n: int) -> tuple[np.ndarray, int]:
    """Decode a tagged array at `pos`; return (float32 values, bytes used)."""
    (tag,) = struct.unpack_from("<I", data, pos)
    body = pos + 4
    if tag == TAG_FP16:
        return np.frombuffer(data, np.float16, n, body).astype(np.float32), 4 + _align4(2 * n)
    if tag == TAG_INT8:
        return np.frombuffer(data, np.int8, n, body).astype(np.float32), 4 + _align4(n)
    if tag == TAG_FP32 or tag == 0:
        return np.frombuffer(data, np.float32, n, body).copy(), 4 + 4 * n
    table = np.frombuffer(data, np.float32, 256, body)  # 8-bit codebook
    index = np.frombuffer(data, np.uint8, n, body + 1024)
    return table[index].astype(np.float32), 4 + 1024 + _align4(n)


def _walk(param: NcnnParam, data: bytes) -> list[list[tuple[str, int, int, np.ndarray | None]]]:
    """Per layer: [(kind, offset, nbytes, values for tagged blocks)]; the walk must cover the file."""
    pos, out = 0, []
    for layer in param.layers:
        blocks = []
        for kind, n in _weight_blocks(layer):
            if pos + 4 > len(data):
                raise ConversionError(f"the ncnn .bin ends inside layer {layer.name} ({layer.type}); cannot quantize it")
            if kind == "tagged":
                try:
                    values, size = _read_tagged(data, pos, n)
                except ValueError:  # numpy: the buffer is smaller than the layer's weights
                    raise ConversionError(f"the ncnn .bin ends inside layer {layer.name} ({layer.type}); "
                                          "cannot quantize it") from None
                blocks.append((kind, pos, size, values))
            else:
                size = 4 * n
                blocks.append((kind, pos, size, None))
            pos += size
        out.append(blocks)
    if pos != len(data):
        types = sorted({layer.type for layer in param.layers if not _weight_blocks(layer)})
        raise ConversionError(f"the ncnn .bin has {len(data)} bytes; the layers account for {pos}: one of the layer "
                              f"types {types} carries weights edgepack does not know; int8 ncnn is not built for it")
    return out


def _onnx_candidates(model: ir.Model) -> list[dict]:
    """ONNX nodes ncnn runs as a quantizable layer, with their constant weights in ncnn's layout."""
    rows = []
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        w = node.inputs[1].const_value if node.inputs[1] is not None else None
        if w is None or node.inputs[0] is None:
            continue
        w = w.numpy().astype(np.float32)
        if node.op_type == "Gemm":
            attrs = {a.name: a.value for a in node.attributes.values()}
            w = w if attrs.get("transB", 0) else w.T
        elif node.op_type == "MatMul":
            if w.ndim != 2:
                continue
            w = w.T
        group = node.attributes["group"].value if node.op_type == "Conv" and "group" in node.attributes else 1
        rows.append({"node": node, "kind": "conv" if node.op_type == "Conv" else "fc", "weight": w.reshape(-1),
                     "rows": w.shape[0], "group": group, "input": node.inputs[0].name})
    return rows


def _match(layer: NcnnLayer, weight: np.ndarray, candidates: list[dict], used: set[int]) -> tuple[dict | None, str]:
    kind = "fc" if layer.type == "InnerProduct" else "conv"
    same = [i for i, c in enumerate(candidates) if i not in used and c["kind"] == kind and c["weight"].size == weight.size]
    for i in same:
        if np.allclose(candidates[i]["weight"], weight, rtol=1e-3, atol=1e-6):
            return candidates[i] | {"index": i}, "values"
    if same:
        return candidates[same[0]] | {"index": same[0]}, "order"
    return None, "no ONNX Conv/Gemm/MatMul with this weight size"


def _weight_scales(w: np.ndarray, parts: int) -> np.ndarray:
    absmax = np.abs(w.reshape(parts, -1)).max(axis=1)
    return np.where(absmax > 0, 127.0 / np.maximum(absmax, 1e-30), 1.0).astype(np.float32)


def _quantize(w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    rows = w.reshape(len(scales), -1)
    return np.clip(np.round(rows * scales[:, None]), -127, 127).astype(np.int8).reshape(-1)


def quantize_ncnn_int8(model: ir.Model, fp32_param: Path, fp32_bin: Path, ranges: dict[str, tuple[float, float]],
                       out_param: Path, out_table: Path, keep_float: frozenset[str] = frozenset(),
                       float_onnx_nodes: frozenset[str] = frozenset(), fuse_requantize: bool = True) -> NcnnInt8Result:
    """Write the int8 model to `out_param` (+ .bin beside it) and ncnn's calibration table to `out_table`.
    `keep_float`: ncnn layer names to leave fp32 (the accuracy guard's choice); `float_onnx_nodes`: the
    same by ONNX node name (the int8 ONNX guard's choice, so all int8 artifacts agree). `fuse_requantize`:
    a convolution whose output only feeds int8 convolutions hands them int8 (ncnn2int8 does the same)."""
    param = NcnnParam.parse(Path(fp32_param).read_text())
    data = Path(fp32_bin).read_bytes()
    walked = _walk(param, data)
    candidates = _onnx_candidates(model)
    used: set[int] = set()
    result = NcnnInt8Result()
    quant = {layer.name: q for layer, blocks in zip(param.layers, walked)
             if (q := _layer_int8(layer, blocks, candidates, used, ranges, result, keep_float, float_onnx_nodes)) is not None}
    requant = _requantize_targets(param, {name: q[2] for name, q in quant.items()}) if fuse_requantize else {}
    chunks: list[bytes] = []
    table: list[str] = []
    for layer, blocks in zip(param.layers, walked):
        if layer.name not in quant:
            chunks.extend(data[off : off + size] for _, off, size, _ in blocks)
            continue
        q, w_scales, in_scale = quant[layer.name]
        chunks.append(struct.pack("<I", TAG_INT8) + q.tobytes() + b"\0" * (_align4(q.size) - q.size))
        chunks.extend(data[off : off + size] for _, off, size, _ in blocks[1:])  # the float bias
        chunks.append(w_scales.astype("<f4").tobytes() + struct.pack("<f", in_scale))
        term = QUANTIZABLE[layer.type]
        if layer.name in requant:  # int8 output, requantized for the next int8 layer(s)
            chunks.append(struct.pack("<f", requant[layer.name]))
            term += 100
        layer.set(8, term)
        table.append(f"{layer.name}_param_0 " + " ".join(f"{s:.8g}" for s in w_scales))
        table.append(f"{layer.name} {in_scale:.8g}")
    result.requantized = sorted(requant)
    out_param = Path(out_param)
    with atomic_path(out_param.with_suffix(".bin")) as tmp:
        tmp.write_bytes(b"".join(chunks))
    with atomic_path(out_param) as tmp:
        tmp.write_text(param.text())
    with atomic_path(Path(out_table)) as tmp:
        # ncnn2int8 reads all weight lines, then all blob lines (ncnn2table writes them in this order)
        lines = [ln for ln in table if "_param_0 " in ln] + [ln for ln in table if "_param_0 " not in ln]
        tmp.write_text("\n".join(lines) + "\n")
    return result


def _requantize_targets(param: NcnnParam, in_scales: dict[str, float]) -> dict[str, float]:
    """ncnn2int8's fuse_requantize: an int8 Convolution/ConvolutionDepthWise whose output is read only
    by int8 Convolution/ConvolutionDepthWise layers (directly, or through a Split into such layers)
    writes int8 at their input scale -> {layer: that scale}. ncnn's bin keeps one output scale, so
    all readers must share it (they do here: they read the same ONNX tensor)."""
    convs = ("Convolution", "ConvolutionDepthWise")
    readers: dict[str, list[NcnnLayer]] = {}
    for layer in param.layers:
        for b in layer.bottoms:
            readers.setdefault(b, []).append(layer)

    def int8_convs(blob: str) -> list[NcnnLayer] | None:
        found = []
        for r in readers.get(blob, []):
            if r.type == "Split":
                inner = [int8_convs(t) for t in r.tops]
                if any(x is None for x in inner):
                    return None
                found += [c for x in inner for c in x]  # type: ignore[union-attr]
            elif r.type in convs and len(r.bottoms) == 1 and r.name in in_scales:
                found.append(r)
            else:
                return None
        return found or None

    out = {}
    for layer in param.layers:
        if layer.type in convs and layer.name in in_scales:
            targets = int8_convs(layer.tops[0])
            if targets and len({in_scales[t.name] for t in targets}) == 1:
                out[layer.name] = in_scales[targets[0].name]
    return out


def _layer_int8(layer: NcnnLayer, blocks: list, candidates: list[dict], used: set[int],
                ranges: dict[str, tuple[float, float]], result: NcnnInt8Result, keep_float: frozenset[str],
                float_onnx_nodes: frozenset[str]) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(int8 weights, weight scales, input scale) for a quantizable layer, or None (kept fp32, reason recorded)."""
    if layer.type in RECURRENT:
        result.float_layers.append({"layer": layer.name, "why": f"recurrent layer ({layer.type}): kept float (its "
                                    "states feed back through every step; no int8 scales are derived for them)"})
        return None
    if layer.type not in QUANTIZABLE or not blocks:
        return None
    weight = blocks[0][3]
    cand, how = _match(layer, weight, candidates, used)
    if cand is None:
        result.float_layers.append({"layer": layer.name, "why": how})
        return None
    used.add(cand["index"])
    if layer.name in keep_float or cand["node"].name in float_onnx_nodes:
        which = "the int8 ONNX's" if cand["node"].name in float_onnx_nodes else "this artifact's"
        result.float_layers.append({"layer": layer.name, "onnx_node": cand["node"].name,
                                    "why": f"kept in float by {which} accuracy guard (--min-cosine/--min-top1)"})
        return None
    rng = ranges.get(cand["input"])
    absmax = max(abs(rng[0]), abs(rng[1])) if rng is not None else 0.0
    if not absmax > 0:
        why = "input range is all zero" if rng is not None else f"no calibrated range for ONNX tensor {cand['input']!r}"
        result.float_layers.append({"layer": layer.name, "onnx_node": cand["node"].name, "why": why})
        return None
    parts = layer.get(7, 1) if layer.type == "ConvolutionDepthWise" else layer.get(0)
    w_scales = _weight_scales(weight, parts)
    in_scale = 127.0 / absmax
    result.quantized.append({"layer": layer.name, "type": layer.type, "onnx_node": cand["node"].name, "matched_by": how,
                             "input_tensor": cand["input"], "input_scale": round(float(in_scale), 6)})
    return _quantize(weight, w_scales), w_scales, float(in_scale)


# ---------------------------------------------------------------- per-layer divergence


def layer_divergence(fp32_param: Path, int8_param: Path, feeds: list[dict[str, np.ndarray]]) -> list[dict]:
    """For every Convolution/ConvolutionDepthWise/InnerProduct of the int8 model: the SQNR (dB) of its
    output against the fp32 model's (same blob names: both come from one pnnx conversion) and how
    much SQNR it loses relative to its input (`sqnr_drop_db`: its own damage). `feeds`: ncnn blob
    name -> one sample without the batch axis. Both nets run fp32 elsewhere (fp16 storage off)."""
    import ncnn

    param = NcnnParam.parse(Path(int8_param).read_text())
    data = Path(int8_param).with_suffix(".bin").read_bytes()
    # requantized outputs are int8 blobs: their last scale block is the scale they were written at
    int8_blobs = {layer.tops[0]: struct.unpack_from("<f", data, blocks[-1][1])[0]
                  for layer, blocks in zip(param.layers, _walk(param, data)) if layer.get(8) > 100}
    layers = [layer for layer in param.layers if layer.type in QUANTIZABLE]
    blobs = sorted({b for layer in layers for b in (layer.bottoms[0], layer.tops[0])})
    values: list[dict[str, list[np.ndarray]]] = [{b: [] for b in blobs}, {b: [] for b in blobs}]
    for path, store in zip((fp32_param, int8_param), values):
        net = ncnn.Net()
        net.opt.num_threads = 1
        net.opt.lightmode = False  # keep intermediate blobs, each is extracted once per sample
        for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
            setattr(net.opt, flag, False)
        net.load_param(str(path))
        net.load_model(str(Path(path).with_suffix(".bin")))
        for feed in feeds:
            with net.create_extractor() as ex:
                for name, x in feed.items():
                    ex.input(name, ncnn.Mat(np.ascontiguousarray(x, dtype=np.float32)).clone())
                for b in blobs:
                    value = np.array(ex.extract(b)[1], dtype=np.float64).ravel()  # int8 blobs come out cast, not scaled
                    store[b].append(value / int8_blobs[b] if path == int8_param and b in int8_blobs else value)

    def sqnr(blob: str) -> float:
        ref, got = np.concatenate(values[0][blob]), np.concatenate(values[1][blob])
        noise = float(np.sum((ref - got) ** 2))
        return 100.0 if noise == 0 else min(100.0, 10 * np.log10(max(float(np.sum(ref**2)), 1e-30) / noise))

    return [{"layer": layer.name, "type": layer.type, "int8": layer.get(8) > 0, "sqnr_db": round(sqnr(layer.tops[0]), 2),
             "sqnr_drop_db": round(sqnr(layer.bottoms[0]) - sqnr(layer.tops[0]), 2)} for layer in layers]
