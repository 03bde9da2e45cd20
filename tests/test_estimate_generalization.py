"""The estimator on models and boards its fit did not see: squeeze-excitation / swish networks cost
what ncnn's kernels do, the fit reproduces the shipped parameters, and a model family held out of
the fit is predicted within a stated bound (benchmarks/fit_estimator.py prints the full tables)."""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from edgepack.devices import load_profile
from edgepack.devices.estimate import estimate, gated_activations, load_params, runtime_graph, stream_ops
from edgepack.devices.layers import Layer, LayerTable, load_tables

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
REFERENCE = ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="module")
def effnet() -> LayerTable:
    return load_tables(DATA / "ncnn_benchmark_layers.json")["efficientnet_b0"]


def _conv(name: str, cin: int, cout: int, hw: int, src: str, dst: str) -> Layer:
    return Layer(name, "Conv", "conv", (src,), (dst,), macs=cin * cout * hw, weight_elems=cin * cout, cin=cin, cout=cout,
                 out_hw=hw)


def test_onnx_silu_is_one_in_place_swish_as_ncnn_runs_it():
    """ONNX spells SiLU as Mul(x, Sigmoid(x)): for ncnn that is one Swish layer (pnnx's F.silu;
    ncnn's benchmark efficientnet_b0.param has 49 Swish layers), costing the same as the ncnn graph."""
    n = 56 * 56 * 144
    onnx_like = LayerTable([
        _conv("c", 24, 144, 56 * 56, "x", "a"),
        Layer("sig", "Sigmoid", "act", ("a",), ("s",)),
        Layer("mul", "Mul", "eltwise", ("a", "s"), ("y",)),
    ], {"x": 56 * 56 * 24, "a": n, "s": n, "y": n}, ["x"], ["y"])
    ncnn_like = LayerTable([_conv("c", 24, 144, 56 * 56, "x", "a"), Layer("mul", "Swish", "act", ("a",), ("y",))],
                           {"x": 56 * 56 * 24, "a": n, "y": n}, ["x"], ["y"])
    kept, _ = runtime_graph(onnx_like, "ncnn")
    assert [(layer.op, layer.inputs) for layer in kept] == [("Conv", ("x",)), ("Swish", ("a",))]
    rpi4 = load_profile("rpi4")
    assert estimate(onnx_like, rpi4, "ncnn", "fp32", 1).latency_ms == pytest.approx(
        estimate(ncnn_like, rpi4, "ncnn", "fp32", 1).latency_ms, rel=1e-9)
    # a sigmoid whose output is read elsewhere is not a gate
    other = LayerTable(onnx_like.layers + [Layer("use", "Relu", "act", ("s",), ("z",))], {**onnx_like.tensors, "z": n},
                       ["x"], ["y", "z"])
    assert [layer.op for layer in gated_activations(other.layers)] == ["Conv", "Sigmoid", "Mul", "Relu"]


def test_kernel_instruction_counts():
    """Vector instructions per element from ncnn's ARM kernels (see STREAM_OPS): swish 23 per 4
    floats, a broadcast multiply 1 per output vector, global pooling 1 per input vector."""
    tensors = {"x": 1000, "y": 1000, "p": 10}
    assert stream_ops(Layer("s", "Swish", "act", ("x",), ("y",)), tensors) == 23 * 1000
    assert stream_ops(Layer("m", "BinaryOp", "eltwise", ("x", "p"), ("y",)), tensors) == 1000
    assert stream_ops(Layer("g", "Pooling", "pool", ("x",), ("p",)), tensors) == 1000
    assert stream_ops(Layer("c", "Concat", "copy", ("x",), ("y",)), tensors) == 0


