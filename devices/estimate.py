"""On-target latency and memory estimates from a model of the hardware anyone can read.

For each layer of the runtime's own graph (`runtime_graph`: ncnn and XNNPACK fuse BN and simple
activations into the conv before it; ncnn keeps HardSwish/HardSigmoid as layers and runs ONNX's
Mul(x, Sigmoid(x)) as one in-place Swish layer, `gated_activations`):

    compute = MACs' / (peak MAC/cycle x efficiency x clock)
      MACs'       MACs; for ncnn's 3x3 stride-1 convs the Winograd multiplies instead
                  (`winograd_geometry`: whole F(6,3) or F(4,3) output tiles, so a 7x7 map pays
                  for 8x8), over the fitted efficiency `winograd` of that kernel
      peak        FP32 FLOP/cycle / 2 from the profile; FP16 FLOP/cycle / 2 where the runtime
                  computes in fp16 (ncnn on cores with fp16 arithmetic); x an int8 gain, smaller
                  without the dot-product extension; ncnn's int8 Winograd multiplies int16
                  transforms, so it gets the gain without the dot product on every core
      efficiency  dense conv / fc: gemm_eff x w / (w + width_half), w = min(K, N) (a GEMM's
                  efficiency grows with its width); depthwise: dw_eff; x in_order_eff on
                  in-order cores (A53/A55)
    memory  = act_passes x activation bytes (in + out) + weight bytes, over the bandwidth; the
              share that fits in the last-level cache streams cache_bw times faster than DRAM
              (depthwise convs and element-wise ops end up memory-bound). ncnn specifics: the
              Winograd weights are (m + 2)^2 / 9 times larger and its transformed tiles are
              written and read back; in an int8 graph only the blobs between two convs are int8
              (`int8_blobs`), every other blob stays float
    element-wise / pooling layers: no packing, one pass over their bytes (`STREAM_OPS`), compute = their
              kernel's vector instructions (counted in ncnn's ARM sources) at the core's 128-bit
              issue rate x stream_eff (held at 1 by the fit: not fitted)
    layer   = ((compute + activation memory)^1.5 + weight memory^1.5)^(1/1.5) + layer_cycles / clock
              (arithmetic and activation passes add up; the prefetched weight stream overlaps them)

Threads: a share `memory_share` of each kernel's compute time waits on the shared cache and DRAM
and speeds up only as the profile's `dram_thread_scaling` says; the rest divides by the threads
(a saturating speed-up, never more than `threads`); memory time scales with the same bandwidth.
ncnn's int8 Winograd on a core with the dot product runs at the slower rate without it, so at the
same bytes per multiply its share is memory_share_int8 x int8_nodot / int8_dot.
Peak memory = weights + the activation arena from a liveness analysis (`arena.py`).

The free parameters (one set per runtime) live in `estimator_params.json`, fitted on published
measurements by `benchmarks/fit_estimator.py`, which also prints the model's error."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from edgepack.devices import DeviceProfile
from edgepack.devices.arena import Lifetime, plan
from edgepack.devices.layers import Layer, LayerTable

from edgepack.errors import UsageError

ESTIMATE_RUNTIMES = ("ncnn", "litert", "onnxruntime")
# activations fused into the op before them (when that op's output has no other reader)
FUSED_ACTIVATIONS = {
    "ncnn": {"Relu", "Clip", "LeakyRelu", "Sigmoid", "BatchNormalization", "RELU", "RELU6", "LEAKY_RELU", "LOGISTIC"},
    "litert": {"Relu", "Clip", "BatchNormalization", "RELU", "RELU6", "RELU_N1_TO_1"},
    "onnxruntime": {"Relu", "Clip", "LeakyRelu", "Sigmoid", "BatchNormalization"},
}
FUSES_INTO = ("conv", "dwconv", "fc")
# see `combine`; chosen by the fit script's held-out ncnn error (median / worst): adding everything
# (p = 1) 6.4% / 42.7%, p = 1.25 6.9% / 38.7%, p = 1.5 6.5% / 37.7%, p = 2 7.3% / 40.7%
WEIGHT_OVERLAP_POWER = 1.5


@dataclass(frozen=True)
class RuntimeParams:
    """The free parameters of one runtime (see the module docstring for where each enters)."""

    gemm_eff: float
    width_half: float
    dw_eff: float
    winograd: float  # ncnn's Winograd multiplies per cycle / peak (transforms included; 1 = at the peak)
    int8_nodot: float  # int8 peak / fp32 peak without SDOT
    int8_dot: float  # int8 peak / fp32 peak with SDOT
    in_order_eff: float
    cache_bw: float  # last-level cache bandwidth / DRAM bandwidth
    act_passes: float  # passes over each activation (packing, padding, layout copies): > 1
    memory_share: float  # share of a float kernel's time bound by the shared cache / DRAM (scales as the profile's bandwidth)
    memory_share_int8: float  # the same for int8 kernels (they move 4x fewer bytes per MAC)
    layer_cycles: float  # fixed cost per layer (dispatch, packing set-up)
    stream_eff: float = 1.0  # element-wise kernels' vector instructions per cycle / the core's 128-bit FP issue rate


    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def load_params() -> dict[str, Any]:
    text = (resources.files("edgepack.devices") / "estimator_params.json").read_text()
    return json.loads(text)


def runtime_params(runtime: str, params: dict[str, Any] | None = None) -> RuntimeParams:
    params = params or load_params()
    entry = params["runtimes"][runtime]
    values = entry["params"] if "params" in entry else params["runtimes"][entry["same_as"]]["params"]
    return RuntimeParams(**values)


# ---------------------------------------------------------------- the runtime's graph


def runtime_graph(table: LayerTable, runtime: str) -> tuple[list[Layer], dict[str, str]]:
    """The layers the runtime executes: activations fused into the conv/fc before them when that
    output has no other reader; for ncnn, x * sigmoid(x) and x * hardsigmoid(x) (how ONNX spells
    SiLU and hard-swish) are one in-place Swish / HardSwish layer (`gated_activations`). Returns the
    layers and the tensor aliases the fusion made."""
    fusable = FUSED_ACTIVATIONS[runtime]
    layers = gated_activations(table.layers) if runtime == "ncnn" else table.layers
    readers: dict[str, int] = {}
    for layer in layers:
        for t in layer.inputs:
            readers[t] = readers.get(t, 0) + 1
    producer: dict[str, Layer] = {}
    alias: dict[str, str] = {}
    out: list[Layer] = []
    for layer in layers:
        ins = tuple(alias.get(t, t) for t in layer.inputs)
        src = producer.get(ins[0]) if len(ins) == 1 else None
        if (layer.op in fusable and src is not None and src.kind in FUSES_INTO and readers.get(layer.inputs[0], 0) == 1
                and ins[0] not in table.outputs):
            for o in layer.outputs:
                alias[o] = ins[0]
            continue
        layer = Layer(**{**asdict(layer), "inputs": ins})
        out.append(layer)
        for o in layer.outputs:
            producer[o] = layer
    return out, alias


GATES = {"Sigmoid": "Swish", "HardSigmoid": "HardSwish", "LOGISTIC": "Swish"}


def gated_activations(layers: list[Layer]) -> list[Layer]:
    """Mul(x, Sigmoid(x)) -> one Swish layer, Mul(x, HardSigmoid(x)) -> one HardSwish layer, as pnnx
    writes them for ncnn (its F.silu / F.hardswish passes; ncnn's benchmark efficientnet_b0.param has
    49 Swish layers and no Sigmoid-Mul pair): the gate's output must be read by that Mul alone."""
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        for t in layer.inputs:
            readers.setdefault(t, []).append(layer)
    fused: dict[str, Layer] = {}  # the Mul's name -> the one layer replacing gate and Mul
    gates: set[str] = set()
    for gate in layers:
        if gate.op not in GATES or len(gate.inputs) != 1 or len(readers.get(gate.outputs[0], [])) != 1:
            continue
        mul = readers[gate.outputs[0]][0]
        if mul.op not in ("Mul", "MUL") or set(mul.inputs) != {gate.inputs[0], gate.outputs[0]}:
            continue
        gates.add(gate.name)
        fused[mul.name] = Layer(name=mul.name, op=GATES[gate.op], kind="act", inputs=gate.inputs, outputs=mul.outputs,
                                out_hw=mul.out_hw)
    return [fused.get(layer.name, layer) for layer in layers if layer.name not in gates]


