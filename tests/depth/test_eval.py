"""Depth, pose and intrinsics metrics (endo3d.depth.evaluate) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from endo3d.depth.evaluate import ate_rpe, depth_metrics, format_table, frame_depth_metrics, intrinsics_error, umeyama


def test_depth_metrics_by_hand():
    m = depth_metrics(np.array([10.0, 20.0]), np.array([11.0, 18.0]))
    assert m["abs_rel"] == pytest.approx(0.1)
    assert m["sq_rel"] == pytest.approx((1 / 10 + 4 / 20) / 2)
    assert m["rmse"] == pytest.approx(math.sqrt(2.5))
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(10 / 11) ** 2 + math.log(20 / 18) ** 2) / 2))
    assert m["a1"] == 1.0
    m = depth_metrics(np.array([10.0, 10.0, 10.0, 10.0]), np.array([10.0, 13.0, 16.0, 20.0]))
    assert (m["a1"], m["a2"], m["a3"]) == (0.25, 0.5, 0.75)  # ratios 1, 1.3, 1.6, 2.0 vs 1.25, 1.5625, 1.953


def test_frame_protocol_median_scaling_and_cap():
    gt = np.array([[10.0, 20.0], [40.0, 200.0]])
    pred = 0.5 * gt
    pred[1, 1] = 1.0  # beyond the cap in gt: ignored
    m, ratio = frame_depth_metrics(gt, pred, cap_mm=150.0)
    assert ratio == pytest.approx(2.0) and m["abs_rel"] == pytest.approx(0.0) and m["a1"] == 1.0
    m2, r2 = frame_depth_metrics(gt, pred, cap_mm=150.0, median_scaling=False)
    assert r2 == 1.0 and m2["abs_rel"] == pytest.approx(0.5)
    # predictions are clamped to the cap after scaling
    m3, _ = frame_depth_metrics(np.array([100.0, 100.0, 140.0]), np.array([1.0, 1.0, 10.0]), cap_mm=150.0)
    assert m3["abs_rel"] == pytest.approx((150 - 140) / 140 / 3)
    assert frame_depth_metrics(np.zeros((2, 2)), np.ones((2, 2)), cap_mm=150.0) is None
    valid = np.array([[True, False], [False, False]])
    m4, _ = frame_depth_metrics(gt, pred, cap_mm=150.0, valid=valid)
    assert m4["abs_rel"] == 0


def _trajectory(n: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        T = np.eye(4)
        T[:3, :3] = Rotation.from_rotvec(0.05 * i * np.array([0.2, 1.0, 0.1]) + 0.01 * rng.normal(size=3)).as_matrix()
        T[:3, 3] = [3.0 * i, 1.5 * math.sin(i), 0.5 * i**1.2] + 0.2 * rng.normal(size=3)
        out.append(T)
    return np.stack(out)


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3))
    R = Rotation.from_rotvec([0.3, -0.2, 0.9]).as_matrix()
    dst = 2.5 * src @ R.T + np.array([1.0, 2.0, 3.0])
    s, R2, t = umeyama(src, dst)
    assert s == pytest.approx(2.5) and np.allclose(R2, R) and np.allclose(t, [1, 2, 3])


def test_ate_zero_for_similarity_transformed_trajectory():
    gt = _trajectory()
    S = np.eye(4)
    S[:3, :3] = Rotation.from_rotvec([0.5, 0.1, -0.7]).as_matrix()
    S[:3, 3] = [10.0, -4.0, 2.0]
    scale = 0.37
    pred = []
    for T in gt:  # world moved by S and shrunk: camera centres s R c + t, orientations R R_c
        P = S @ T
        P[:3, 3] = scale * (S[:3, :3] @ T[:3, 3]) + S[:3, 3]
        pred.append(P)
    m = ate_rpe(np.stack(pred), gt)
    assert m["ate_mm"] < 1e-9 and m["rpe_trans_mm"] < 1e-9 and m["rpe_rot_deg"] < 1e-5
    assert m["scale"] == pytest.approx(1 / scale)
    noisy = np.stack(pred).copy()
    noisy[5, :3, 3] += 0.3
    assert ate_rpe(noisy, gt)["ate_mm"] > 0.1


def test_intrinsics_error():
    Kgt = np.array([[100.0, 0, 50.0], [0, 100.0, 40.0], [0, 0, 1]])
    Kp = np.array([[105.0, 0, 53.0], [0, 97.0, 44.0], [0, 0, 1]])
    e = intrinsics_error(Kp, Kgt)
    assert e["focal_error_pct"] == pytest.approx(4.0) and e["principal_point_error_px"] == pytest.approx(5.0)


def test_table_formats():
    result = {"sequences": [{"name": "a", "frames": 2, "depth": dict.fromkeys(
        ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"), 0.5), "pose": None, "intrinsics": None}],
        "frames": 2, "depth": None, "pose": None, "intrinsics": None}
    text = format_table(result)
    assert "abs_rel" in text and "0.5000" in text and text.count("\n") == 2
