"""int8 TFLite that stays inside XNNPACK: a small ONNX model with hard-swish, GELU (exact), a
hard-sigmoid SE gate and x ** 3 exports to int8 TFLite whose every operator LiteRT's XNNPACK
delegate takes (one partition; HARD_SWISH and GELU float between DEQUANTIZE and QUANTIZE), within
the int8 floor; the partition count edgepack reports is
LiteRT's own; the speed check after export; pack skips an int8 artifact flagged slower."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgepack

pytest.importorskip("ai_edge_litert", reason="the XNNPACK delegate is LiteRT's")


def _model(path: Path) -> Path:
    """Conv -> HardSwish -> depthwise Conv -> Gelu -> Conv -> x * HardSigmoid(Conv(mean)) -> + 0.05 x**3 -> Gemm."""
    rng = np.random.default_rng(0)

    def w(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [w("w1", 16, 3, 3, 3), w("b1", 16, scale=0.1), w("w2", 16, 1, 3, 3), w("b2", 16, scale=0.1),
             w("w3", 16, 16, 1, 1), w("b3", 16, scale=0.1), w("ws", 16, 16, 1, 1), w("bs", 16, scale=0.1),
             w("wf", 10, 16), w("bf", 10, scale=0.1),
             numpy_helper.from_array(np.array(3.0, np.float32), "three"),
             numpy_helper.from_array(np.array(0.05, np.float32), "k")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("HardSwish", ["c1"], ["h1"], name="hswish"),
        helper.make_node("Conv", ["h1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=16, name="dw"),
        helper.make_node("Gelu", ["c2"], ["g2"], name="gelu"),
        helper.make_node("Conv", ["g2", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("GlobalAveragePool", ["c3"], ["p3"], name="pool"),
        helper.make_node("Conv", ["p3", "ws", "bs"], ["s3"], name="se"),
        helper.make_node("HardSigmoid", ["s3"], ["gate"], alpha=1 / 6, beta=0.5, name="hsig"),
        helper.make_node("Mul", ["c3", "gate"], ["m3"], name="scale"),
        helper.make_node("Pow", ["m3", "three"], ["cube"], name="pow"),
        helper.make_node("Mul", ["cube", "k"], ["kc"], name="kcube"),
        helper.make_node("Add", ["m3", "kc"], ["a3"], name="add"),
        helper.make_node("GlobalAveragePool", ["a3"], ["p4"], name="pool2"),
        helper.make_node("Flatten", ["p4"], ["f4"], name="flat"),
        helper.make_node("Gemm", ["f4", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(nodes, "xnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(model, path)
    return path


def _export(tmp_path: Path, **kw) -> dict:
    onnx_path = _model(tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).standard_normal((64, 3, 16, 16)).astype(np.float32))
    return edgepack.export(str(onnx_path), output_dir=tmp_path / "out", calib=str(tmp_path / "calib.npy"), int8=True,
                           formats=("tflite",), **kw)


def _art(report: dict, precision: str) -> dict:
    return next(a for a in report["artifacts"] if a["format"] == "tflite" and a["precision"] == precision)


def _litert_partitions(path: Path) -> tuple[int, list[str]]:
    """The DELEGATE nodes LiteRT put in its plan (one per partition), and the op names of all its
    nodes (the model's and the DELEGATE ones): LiteRT's own account, read without edgepack."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    ops = it._get_ops_details()
    return sum(o["op_name"] == "DELEGATE" for o in ops), [o["op_name"] for o in ops]


def test_hardswish_gelu_int8_one_partition_within_floor(tmp_path):
    report = _export(tmp_path)
    fp32, int8 = _art(report, "fp32"), _art(report, "int8")
    assert fp32["ok"] and int8["ok"], (fp32["error"], int8["error"])
    # every operator of the int8 graph is delegated: one XNNPACK partition, none outside
    assert int8["xnnpack"]["partitions"] == 1 and int8["xnnpack"]["outside"] == [], int8["xnnpack"]
    assert fp32["xnnpack"]["partitions"] == 1 and fp32["xnnpack"]["outside"] == [], fp32["xnnpack"]
    census = int8["op_census"]
    assert not {"POW", "RELU_0_TO_1"} & set(census), census  # x ** 3 is two MULs; HardSigmoid is ADD(RELU6) + MUL
    # HARD_SWISH and GELU (XNNPACK takes them in float only) stay float, each between one DEQUANTIZE and one QUANTIZE
    assert census.get("HARD_SWISH") == 1 and census.get("GELU") == 1
    assert sorted(r["op"] for r in int8["float_ops"]) == ["GELU", "HARD_SWISH"]
    assert all("float only" in r["why"] for r in int8["float_ops"])
    assert census.get("QUANTIZE") == census.get("DEQUANTIZE") == 3  # 2 borders + the model's input / output
    # within the int8 floor (the verification's cosine against the float model)
    assert int8["fidelity"]["cosine"] >= 0.99, int8["fidelity"]
    assert int8["float_nodes"] == []
    # what edgepack reports is LiteRT's own plan: one DELEGATE node, next to the model's nodes
    delegates, names = _litert_partitions(tmp_path / "out" / int8["path"])
    assert delegates == 1
    assert int8["xnnpack"]["nodes"] == len(names) - 1 == sum(census.values())
    # the speed check measured both (numbers, not a verdict: this host is shared and noisy)
    measured = int8["speed_vs_fp32"]["measured_here"]
    assert measured["ms"] > 0 and measured["reference_ms"] > 0 and measured["runs"] >= 3
    assert abs(measured["ratio"] - measured["ms"] / measured["reference_ms"]) < 1e-9
    # inspect reads the same from the file
    from edgepack.commands.inspect import inspect_artifact

    seen = inspect_artifact(tmp_path / "out" / int8["path"])["xnnpack"]
    assert (seen["partitions"], seen["outside"], seen["nodes"]) == (1, [], int8["xnnpack"]["nodes"])
    assert ("slower_than_fp32" in int8) == (measured["ratio"] > 1.0 or int8["speed_vs_fp32"]["estimated"]["ratio"] > 1.0)


def test_int8_hardswish_gelu_split_partitions(tmp_path, monkeypatch):
    """With int8 HARD_SWISH and GELU (the writer told to keep nothing float for XNNPACK), XNNPACK
    leaves both to the reference kernels, so the chain conv1 | HARD_SWISH | dw | GELU | rest makes
    3 partitions; the report names both ops with the reason, and LiteRT's plan agrees."""
    from edgepack.converters.export_tflite import quantize

    monkeypatch.setattr(quantize, "XNNPACK_FLOAT_ONLY", {})
    report = _export(tmp_path)
    int8 = _art(report, "int8")
    assert int8["ok"], int8["error"]
    info = int8["xnnpack"]
    assert info["partitions"] == 3, info
    assert sorted(r["op"] for r in info["outside"]) == ["GELU", "HARD_SWISH"]
    assert all("XNNPACK takes" in r["why"] and "float only" in r["why"] for r in info["outside"])
    delegates, names = _litert_partitions(tmp_path / "out" / int8["path"])
    assert delegates == info["partitions"]
    assert info["delegated"] == len(names) - delegates - 2
    assert any("3 XNNPACK partitions" in w and int8["path"] in w for w in report["warnings"])


def test_pack_skips_int8_flagged_slower(tmp_path):
    from edgepack.commands.pack import choose_artifact

    report = {"target": {"name": "rpi4"}, "artifacts": [
        {"format": "tflite", "precision": "fp32", "ok": True},
        {"format": "tflite", "precision": "int8", "ok": True,
         "slower_than_fp32": {"measured_here": {"ms": 3.0, "reference_ms": 1.0, "ratio": 3.0}}}]}
    art, why = choose_artifact(report, None)
    assert art["precision"] == "fp32" and "slower" in why
    assert choose_artifact(report, "int8")[0]["precision"] == "int8"  # --precision still takes it
    del report["artifacts"][1]["slower_than_fp32"]
    assert choose_artifact(report, None)[0]["precision"] == "int8"  # rpi4 prefers int8


def _quantized(build, ranges: dict, tmp_path: Path, name: str) -> tuple[Path, dict]:
    """A float TFLite graph made by `build(g)` and quantized by edgepack's int8 writer."""
    from edgepack.converters.export_tflite.graph import TfliteGraph
    from edgepack.converters.export_tflite.quantize import quantize_graph

    g = TfliteGraph()
    build(g)
    report = quantize_graph(g, ranges, {})
    g.drop_unused()
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(g.serialize("test"))
    return path, report


def _run(path: Path, feeds: list[np.ndarray]) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_add_with_a_tiny_branch_stays_delegated(tmp_path):
    """x + 1e-5 * x2 (a layer-scale branch) + 1e-6 (an epsilon): the tiny operands of the int8 ADDs get
    1/1024 of the output's scale (XNNPACK refuses a smaller ratio), and the 1e-5 factor of the MUL a
    scale that keeps its product-to-output ratio above 2^-16, so one partition; the result is x
    within one output step."""
    from edgepack.runtimes.litert_delegation import delegation

    shape = [1, 4, 4, 8]

    def build(g):
        x, x2 = g.tensor("x", shape), g.tensor("x2", shape)
        m, y, z = g.tensor("m", shape), g.tensor("y", shape), g.tensor("z", shape)
        g.inputs += [x, x2]
        g.op("MUL", [x2, g.const(np.array([1e-5], np.float32), "gamma")], [m], g.options("MulOptions"))
        g.op("ADD", [x, m], [y], g.options("AddOptions"))
        g.op("ADD", [y, g.const(np.array([1e-6], np.float32), "eps")], [z], g.options("AddOptions"))
        g.outputs.append(z)

    path, report = _quantized(build, {"x": (-3, 3), "x2": (-0.3, 0.3), "m": (-3e-6, 3e-6), "y": (-3, 3), "z": (-3, 3)},
                              tmp_path, "add")
    info = delegation(path)
    assert (info["partitions"], info["outside"]) == (1, [])
    assert [r["tensor"] for r in report.constrained if "ADD" in r["why"]] == ["m"]
    rng = np.random.default_rng(0)
    x, x2 = rng.uniform(-3, 3, shape).astype(np.float32), rng.uniform(-0.3, 0.3, shape).astype(np.float32)
    assert np.abs(_run(path, [x, x2]) - x).max() <= 6 / 255 + 1e-6  # within one output step of x


def test_batch_matmul_second_input_symmetric(tmp_path):
    """XNNPACK takes an int8 BATCH_MATMUL only with a zero point of 0 on its second input: an
    asymmetric range there becomes symmetric, and the op is delegated; the product stays within
    3% of the float one."""
    from edgepack.runtimes.litert_delegation import delegation

    def build(g):
        a, b, y = g.tensor("a", [1, 8, 16]), g.tensor("b", [1, 8, 16]), g.tensor("y", [1, 8, 8])
        g.inputs += [a, b]
        g.op("BATCH_MATMUL", [a, b], [y], g.options("BatchMatMulOptions", adjY=True))
        g.outputs.append(y)

    path, report = _quantized(build, {"a": (-3, 3), "b": (-1, 3), "y": (-40, 40)}, tmp_path, "bmm")
    info = delegation(path)
    assert (info["partitions"], info["outside"]) == (1, [])
    assert [r["tensor"] for r in report.constrained if "BATCH_MATMUL" in r["why"]] == ["b"]
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-3, 3, [1, 8, 16]).astype(np.float32), rng.uniform(-1, 3, [1, 8, 16]).astype(np.float32)
    want = a @ b.transpose(0, 2, 1)
    assert np.abs(_run(path, [a, b]) - want).max() <= 0.03 * np.abs(want).max()


def test_ncnn_int8_kernels_name_the_isa():
    import platform

    from edgepack.devices import load_profile
    from edgepack.speed_check import ncnn_int8_kernels

    pi4, pi5 = load_profile("rpi4"), load_profile("rpi5")
    assert "without dot product" in ncnn_int8_kernels(pi4.name, pi4.cpu)["target"]  # Cortex-A72: ARMv8.0
    assert "with dot product" in ncnn_int8_kernels(pi5.name, pi5.cpu)["target"]  # Cortex-A76: ARMv8.2 sdot
    here = ncnn_int8_kernels("host", "host CPU")["here"]
    assert here.startswith("x86") == (platform.machine().lower() in ("x86_64", "amd64"))