# ---------------------------------------------------------------- precision per runtime and core


@dataclass(frozen=True)
class Numerics:
    compute: str  # fp32 | fp16 | int8
    act_bytes: int
    weight_bytes: int
    note: str


def numerics(runtime: str, precision: str, profile: DeviceProfile) -> Numerics:
    core = profile.big
    if precision == "int8":
        kernels = "int8 kernels" + ("" if core.int8_dotprod else " without the dot-product extension")
        if runtime == "ncnn":  # ncnn quantizes at each conv's input; blobs between layers stay float
            return Numerics("int8", 2 if core.fp16_arith else 4, 1, kernels + ", float blobs between layers (ncnn)")
        return Numerics("int8", 1, 1, kernels)
    if precision == "int8-weights":
        return Numerics("fp32", 4, 1, "int8 weights, float compute (dynamic quantization)")
    if runtime == "ncnn" and core.fp16_arith:
        return Numerics("fp16", 2, 2, "ncnn computes in fp16 (fp16 storage and arithmetic) on this core")
    if precision == "fp16":
        why = "the core has no fp16 arithmetic" if not core.fp16_arith else f"{runtime} dequantizes fp16 weights to fp32"
        return Numerics("fp32", 4, 4, f"fp16 weights, fp32 compute ({why})")
    return Numerics("fp32", 4, 4, "fp32")


