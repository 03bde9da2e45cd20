"""PTQ passes (converters/equalize_cross_layer, correct_bias, search_ranges, improve_int8) on tiny
ONNX graphs built here: numbers against ONNX Runtime, with explicit tolerances."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.converters.collect_activations import cosine, run
from edgepack.converters.correct_bias import correct_bias
from edgepack.converters.equalize_cross_layer import _Graph, channel_ranges, equalize_cross_layer
from edgepack.converters.improve_int8 import PtqOptions, improve_int8
from edgepack.converters.quantize_int8 import load_ranges, quantize_int8, save_ranges
from edgepack.converters.search_ranges import minmax_ranges, qdq, search_ranges


def _conv(name, x, w, b=None, group=1, pad=1):
    inputs = [x, f"{name}.w"] + ([f"{name}.b"] if b is not None else [])
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{name}.w")]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"{name}.b"))
    k = w.shape[-1]
    node = helper.make_node("Conv", inputs, [name], name=name, group=group, pads=[pad] * 4, kernel_shape=[k, k])
    return node, inits


def depthwise_net(seed=0, spread=2.0, act="Relu", channels=8):
    """conv 3x3 (3->C) -> act -> depthwise 3x3 -> act -> conv 1x1 (C->4): BN-folded-like weights
    whose output channels are scaled by 10**U(-spread, spread) (what folding leaves)."""
    rng = np.random.default_rng(seed)
    c = channels
    s1 = 10 ** rng.uniform(-spread, spread, c)
    s2 = 10 ** rng.uniform(-spread, spread, c)
    w1 = rng.standard_normal((c, 3, 3, 3)) * s1[:, None, None, None] * 0.3
    w2 = rng.standard_normal((c, 1, 3, 3)) * s2[:, None, None, None] * 0.5 / s1[:, None, None, None]
    w3 = rng.standard_normal((4, c, 1, 1)) / s2[None, :, None, None] * 0.5
    nodes, inits = [], []
    for node, ini in (_conv("c1", "x", w1, rng.standard_normal(c) * s1 * 0.1),):
        nodes.append(node)
        inits += ini
    nodes.append(helper.make_node(act, ["c1"], ["a1"], name="a1"))
    node, ini = _conv("c2", "a1", w2, rng.standard_normal(c) * s2 * 0.1, group=c)
    nodes.append(node)
    inits += ini
    nodes.append(helper.make_node(act, ["c2"], ["a2"], name="a2"))
    node, ini = _conv("c3", "a2", w3, np.zeros(4), pad=0)
    nodes.append(node)
    inits += ini
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("c3", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(n, seed, shape=(1, 3, 16, 16)):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def test_cle_preserves_function_and_equalizes_ranges():
    model = depthwise_net()
    out, result = equalize_cross_layer(model)
    assert result.counts["pairs"] == 2  # c1->c2 and c2->c3, both through Relu
    feeds = _feeds(4, 1)
    a, b = run(model, feeds, optimize=False), run(out, feeds, optimize=False)
    for (x,), (y,) in zip(a, b):
        assert np.abs(y - x).max() / np.abs(x).max() < 1e-5
    g_before, g_after = _Graph(model), _Graph(out)
    nodes = {n.name: n for n in model.graph.node}
    for first, second in (("c1", "c2"), ("c2", "c3")):
        r1, r2 = channel_ranges(g_before, nodes[first], nodes[second])
        q1, q2 = channel_ranges(g_after, nodes[first], nodes[second])
        # per-channel weight ranges of the depthwise conv spread over 10**4 before; far less after
        assert (q1.max() / q1.min()) < 0.1 * (r1.max() / r1.min())
        assert np.allclose(q1, q2, rtol=0.05) or first == "c1"  # the middle conv is pulled both ways
    w2 = numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == "c2.w"))
    w2_before = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "c2.w"))
    spread = lambda w: np.abs(w).reshape(w.shape[0], -1).max(1)  # noqa: E731
    assert spread(w2).max() / spread(w2).min() < 0.1 * spread(w2_before).max() / spread(w2_before).min()


def test_cle_refuses_clip_with_reason():
    model = depthwise_net()
    for node in model.graph.node:  # Relu -> Clip(0, 6): the bound would change with the scale
        if node.op_type == "Relu":
            node.op_type = "Clip"
            node.attribute.clear()
            node.input.extend(["lo", "hi"])
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0, np.float32), "lo"),
                                    numpy_helper.from_array(np.array(6, np.float32), "hi")])
    out, result = equalize_cross_layer(model)
    assert result.counts["pairs"] == 0 and not result.modified
    reasons = {s["node"]: s["reason"] for s in result.skipped}
    assert "Clip" in reasons["c1"] and "scale-equivariant" in reasons["c1"]
    assert "Clip" in reasons["c2"] and "scale-equivariant" in reasons["c2"]
    assert "graph output" in reasons["c3"]


def _rounding_net():
    """x -> Relu -> depthwise 3x3 whose taps are one large weight and eight that int8 rounds to 0
    (0.3 of a step): on a positive input that is a systematic per-channel shift."""
    rng = np.random.default_rng(3)
    c = 4
    w = np.full((c, 1, 3, 3), 0.3 / 127)
    w[:, 0, 1, 1] = 1.0
    w *= rng.uniform(0.5, 2, c)[:, None, None, None]
    node, inits = _conv("dw", "r", w, np.zeros(c), group=c)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"), node,
                               helper.make_node("Relu", ["dw"], ["y"], name="out")], "r",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _int8_layer_error(model, reference, ranges, feeds, tmp_path, tensor):
    """Per-channel mean of (int8 QDQ model's `tensor` - reference float model's `tensor`)."""
    cache = tmp_path / "r.json"
    cache.unlink(missing_ok=True)
    save_ranges(ranges, cache)
    quantize_int8(model, tmp_path / "q.onnx", cache_path=cache, method="minmax", calib_feeds=None)
    q = onnx.load(str(tmp_path / "q.onnx"))
    produced = next(n.output[0] for n in q.graph.node if n.name == "dw")
    from edgepack.converters.collect_activations import session

    qs, fs = session(q, [produced]), session(reference, [tensor])
    diffs = [qs.run([produced], f)[0] - fs.run([tensor], f)[0] for f in feeds]
    return np.mean(np.concatenate(diffs), axis=(0, 2, 3))


def test_bias_correction_reduces_per_channel_mean_error(tmp_path):
    model = _rounding_net()
    rng = np.random.default_rng(4)
    feeds = [{"x": (rng.standard_normal((1, 4, 8, 8)) + 1.0).astype(np.float32)} for _ in range(16)]
    ranges = minmax_ranges(model, feeds)
    corrected, result = correct_bias(model, feeds, ranges)
    assert result.counts["corrected"] == 1
    before = np.abs(_int8_layer_error(model, model, ranges, feeds, tmp_path, "dw"))
    after = np.abs(_int8_layer_error(corrected, model, ranges, feeds, tmp_path, "dw"))
    assert before.min() > 1e-3  # the rounding shift is there, in every channel
    assert (after < 0.2 * before).all(), (before, after)


def test_range_search_beats_minmax_on_heavy_tail():
    rng = np.random.default_rng(5)
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "one"], ["t"]), helper.make_node("Relu", ["t"], ["y"])],
                              "h", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": rng.standard_t(3, (1, 4096)).astype(np.float32)} for _ in range(8)]
    found = search_ranges(model, feeds)
    data = np.concatenate([f["x"].ravel() for f in feeds]).astype(np.float64)
    mse = lambda r: float(np.mean((qdq(data, np.float64(r[0]), np.float64(r[1])) - data) ** 2))  # noqa: E731
    assert mse(found.ranges["t"]) <= mse(found.minmax["t"])
    assert mse(found.ranges["t"]) < 0.95 * mse(found.minmax["t"])  # heavy tail (Student t, 3 dof): clipping pays
    assert found.ranges["y"] == found.minmax["y"]  # a graph output keeps its min/max
    # a light-tailed tensor: the search never does worse than min/max either
    light = [{"x": rng.uniform(-1, 1, (1, 4096)).astype(np.float32)} for _ in range(8)]
    found = search_ranges(model, light)
    data = np.concatenate([f["x"].ravel() for f in light]).astype(np.float64)
    assert mse(found.ranges["t"]) <= mse(found.minmax["t"]) * (1 + 1e-9)


def test_ranges_file_round_trip(tmp_path):
    ranges = {"a": (-1.5, 2.25), "b": (0.0, 6.0)}
    save_ranges(ranges, tmp_path / "calibration.json")
    assert load_ranges(tmp_path / "calibration.json") == ranges


def test_improve_int8_raises_cosine_on_badly_scaled_depthwise_net(tmp_path):
    model = depthwise_net(seed=7, spread=1.5, channels=16)
    calib, held_out = _feeds(16, 8), _feeds(16, 9)
    ref = run(model, held_out)

    def held_out_cosine(float_model, ranges):
        cache = tmp_path / "c.json"
        cache.unlink(missing_ok=True)
        save_ranges(ranges, cache)
        quantize_int8(float_model, tmp_path / "q.onnx", cache_path=cache, method="minmax", calib_feeds=None)
        return cosine(ref, run(onnx.load(str(tmp_path / "q.onnx")), held_out, optimize=False))

    plain = held_out_cosine(model, minmax_ranges(model, calib))
    better, ranges, summary = improve_int8(model, calib, PtqOptions())
    improved = held_out_cosine(better, ranges)
    steps = {s["name"]: s for s in summary.steps}
    assert steps["equalize_cross_layer"]["kept"]
    assert plain < 0.99 and improved > plain + 0.5 * (1 - plain), (plain, improved, summary.to_json())
    # each pass switchable: all off gives back the model and plain min/max ranges
    same, same_ranges, off = improve_int8(model, calib, PtqOptions(equalize=False, search_ranges=False,
                                                                   correct_bias=False))
    assert same is model and [s["name"] for s in off.steps] == ["ranges"]
    assert same_ranges == minmax_ranges(model, calib)


@pytest.mark.parametrize("act", ["LeakyRelu"])
def test_cle_through_leaky_relu(act):
    model = depthwise_net(act=act)
    out, result = equalize_cross_layer(model)
    assert result.counts["pairs"] == 2
    feeds = _feeds(2, 1)
    for (x,), (y,) in zip(run(model, feeds, optimize=False), run(out, feeds, optimize=False)):
        assert np.abs(y - x).max() / np.abs(x).max() < 1e-5


@pytest.mark.heavy  # a full export of the digits example in two formats (~10 s of CPU)
def test_calib_method_mse_runs_the_range_search_in_the_export(tmp_path):
    """--calib-method mse: min/max then the per-tensor MSE range search, one calibration file that every
    int8 exporter reads; what the search did is in the report."""
    from pathlib import Path

    import edgepack

    root = Path(__file__).resolve().parent.parent
    report = edgepack.export(root / "examples" / "digits_cnn.pt2", output_dir=tmp_path, formats=("onnx", "tflite"),
                             int8=True, calib=root / "examples" / "digits_calib.npy", calib_method="mse")
    cal = report["calibration"]
    assert cal["method"] == "mse" and cal["ptq"]["cosine_final"] >= cal["ptq"]["cosine_minmax"] - 1e-9
    int8 = [a for a in report["artifacts"] if a["precision"] == "int8"]
    assert len(int8) == 2 and all(a["ok"] and a["fidelity"]["cosine"] >= 0.99 for a in int8)


def _held_out_int8_cosine(float_model, ranges, reference_model, feeds, tmp_path):
    cache = tmp_path / "held.json"
    cache.unlink(missing_ok=True)
    save_ranges(ranges, cache)
    quantize_int8(float_model, tmp_path / "held.onnx", cache_path=cache, method="minmax", calib_feeds=None)
    return cosine(run(reference_model, feeds), run(onnx.load(str(tmp_path / "held.onnx")), feeds, optimize=False))


def test_calibration_step_equalizes_the_graph_the_int8_exporters_read(tmp_path):
    """The calibration step (what `edgepack export --int8` runs) returns the equalized float graph
    as Calibration.model: same float function (1e-5), depthwise weight ranges 10x closer, ranges
    measured on it, a higher held-out int8 cosine; with the passes off the graph is unchanged."""
    from edgepack.artifacts.context import ExportContext
    from edgepack.calibrate import calibrate

    model = depthwise_net(seed=7, spread=1.5, channels=16)
    calib, held_out = _feeds(16, 8), _feeds(8, 9)
    cal = calibrate(model, calib, "minmax", tmp_path / "calibration.json", equalize=True, correct_bias=False)
    steps = {s["name"]: s for s in cal.ptq["steps"]}
    assert steps["equalize_cross_layer"]["kept"] and steps["equalize_cross_layer"]["pairs"] == 2
    assert steps["equalize_cross_layer"]["cosine"] > steps["equalize_cross_layer"]["cosine_before"]
    for (x,), (y,) in zip(run(model, held_out, optimize=False), run(cal.model, held_out, optimize=False)):
        assert np.abs(y - x).max() / np.abs(x).max() < 1e-5
    spread = lambda m: (lambda r: r.max() / r.min())(np.abs(numpy_helper.to_array(  # noqa: E731
        next(i for i in m.graph.initializer if i.name == "c2.w"))).reshape(16, -1).max(1))
    assert spread(cal.model) < 0.1 * spread(model)
    assert load_ranges(tmp_path / "calibration.json") == cal.ranges == minmax_ranges(cal.model, calib)
    plain = _held_out_int8_cosine(model, minmax_ranges(model, calib), model, held_out, tmp_path)
    assert plain < 0.99 and _held_out_int8_cosine(cal.model, cal.ranges, model, held_out, tmp_path) > plain + 0.5 * (1 - plain)
    ctx = ExportContext(None, "m", tmp_path, None, [], [], None, cal)  # what every int8 builder quantizes
    assert ctx.int8_proto is cal.model and [n.name for n in ctx.int8_model.graph] == [n.name for n in model.graph.node]
    off = calibrate(model, calib, "minmax", tmp_path / "off.json", equalize=False, correct_bias=False)
    assert off.model is None and off.ptq is None and off.method == "minmax"


def test_calibration_step_corrects_bias(tmp_path):
    """Bias correction in the calibration step: the int8 layer's per-channel mean error against the
    original float model drops 5x (the corrected float graph is what every int8 exporter reads)."""
    from edgepack.calibrate import calibrate

    model = _rounding_net()
    rng = np.random.default_rng(4)
    feeds = [{"x": (rng.standard_normal((1, 4, 8, 8)) + 1.0).astype(np.float32)} for _ in range(16)]
    cal = calibrate(model, feeds, "minmax", tmp_path / "calibration.json", equalize=False, correct_bias=True)
    assert [s["name"] for s in cal.ptq["steps"]] == ["ranges", "correct_bias"] and cal.ptq["steps"][1]["kept"]
    before = np.abs(_int8_layer_error(model, model, cal.ranges, feeds, tmp_path, "dw"))
    after = np.abs(_int8_layer_error(cal.model, model, cal.ranges, feeds, tmp_path, "dw"))
    assert before.min() > 1e-3 and (after < 0.2 * before).all(), (before, after)
    assert cal.ptq["cosine_final"] > cal.ptq["cosine_minmax"]
