"""[K] No wrong artifact is called verified: default floors per precision, judged by the worst
slice of each output, NaN/Inf where the reference is finite fails."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import VerificationFailed
from edgepack.verify import FLOORS, check_fidelity, compare, floor_for


def _entry(ref, act, precision, names=("y",)):
    fid = compare(ref, act, list(names))
    f = floor_for(precision, "exact")
    fid["tolerance"] = {"rel_error": f.rel_error, "enforced": True, "rel_error_enforced": f.rel_error_enforced,
                        "min_cosine": f.cosine, "min_top1": None}
    return {"fidelity": fid, "float_nodes": []}


def _yolo_head(rng, samples=4, classes=80, anchors=300):
    """[S, 1, 4 + classes, anchors]: box coordinates in pixels next to class scores in 0-1."""
    boxes = rng.uniform(0, 320, (samples, 1, 4, anchors))
    scores = 1 / (1 + np.exp(-rng.standard_normal((samples, 1, classes, anchors))))
    return np.concatenate([boxes, scores], axis=2).astype(np.float32)


def test_a_collapsed_class_slice_fails_though_the_whole_tensor_looks_fine():
    rng = np.random.default_rng(0)
    ref = _yolo_head(rng)
    act = ref.copy()
    act[:, :, 4 + 17, :] = 0.5  # class 17 collapsed to a constant
    fid = compare([ref], [act], ["y"])
    assert fid["cosine"] > 0.999  # boxes dominate the whole tensor's cosine
    assert fid["worst_slice"] == {"output": "y", "axis": 1, "index": 21, "cosine": pytest.approx(fid["worst_slice"]["cosine"]),
                                  "slices": 84}
    assert fid["worst_slice"]["cosine"] < 0.99
    with pytest.raises(VerificationFailed, match="worst slice: output 'y' axis 1 index 21"):
        check_fidelity(_entry([ref], [act], "int8"), "int8")
    check_fidelity(_entry([ref], [ref + 1e-3 * rng.standard_normal(ref.shape).astype(np.float32)], "int8"), "int8")


def test_sequence_outputs_are_judged_along_the_last_axis_too():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((4, 1, 20, 6)).astype(np.float32)  # [S, 1, T, C]
    act = ref.copy()
    act[..., 3] *= -1  # feature 3 flipped
    fid = compare([ref], [act], ["y"])
    assert fid["worst_slice"]["axis"] == 2 and fid["worst_slice"]["index"] == 3
    assert fid["worst_slice"]["cosine"] == pytest.approx(-1.0)


def test_negligible_slices_are_not_judged_and_2d_outputs_are_judged_whole():
    rng = np.random.default_rng(2)
    probs = np.exp(rng.standard_normal((4, 1, 50, 10)) * 4)
    probs /= probs.sum(axis=-1, keepdims=True)
    probs[..., 9] = 1e-9  # a class no sample ever chooses: int8 rounds it to 0
    act = probs.copy()
    act[..., 9] = 0.0
    assert compare([probs], [act], ["y"])["worst_slice"]["cosine"] > 0.999
    assert "worst_slice" not in compare([probs[:, :, 0]], [probs[:, :, 0]], ["y"])


def test_fp16_overflow_fails_on_relative_error_though_cosine_hides_it():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((4, 1, 1000)).astype(np.float32)
    ref[:, :, 0] = 70000.0  # a large logit: fp16 overflows it to 65504 (max) or inf
    act = ref.copy()
    act[:, :, 0] = 65504.0
    fid = compare([ref], [act], ["y"])
    assert fid["cosine"] > 0.99 and fid["rel_error"] > 0.05
    with pytest.raises(VerificationFailed, match="exceeds the fp16 floor"):
        check_fidelity(_entry([ref], [act], "fp16"), "fp16")


def test_nan_where_the_reference_is_finite_fails_every_precision():
    ref = np.ones((2, 1, 4), np.float32)
    act = ref.copy()
    act[0, 0, 1] = np.nan
    for precision in ("fp32", "fp16", "int8"):
        with pytest.raises(VerificationFailed, match="NaN/Inf where the reference is finite"):
            check_fidelity(_entry([ref], [act], precision), precision)


def test_floors_are_set_for_every_precision_and_the_user_overrides_them():
    assert FLOORS[("int8", "exact")].cosine == 0.99 and FLOORS[("fp16", "exact")].rel_error == 0.05
    assert floor_for("int8", "exact", min_cosine=0.999).cosine == 0.999
    assert floor_for("fp32", "exact", tolerance=1e-3).rel_error == 1e-3
    assert floor_for("fp32", "exact", min_cosine=0.5).cosine == 0.9999  # --min-cosine is for quantized artifacts