# ---------------------------------------------------------------- the cost of the layers


def winograd_eligible(layer: Layer) -> bool:
    """A 3x3 stride-1 dense conv; a grouped one too (ncnn runs each group as its own Convolution)."""
    return (layer.kind == "conv" and layer.kernel == 9 and layer.stride == 1
            and layer.cin >= 16 and layer.cout // layer.groups >= 16)


def winograd_tile(layer: Layer, int8: bool) -> int:
    """The output tile m of the F(m x m, 3 x 3) Winograd kernel ncnn picks for a 3x3 stride-1 conv
    (0: no Winograd). Float: F(6,3) up to 128 channels in and out, F(4,3) for wider convs, as
    ncnn's ARM `Convolution_arm::create_pipeline` selects; int8: F(4,3) on int16 transforms."""
    if not winograd_eligible(layer):
        return 0
    return 4 if int8 or layer.cin > 128 or layer.cout // layer.groups > 128 else 6


def winograd_geometry(layer: Layer, int8: bool) -> tuple[float, float, float]:
    """(multiplies, transformed weight elements, transformed activation elements moved) of ncnn's
    Winograd conv: the output is covered by whole m x m tiles (a 7x7 map costs 2 x 2 tiles of 4x4),
    each an element-wise product of (m + 2)^2 transformed values per input x output channel; the
    transformed weights are (m + 2)^2 / 9 times the 3x3 ones and are streamed once per inference;
    the transformed input and output tiles are written, then read back."""
    m = winograd_tile(layer, int8)
    if not m:
        return float(layer.macs), float(layer.weight_elems), 0.0
    side = max(1.0, layer.out_hw ** 0.5)
    tiles = float(np.ceil(side / m) ** 2)
    per_pair = (m + 2) ** 2 * layer.cin * layer.cout
    return tiles * per_pair, float(per_pair), 2 * tiles * (m + 2) ** 2 * (layer.cin + layer.cout)


# Vector instructions per 128-bit vector (4 fp32 or 8 fp16 lanes) of ncnn's ARM element-wise kernels,
# aarch64 paths, counted in Tencent/ncnn src/layer/arm/ (commit a4d2ea1): exp_ps in neon_mathfun.h is
# 20 (min, max, fma, frintm, 2 mul, 2 sub, mul, 6 fma, add, cvt, add, shl, mul); swish_arm.cpp:
# x / (1 + exp(-x)) = neg + exp + add + fdiv = 23; sigmoid_arm.cpp (sigmoid_ps): neg + exp + add +
# recpe + 2 x (recps, mul) = 27; hardswish_arm.cpp: fma, max, min, mul = 4; hardsigmoid: fma, max,
# min = 3; relu: max = 1; clip: max, min = 2; leakyrelu/prelu: cmp, mul, bsl = 3; binaryop: 1 per
# output vector; pooling: 1 add/max per input vector; tanh_ps ~ 25; mish = exp + log + tanh ~ 70;
# softmax = max + exp + sum + div ~ 25. Copies (concat, slice, interp, padding, permute) move bytes only.
STREAM_OPS = {
    "Swish": 23, "Sigmoid": 27, "LOGISTIC": 27, "HardSwish": 4, "HARD_SWISH": 4, "HardSigmoid": 3,
    "Relu": 1, "ReLU": 1, "RELU": 1, "RELU6": 2, "Clip": 2, "LeakyRelu": 3, "LEAKY_RELU": 3, "PRelu": 3, "PReLU": 3,
    "Tanh": 25, "TanH": 25, "TANH": 25, "Mish": 70, "Gelu": 30, "GELU": 30, "Elu": 25, "ELU": 25, "Softmax": 25,
    "SOFTMAX": 25, "BatchNorm": 1, "BatchNormalization": 1, "Scale": 1, "Exp": 20, "EXP": 20,
}
STREAM_KIND_OPS = {"eltwise": 1, "pool": 1, "act": 1, "copy": 0}


def stream_ops(layer: Layer, tensors: dict[str, int]) -> float:
    """Vector instructions x vector length of an element-wise / pooling layer's kernel = its vector
    instructions per element x elements: output elements, input elements for pooling (it reads more
    than it writes)."""
    if layer.kind not in STREAM_KIND_OPS:
        return 0.0
    per_vector = STREAM_OPS.get(layer.op, STREAM_KIND_OPS[layer.kind])
    names = layer.inputs[:1] if layer.kind == "pool" else layer.outputs
    return float(per_vector * sum(max(0, tensors.get(t, 0)) for t in names))


@dataclass(frozen=True)
class LayerFeatures:
    """The runtime graph's layers as arrays (one entry per layer), so one formula serves both
    `estimate` and the fit over hundreds of measurements."""

    macs: np.ndarray
    dense: np.ndarray  # conv / fc / matmul
    depthwise: np.ndarray
    width: np.ndarray  # min(GEMM reduction K, output channels N)
    winograd: np.ndarray
    act_elems: np.ndarray  # activation elements read + written
    weight_elems: np.ndarray
    wino_macs: np.ndarray  # ncnn's Winograd multiplies (float, int8); = macs where not Winograd
    wino_macs_int8: np.ndarray
    wino_weights: np.ndarray  # ncnn's transformed weight elements (float, int8)
    wino_weights_int8: np.ndarray
    wino_acts: np.ndarray  # ncnn's transformed activation elements written and read back (float, int8)
    wino_acts_int8: np.ndarray
    int8_act_elems: np.ndarray  # of act_elems, those ncnn's int8 graph keeps in int8 (`int8_blobs`)
    stream: np.ndarray  # element-wise / pooling layers: one pass over their bytes, no packing
    stream_ops: np.ndarray  # their vector instructions x lanes (`stream_ops`)

    @classmethod
    def of(cls, layers: list[Layer], tensors: dict[str, int]) -> LayerFeatures:
        dense = [layer.kind in ("conv", "fc", "matmul") and layer.macs > 0 for layer in layers]
        int8 = int8_blobs(layers)
        geo = np.array([winograd_geometry(layer, False) + winograd_geometry(layer, True) for layer in layers],
                       dtype=np.float64).reshape(-1, 6)
        return cls(
            macs=np.array([layer.macs for layer in layers], dtype=np.float64),
            dense=np.array(dense, dtype=bool),
            depthwise=np.array([layer.kind == "dwconv" for layer in layers], dtype=bool),
            width=np.array([max(1, min(layer.cin * layer.kernel, layer.cout)) for layer in layers], dtype=np.float64),
            winograd=np.array([winograd_eligible(layer) for layer in layers], dtype=bool),
            act_elems=np.array([sum(max(0, tensors.get(t, 0)) for t in layer.inputs + layer.outputs) for layer in layers],
                               dtype=np.float64),
            weight_elems=np.array([layer.weight_elems for layer in layers], dtype=np.float64),
            wino_macs=geo[:, 0], wino_weights=geo[:, 1], wino_acts=geo[:, 2],
            wino_macs_int8=geo[:, 3], wino_weights_int8=geo[:, 4], wino_acts_int8=geo[:, 5],
            int8_act_elems=np.array([sum(max(0, tensors.get(t, 0)) for t in layer.inputs + layer.outputs if t in int8)
                                     for layer in layers], dtype=np.float64),
            stream=np.array([layer.kind in STREAM_KIND_OPS for layer in layers], dtype=bool),
            stream_ops=np.array([stream_ops(layer, tensors) for layer in layers], dtype=np.float64),
        )


    @classmethod
    def concat(cls, parts: list[LayerFeatures]) -> LayerFeatures:
        """The layers of several graphs as one (the fit evaluates all its rows in one call)."""
        return cls(**{k.name: np.concatenate([getattr(p, k.name) for p in parts]) for k in fields(cls)})


def int8_blobs(layers: list[Layer]) -> set[str]:
    """The tensors an int8 ncnn graph stores as int8: a conv's output read only by convs (ncnn2int8's
    `fuse_requantize`: conv -> conv, or conv -> Split -> convs, requantized in the producing conv).
    Every other blob is float (fp16 on cores with fp16 arithmetic): each int8 conv quantizes a float
    input and dequantizes to a float output."""
    convs = ("conv", "dwconv")
    producer = {t: layer.kind for layer in layers for t in layer.outputs}
    readers: dict[str, list[str]] = {}
    for layer in layers:
        for t in layer.inputs:
            readers.setdefault(t, []).append(layer.kind)
    return {t for t, kinds in readers.items() if producer.get(t) in convs and all(k in convs for k in kinds)}


@dataclass(frozen=True)
class Machine:
    """The target as the per-layer formula sees it, for one runtime, precision and thread count:
    scalars for one estimate (`Machine.of`), or one value per layer when the fit stacks the layers of
    many (model, board, precision, threads) rows into one array (`Machine.stack`)."""

    clock: Any  # Hz
    peak: Any  # MAC/cycle of the compute precision (FLOP/cycle / 2), before the int8 gain
    vectors: Any  # 128-bit FP instructions per cycle (one 128-bit FMA = 8 fp32 FLOP)
    lanes: Any  # 4 fp32 or 8 fp16 lanes per vector
    int8: Any  # bool
    dot: Any  # bool: int8 dot product
    in_order: Any  # bool
    act_bytes: Any
    weight_bytes: Any
    llc: Any  # bytes of shared last-level cache
    dram: Any  # bytes/s, one thread
    bw_scale: Any  # bandwidth with `threads` / with one (`bandwidth_scaling`)
    threads: Any

    @classmethod
    def of(cls, profile: DeviceProfile, num: Numerics, threads: int) -> Machine:
        core = profile.big
        fp16 = num.compute == "fp16"
        return cls(
            clock=core.clock_ghz * 1e9, peak=(core.fp16_flop_per_cycle if fp16 else core.fp32_flop_per_cycle) / 2,
            vectors=core.fp32_flop_per_cycle / 8, lanes=8 if fp16 else 4, int8=num.compute == "int8",
            dot=core.int8_dotprod, in_order=core.in_order, act_bytes=num.act_bytes, weight_bytes=num.weight_bytes,
            llc=1024.0 * (profile.memory.l3_kb + (core.l2_kb if core.l2_shared or profile.memory.l3_kb == 0 else 0)),
            dram=profile.memory.dram_gbs * 1e9, bw_scale=bandwidth_scaling(profile, threads), threads=threads)

    @classmethod
    def stack(cls, machines: list[Machine], counts: list[int]) -> Machine:
        """Each machine's values repeated for its `counts` layers, as one array per field."""
        return cls(**{k.name: np.repeat(np.array([getattr(m, k.name) for m in machines]), counts) for k in fields(cls)})


def layer_seconds(f: LayerFeatures, m: Machine, runtime: str, rp: RuntimeParams
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(compute, activation memory, weight memory, overhead) seconds of each layer on machine `m`."""
    ncnn = runtime == "ncnn"
    weights = f.weight_elems * m.weight_bytes
    if ncnn:  # Winograd: fewer multiplies, at the Winograd kernel's efficiency; more weight bytes
        macs = np.where(f.winograd, np.where(m.int8, f.wino_macs_int8, f.wino_macs) / rp.winograd, f.macs)
        weights = np.where(f.winograd, np.where(m.int8, f.wino_weights_int8 * 2, f.wino_weights * m.weight_bytes), weights)
    else:
        macs = f.macs
    # int8: the gain with or without the dot product; ncnn's int8 Winograd multiplies int16
    # transforms (no dot product there)
    dot = m.dot & ~f.winograd if ncnn else np.broadcast_to(m.dot, f.macs.shape)
    peak = m.peak * np.where(m.int8, np.where(dot, rp.int8_dot, rp.int8_nodot), 1.0)
    in_order = np.where(m.in_order, rp.in_order_eff, 1.0)
    eff = np.where(f.depthwise, rp.dw_eff, rp.gemm_eff * f.width / (f.width + rp.width_half)) * in_order
    compute = np.where(f.dense | f.depthwise, macs, 0.0) / (peak * eff * m.clock)
    # element-wise kernels: their vector instructions at the core's 128-bit issue rate
    compute = compute + f.stream_ops / (m.lanes * m.vectors * rp.stream_eff * in_order * m.clock)
    act_bytes = m.act_bytes * f.act_elems
    if ncnn:  # int8: float blobs, but int8 ones between convs; Winograd's transformed tiles (int16 for int8)
        act_bytes = act_bytes - np.where(m.int8, (m.act_bytes - 1) * f.int8_act_elems, 0.0)
        act_bytes = act_bytes + np.where(f.winograd, np.where(m.int8, f.wino_acts_int8 * 2, f.wino_acts * m.act_bytes), 0.0)
    # convs pack, pad and lay out their input (act_passes); element-wise layers read each operand once
    # and write once (in place for unary ones, as ncnn runs them)
    streamed = np.where(f.stream, 1.0, rp.act_passes) * act_bytes + weights
    cached = np.minimum(1.0, m.llc / np.maximum(streamed, 1.0))
    # the shared cache and DRAM: their bandwidth grows with threads only as far as the profile says
    per_byte = (cached / (rp.cache_bw * m.dram) + (1 - cached) / m.dram) / m.bw_scale
    overhead = rp.layer_cycles / m.clock + 0.0 * compute
    share = np.where(m.int8, rp.memory_share_int8, rp.memory_share)
    if ncnn:  # the int16 Winograd kernel runs at the rate without the dot product: at the same bytes
        # per multiply it waits on the shared cache for a proportionally smaller share of its time
        share = np.where(m.int8 & m.dot & f.winograd, share * rp.int8_nodot / rp.int8_dot, share)
    compute = compute * thread_factor(share, m)
    return compute, (streamed - weights) * per_byte, weights * per_byte, overhead


def thread_factor(share: np.ndarray, m: Machine) -> np.ndarray:
    """Compute time with `threads` / with 1. A share of each kernel's time waits on the shared cache
    and DRAM and speeds up only as the profile's bandwidth does; the rest divides by the threads.
    bandwidth_scaling <= threads, so the speed-up is <= threads."""
    return share / m.bw_scale + (1 - share) / m.threads


def bandwidth_scaling(profile: DeviceProfile, threads: int) -> float:
    n = profile.big.count
    if n <= 1 or threads <= 1:
        return 1.0
    return 1 + (profile.memory.dram_thread_scaling - 1) * (min(threads, n) - 1) / (n - 1)


def combine(compute: np.ndarray, act_memory: np.ndarray, weight_memory: np.ndarray, overhead: np.ndarray) -> np.ndarray:
    """Each layer's time: its arithmetic and its activation passes (packing, padding, Winograd
    transforms: loops of their own) add up; the weight stream, read front to back and prefetched,
    overlaps them: a soft maximum ((compute + act)^p + weights^p)^(1/p), p = WEIGHT_OVERLAP_POWER;
    plus the fixed per-layer cost."""
    p = WEIGHT_OVERLAP_POWER
    return ((compute + act_memory) ** p + weight_memory ** p) ** (1 / p) + overhead


# ---------------------------------------------------------------- the whole model


@dataclass
class Estimate:
    target: str
    runtime: str
    precision: str
    threads: int
    latency_ms: float
    peak_memory_mb: float
    weights_mb: float
    arena_mb: float
    arena_rule: str
    live_peak_mb: float
    macs: int
    numerics: str
    layers: list[dict]
    fits_memory: bool
    ram_budget_mb: int
    params_version: str

    def to_json(self, with_layers: bool = True) -> dict:
        data = asdict(self)
        if not with_layers:
            data["layers"] = len(self.layers)
        return data


def estimate(table: LayerTable, profile: DeviceProfile, runtime: str | None = None, precision: str = "fp32",
             threads: int | None = None, params: dict[str, Any] | None = None) -> Estimate:
    runtime = runtime or profile.default_runtime
    if runtime not in ESTIMATE_RUNTIMES:
        raise UsageError(f"--runtime {runtime!r} is not one of {', '.join(ESTIMATE_RUNTIMES)}")
    threads = threads or profile.threads
    if threads < 1:
        raise UsageError(f"--threads {threads} must be 1 or more")
    if threads > profile.big.count:
        raise UsageError(f"--threads {threads}: {profile.name}'s fastest cluster has {profile.big.count} "
                         f"{profile.big.core} cores; use at most {profile.big.count}")
    params = params or load_params()
    rp = runtime_params(runtime, params)
    num = numerics(runtime, precision, profile)
    layers, alias = runtime_graph(table, runtime)
    c, a, w, o = layer_seconds(LayerFeatures.of(layers, table.tensors), Machine.of(profile, num, threads), runtime, rp)
    seconds = combine(c, a, w, o)
    m = a + w
    total = float(seconds.sum())
    rows = []
    for i, layer in enumerate(layers):
        bound = "compute" if c[i] >= m[i] and c[i] >= o[i] else "memory" if m[i] >= o[i] else "overhead"
        rows.append({"name": layer.name, "op": layer.op, "kind": layer.kind, "macs": layer.macs,
                     "ms": round(float(seconds[i]) * 1e3, 4), "bound": bound,
                     **({"winograd": True} if runtime == "ncnn" and winograd_eligible(layer) else {})})
    lifetimes = liveness(layers, table, alias, num.act_bytes)
    arena = plan(lifetimes, runtime)
    weights = sum(layer.weight_elems for layer in layers) * num.weight_bytes
    peak = (weights + arena.peak_bytes) / 2**20
    return Estimate(
        target=profile.name, runtime=runtime, precision=precision, threads=threads,
        latency_ms=round(total * 1e3, 3), peak_memory_mb=round(peak, 3), weights_mb=round(weights / 2**20, 3),
        arena_mb=round(arena.peak_bytes / 2**20, 3), arena_rule=arena.rule, live_peak_mb=round(arena.live_peak / 2**20, 3),
        macs=table.macs, numerics=num.note, layers=rows, fits_memory=peak <= profile.memory.ram_mb,
        ram_budget_mb=profile.memory.ram_mb, params_version=str(params.get("version", "")),
    )


def liveness(layers: list[Layer], table: LayerTable, alias: dict[str, str], act_bytes: int) -> list[Lifetime]:
    """Each activation tensor's life: from the layer writing it to the last layer reading it."""
    first: dict[str, int] = {t: -1 for t in table.inputs}
    last: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for t in layer.outputs:
            first.setdefault(t, i)
        for t in layer.inputs:
            last[t] = i
    end = len(layers)
    for t in table.outputs:
        last[alias.get(t, t)] = end
    return [Lifetime(t, max(0, table.tensors.get(t, 0)) * act_bytes, f, last.get(t, f)) for t, f in first.items()]


def thread_speedup_bound(profile: DeviceProfile, threads: int) -> float:
    """The most any estimate can speed up from 1 to `threads` threads on this profile."""
    return float(min(threads, profile.big.count))


def describe_precision_gain(profile: DeviceProfile, precision: str) -> str | None:
    """Why a precision buys no speed on this target (None when it does)."""
    if precision == "fp16" and not profile.big.fp16_arith:
        return (f"fp16 buys no speed on {profile.name}: the {profile.big.core} has no fp16 arithmetic, so the runtime "
                "computes in fp32 (fp16 only halves the file size); int8 is the faster choice there")
    return None


RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "tflite": "litert", "ncnn": "ncnn"}


