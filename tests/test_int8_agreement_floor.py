"""The agreement of a TFLite int8 with the int8 ONNX of the same calibration is a check with a floor
(verify.AGREEMENT_FLOOR, applied by pipeline._int8_agreement): a TFLite int8 whose outputs part
from a good int8 ONNX fails even when its own cosine to the reference looks fine, whole tensor or
slice. The two int8 artifacts are stand-ins here (functions of the verification inputs shaped like
a YOLO head and an LR-ASPP map) so each failure mode is made exactly once; the real writer's
agreement on such heads is tests/test_tflite_int8_agreement.py."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edgepack.errors import VerificationFailed
from edgepack.pipeline import _int8_agreement
from edgepack.verify import AGREEMENT_FLOOR, check_agreement, compare, make_verification_set

SHAPES = {"x": (1, 3, 8, 8)}


def yolo(x: np.ndarray) -> np.ndarray:
    """[1, 4 + 3, 64]: boxes in pixels (0..~320) over sigmoid scores, as ultralytics' Detect."""
    f = x.reshape(1, 3, 64)
    boxes = 160 + 100 * np.tanh(np.concatenate([f, f[:, :1]], 1))
    scores = 1 / (1 + np.exp(-2 * f))
    return np.concatenate([boxes, scores], 1).astype(np.float32)


def lraspp(x: np.ndarray, gate_scale: float = 1.0) -> np.ndarray:
    """[1, 5, 8, 8]: a low branch plus a high branch gated by a sigmoid (times `gate_scale`)."""
    feats = np.concatenate([x, x[:, :2] ** 2], 1)
    gate = 1 / (1 + np.exp(-x.mean(axis=(2, 3), keepdims=True)))
    high = np.roll(feats, 3, axis=3) * np.concatenate([gate, gate[:, :2]], 1) * gate_scale
    return (0.3 * feats + high).astype(np.float32)


def context(artifacts_runs):
    vset = make_verification_set(SHAPES, seed=0)
    runs = {id(a): r for a, r in artifacts_runs}
    return SimpleNamespace(vset=vset, output_names=["y"], runner=lambda art: runs[id(art)],
                           outputs=lambda art, feeds: [runs[id(art)](f) for f in feeds])


def export(fn, tflite_fn, *, tflite_float_nodes=(), fmt="tflite"):
    base = {"format": "onnx", "precision": "int8", "ok": True, "float_nodes": ["Concat_9"]}
    other = {"format": fmt, "precision": "int8", "ok": True, "float_nodes": ["Concat_9", *tflite_float_nodes],
             "error": None, "exit_code": 0}
    ctx = context([(base, lambda feed: [fn(feed["x"])]), (other, lambda feed: [tflite_fn(feed["x"])])])
    _int8_agreement(ctx, [base, other])
    return other


def noise(fn, scale):
    """fn plus Gaussian noise of `scale` times each channel's (axis 1) own max |value|."""
    rng = np.random.default_rng(3)

    def run(x):
        y = fn(x)
        per_channel = np.abs(y).max(axis=tuple(i for i in range(y.ndim) if i != 1), keepdims=True)
        return y + scale * per_channel * rng.standard_normal(y.shape).astype(np.float32)

    return run


@pytest.mark.parametrize("fn", [yolo, lraspp], ids=["yolo", "lraspp"])
def test_an_agreeing_tflite_passes(fn):
    art = export(fn, noise(fn, 4e-3))  # integer-kernel rounding: ~1 int8 step of each tensor's range
    assert art["ok"] and art["error"] is None
    agreement = art["agreement_with_onnx_int8"]
    assert agreement["judged"] and agreement["min_cosine"] == AGREEMENT_FLOOR == 0.99
    assert agreement["cosine"] > 0.999 and agreement["worst_slice"]["cosine"] > 0.99


def test_yolo_scores_collapsed_into_the_box_scale_fail_on_their_slice():
    """The YOLO11n bug: the concat's one scale (boxes up to ~320 px) leaves the scores 0 or 1.25.
    The whole tensor still agrees to > 0.99 (the boxes dominate); the score rows do not."""
    step = 320 / 255

    def collapsed(x):
        y = yolo(x)
        y[:, 4:] = np.round(y[:, 4:] / step) * step
        return y

    xs = np.random.default_rng(0).standard_normal((8, 1, 3, 8, 8)).astype(np.float32)
    whole = compare([np.stack([yolo(x) for x in xs])], [np.stack([collapsed(x) for x in xs])], ["y"])
    assert whole["cosine"] > 0.99  # what a whole-tensor check would have passed
    art = export(yolo, collapsed)
    assert not art["ok"] and art["exit_code"] == VerificationFailed.exit_code
    assert "disagrees with the int8 ONNX" in art["error"] and "slice" in art["error"]
    assert art["agreement_with_onnx_int8"]["worst_slice"]["index"] >= 4  # a score row


def test_lraspp_gate_off_fails():
    """The LR-ASPP bug: the gate multiply computed at the wrong scale (here: the gate at a quarter)."""
    art = export(lraspp, lambda x: lraspp(x, gate_scale=0.25))
    assert not art["ok"] and "disagrees with the int8 ONNX" in art["error"]
    assert art["agreement_with_onnx_int8"]["cosine"] < AGREEMENT_FLOOR or \
        art["agreement_with_onnx_int8"]["worst_slice"]["cosine"] < AGREEMENT_FLOOR


def test_not_the_same_quantized_model_is_reported_not_judged():
    """A TFLite whose guard kept other nodes float, and ncnn (its int8 rounds only conv inputs):
    the agreement is reported, the artifact keeps its own verdict."""
    wrong = lambda x: -yolo(x)  # noqa: E731
    for kw in ({"tflite_float_nodes": ["Conv_3"]}, {"fmt": "ncnn"}):
        art = export(yolo, wrong, **kw)
        assert art["ok"] and art["agreement_with_onnx_int8"]["judged"] is False
        assert art["agreement_with_onnx_int8"]["cosine"] < 0


def test_check_agreement_names_floor_and_cosine():
    ref = [np.linspace(1, 2, 40, dtype=np.float32).reshape(4, 1, 10)]
    with pytest.raises(VerificationFailed, match=r"cosine -1\.0000 < 0\.99"):
        check_agreement(compare(ref, [-ref[0]], ["y"]))
    check_agreement(compare(ref, [ref[0] * 1.001], ["y"]))  # a scale error of 0.1%: agrees
