"""Verification metrics, the tolerance table, verification sets and calibration loading."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.calib import load_samples
from edgepack.errors import UsageError
from edgepack.verify import FLOORS, compare, make_verification_set, tolerance_for


def test_compare_metrics_on_known_difference():
    ref = np.array([[[1.0, -2.0, 4.0]], [[0.5, 3.0, -1.0]]], dtype=np.float32)  # (S=2, N=1, C=3)
    act = ref.copy()
    act[1, 0, 1] += 0.4  # one element off by 0.4; still the same argmax
    m = compare([ref], [act], ["y"])
    assert m["max_abs_error"] == pytest.approx(0.4, rel=1e-6)
    assert m["rel_error"] == pytest.approx(0.4 / 4.0, rel=1e-6)
    assert m["top1_agreement"] == 1.0
    expected_cos = np.mean([1.0, np.dot(ref[1, 0], act[1, 0]) / (np.linalg.norm(ref[1, 0]) * np.linalg.norm(act[1, 0]))])
    assert m["cosine"] == pytest.approx(expected_cos, rel=1e-6)  # expected computed in float32


def test_compare_top1_disagreement_and_worst_over_outputs():
    ref = np.array([[[0.0, 1.0]], [[1.0, 0.0]]])
    act = np.array([[[1.0, 0.0]], [[1.0, 0.0]]])
    other = np.zeros((2, 1, 4, 4))
    m = compare([ref, other], [act, other + 0.5], ["logits", "map"])
    assert m["top1_agreement"] == 0.5
    assert m["max_abs_error"] == 1.0
    assert m["per_output"]["map"]["rel_error"] == 0.5  # reference all zero: rel falls back to abs
    assert "top1_agreement" not in m["per_output"]["map"]  # 4-D output is not classifier-like


def test_compare_flags_nan_and_shape_mismatch():
    ref = np.ones((1, 1, 3))
    act = ref.copy()
    act[0, 0, 0] = np.nan
    assert compare([ref], [act], ["y"])["rel_error"] == float("inf")
    assert "shape" in compare([ref], [np.ones((1, 1, 4))], ["y"])["error"]


def test_tolerance_table_fp32_and_user_target():
    assert FLOORS[("fp32", "exact")].rel_error == 1e-4
    assert tolerance_for("fp32") == (1e-4, True)
    assert tolerance_for("fp32", user_target=1e-2) == (1e-2, True)
    assert tolerance_for("fp16") == (0.05, True)  # enforced: an fp16 overflow gives ~1
    assert tolerance_for("int8") == (None, True)  # int8 is judged by its cosine floor instead
    assert tolerance_for("fp32", "approx") == (1e-2, False)  # --prune-approx: reported only


def test_random_verification_set_is_seeded():
    a = make_verification_set({"x": (1, 3, 4, 4)}, seed=3)
    b = make_verification_set({"x": (1, 3, 4, 4)}, seed=3)
    c = make_verification_set({"x": (1, 3, 4, 4)}, seed=4)
    assert a.inputs["x"].shape == (10, 1, 3, 4, 4) and a.source == "random-normal" and a.edge == 2
    assert not a.inputs["x"][8].any() and np.abs(a.inputs["x"][9]).max() > 10  # zeros, then 10x N(0,1)
    assert a.in_range().count == 8
    np.testing.assert_array_equal(a.inputs["x"], b.inputs["x"])
    assert not np.array_equal(a.inputs["x"], c.inputs["x"])


def test_calibration_holdout_split_is_disjoint_and_20_percent():
    data = np.arange(50 * 2, dtype=np.float32).reshape(50, 2)
    vset = make_verification_set({"x": (1, 2)}, seed=0, calib={"x": data})
    held = vset.inputs["x"].reshape(-1, 2)[:, 0] // 2
    assert vset.source == "calibration-holdout" and vset.count == 10
    assert set(held.astype(int)).isdisjoint(set(vset.calibration_indices.tolist()))
    assert len(vset.calibration_indices) == 40


def test_load_samples_npy_and_npz_and_errors(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 3, 8, 8), np.float32))
    assert load_samples(tmp_path / "a.npy", {"x": (1, 3, 8, 8)})["x"].shape == (5, 3, 8, 8)
    np.save(tmp_path / "full.npy", np.zeros((5, 1, 3, 8, 8), np.float64))
    got = load_samples(tmp_path / "full.npy", {"x": (1, 3, 8, 8)})["x"]
    assert got.shape == (5, 3, 8, 8) and got.dtype == np.float32
    with pytest.raises(UsageError, match=r"expected \(N, 3, 16, 16\)"):
        load_samples(tmp_path / "a.npy", {"x": (1, 3, 16, 16)})
    np.savez(tmp_path / "b.npz", a=np.zeros((4, 2)), b=np.zeros((3, 5)))
    with pytest.raises(UsageError, match="different sample counts"):
        load_samples(tmp_path / "b.npz", {"a": (1, 2), "b": (1, 5)})
    with pytest.raises(UsageError, match="missing input"):
        load_samples(tmp_path / "b.npz", {"c": (1, 2)})
    with pytest.raises(UsageError, match="not found"):
        load_samples(tmp_path / "nope.npy", {"x": (1, 2)})