def report_estimate(out_dir: Path, entry: dict, profile: DeviceProfile) -> dict:
    """The report.json `estimate` of one artifact entry (the same keys as `edgepack estimate --json`),
    or {"error": why} when it cannot be estimated (a failed artifact, a format not read yet)."""
    if not entry.get("ok") or not entry.get("path"):
        return {"error": "the artifact was not built"}
    path = Path(out_dir) / entry["path"]
    if path.suffix.lower() not in RUNTIME_OF_SUFFIX:
        return {"error": f"estimating {path.suffix} artifacts is not supported yet; estimate the .onnx of the same export "
                         "with --runtime " + RUNTIME_OF_FORMAT.get(entry.get("format", ""), "ncnn")}
    try:
        result = estimate_artifact(path, profile, RUNTIME_OF_FORMAT.get(entry["format"]), None, entry["precision"],
                                   ask_runtime=False)  # the export has just run it in its runtime
    except UsageError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - an op the layer reader does not know must not fail a verified export
        return {"error": f"estimate failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                         "report it with the artifact"}
    return result.to_json()



# ---------------------------------------------------------------- artifacts on disk

RUNTIME_OF_SUFFIX = {".onnx": "onnxruntime", ".tflite": "litert", ".param": "ncnn"}


def artifact_precision(path: Path) -> str:
    """The precision an artifact was exported at: from the export's report.json when the artifact
    sits next to it, else read off the file (Q/DQ or integer ops: int8; fp16 weights: fp16)."""
    entry = _report(path).get("artifact") or {}
    if entry.get("precision"):
        return str(entry["precision"])
    if path.suffix.lower() == ".param":  # int8 convs carry int8_scale_term (param 8)
        return "int8" if any(" 8=" in f" {line}" and " 8=0" not in f" {line}" for line in path.read_text().splitlines()
                             if line.startswith("Convolution")) else "fp32"
    if path.suffix.lower() == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        ops = {n.op_type for n in model.graph.node}
        if ops & {"QuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul"}:
            return "int8"
        if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
            return "fp16"
        return "fp32"
    if path.suffix.lower() == ".tflite":
        from ai_edge_litert import schema_py_generated as schema

        model = schema.Model.GetRootAs(path.read_bytes(), 0)
        graph = model.Subgraphs(0)
        types = {graph.Tensors(i).Type() for i in range(graph.TensorsLength())}
        if schema.TensorType.INT8 in types and schema.TensorType.INT32 in types:
            return "int8"
        return "fp16" if schema.TensorType.FLOAT16 in types else "fp32"
    return "fp32"


def _report(path: Path) -> dict:
    """The export's report.json next to an artifact: its model inputs and the artifact's entry."""
    from edgepack.report import report_beside

    data, entry = report_beside(path)
    inputs = {i["name"]: tuple(i["shape"]) for i in (data.get("model") or {}).get("inputs", []) if i.get("shape")}
    return {"artifact": entry, "inputs": inputs, "target": (data.get("target") or {}).get("name")}


def export_target(path: Path) -> str:
    """The target an artifact was exported for (its report.json), for `estimate` without --target."""
    target = _report(path).get("target")
    if not target:
        raise UsageError(f"no --target given and no report.json with a target next to {path.name}; "
                         "pass --target (see `edgepack devices`)")
    return str(target)


def estimate_artifact(path: Path, profile: DeviceProfile, runtime: str | None = None, threads: int | None = None,
                      precision: str | None = None, input_shapes: dict[str, tuple[int, ...]] | None = None, *,
                      ask_runtime: bool = True) -> Estimate:
    """Estimate an .onnx, .tflite or ncnn .param artifact on `profile`. The runtime defaults to the
    artifact's own (LiteRT for .tflite, ONNX Runtime for .onnx, ncnn for .param); --runtime ncnn
    estimates an ONNX graph as ncnn would run it. A .param's input shape comes from `input_shapes`
    or the export's report.json."""
    from edgepack.devices.layers import read_layers

    if not path.is_file():
        raise UsageError(f"no artifact at {path}; pass an .onnx, .tflite or .param file from an export folder")
    table = read_layers(path, input_shapes or _report(path).get("inputs"), ask_runtime=ask_runtime)
    runtime = runtime or RUNTIME_OF_SUFFIX.get(path.suffix.lower(), profile.default_runtime)
    return estimate(table, profile, runtime, precision or artifact_precision(path), threads)