def test_se_block_parts_are_not_inflated(effnet):
    """EfficientNet-B0's third block (56x56x144, ncnn's benchmark graph) on an RPi 4, one thread,
    fp32. Bounds derived from ncnn's kernels and the rpi4 profile (A72 at 1.8 GHz, one 128-bit FP
    instruction per cycle, 5 GB/s DRAM), not read off the estimator:
    - the Swish (451,584 elements, swish_arm.cpp 23 instructions per 4 floats): 451584 x 23 / 4 =
      2.60 M cycles = 1.44 ms, plus one in-place pass (3.6 MB read + written) <= 0.72 ms at DRAM speed;
    - the SE parts (global pooling reads the 1.8 MB map once; two 864-MAC InnerProducts; the broadcast
      multiply reads the map and writes it once: 3.6 MB): each pass at most DRAM time (0.36 + 0.72
      ms) plus 2 x 113 k vector instructions (0.13 ms) plus five layers' fixed cost; together far
      below the 10.8 M-MAC 1x1 expand conv they follow (>= 1.5 ms at the A72's 4 MAC/cycle peak)."""
    params = load_params()["runtimes"]["ncnn"]["params"]
    est = estimate(effnet, load_profile("rpi4"), "ncnn", "fp32", 1)
    ms = {row["name"]: row["ms"] for row in est.layers}
    overhead = params["layer_cycles"] / 1.8e9 * 1e3
    assert 1.44 <= ms["Mul_41"] <= 1.44 + 0.72 + overhead + 1e-3
    se = ms["GlobalAveragePool_42"] + ms["Conv_43"] + ms["Mul_45"] + ms["Conv_46"] + ms["Mul_48"]
    assert se <= 0.36 + 0.72 + 0.13 + 5 * overhead + 0.05, se
    assert se < 0.35 * ms["Conv_34"], (se, ms["Conv_34"])
    assert ms["Conv_34"] >= 10838016 / 4 / 1.8e9 * 1e3  # never faster than the FMA peak


def _fit_inputs():
    from benchmarks.fit_estimator import load_all_tables, ncnn_rows

    if not (REFERENCE / "ncnn-published-latency.csv").is_file():
        pytest.skip(f"no ncnn-published-latency.csv in {REFERENCE}: the published measurements are not in the repo")
    tables = load_all_tables(False)
    return tables, ncnn_rows(tables, REFERENCE)


@pytest.mark.heavy
def test_fit_reproduces_the_shipped_parameters():
    from benchmarks.fit_estimator import FIXED, LITERT_FIXED, Problem, fit_both, params_match, read_litert_rows

    tables, rows = _fit_inputs()
    assert not [r for r in rows if r.board in ("rpi4", "rpi5") and r.model in ("efficientnet_b0", "mobilenet_v3")]
    shipped = load_params()["runtimes"]
    ncnn = fit_both(Problem(tables, rows, "ncnn"), rows, FIXED)
    assert params_match(shipped["ncnn"]["params"], vars(ncnn)), (shipped["ncnn"], vars(ncnn))
    litert_rows = read_litert_rows(REFERENCE)
    litert = {**vars(fit_both(Problem(tables, litert_rows, "litert"), litert_rows, LITERT_FIXED)),
              "in_order_eff": ncnn.in_order_eff}
    assert params_match(shipped["litert"]["params"], litert), (shipped["litert"], litert)


@pytest.mark.heavy
def test_squeeze_excitation_family_held_out():
    """MobileNetV3, EfficientNet-B0/V2-B0 and RegNetY left out of the fit, predicted on every board:
    the swish cost comes from the kernel's instruction count (stream_eff held at 1), so the family
    is not over-estimated (fit script, this split: median signed +7%, the pre-change model: +58%
    on EfficientNet-B0)."""
    from benchmarks.fit_estimator import FAMILY, FIXED, Problem, fit_both

    tables, rows = _fit_inputs()
    problem = Problem(tables, rows, "ncnn")
    se = [r for r in rows if FAMILY.get(r.model, "").startswith("squeeze-excitation")]
    assert len(se) >= 30
    params = fit_both(problem, [r for r in rows if r not in se], FIXED)
    signed = [p / r.ms - 1 for p, r in zip(problem.predict(params, se), se, strict=True)]
    assert abs(statistics.median(signed)) <= 0.15, statistics.median(signed)
    assert statistics.median(abs(e) for e in signed) <= 0.2
