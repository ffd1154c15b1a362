"""Evaluation: depth (SCARED / Hamlyn protocol), pose (ATE, RPE) and intrinsics errors.

Depth (Monodepth2 / AF-SfMLearner / EndoDAC protocol): the prediction is
resized to the ground truth's size; pixels with ground truth in
``(min_depth, cap)`` count (cap 150 mm, C3VD 100 mm); each frame's
prediction is scaled by ``median(gt) / median(pred)`` over those pixels and
clamped to ``[min_depth, cap]``; AbsRel, SqRel, RMSE (mm), RMSElog and the
``delta < 1.25^k`` accuracies are computed per frame and averaged over frames.

Pose: consecutive relative motions chained into a trajectory, aligned to
the ground truth's camera centres with a similarity transform (Umeyama,
scale included: monocular scale is unknown); ATE is the RMSE of the aligned
centres (mm), RPE the mean error of consecutive relative motions (translation
in mm after the same scale, rotation in degrees).

Intrinsics: the learned ``K`` averaged over the sequence's frame pairs,
rescaled to the data's resolution: focal error in % of the true focal
length (mean of fx, fy), principal-point error in pixels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from endo3d.geometry.align import umeyama

__all__ = [
    "DEPTH_METRICS",
    "ate_rpe",
    "depth_metrics",
    "evaluate",
    "evaluate_sequences",
    "format_table",
    "intrinsics_error",
    "umeyama",
]

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def depth_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The seven standard metrics on matching 1-D arrays of valid depths (mm)."""
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    thresh = np.maximum(gt / pred, pred / gt)
    return {
        "abs_rel": float(np.mean(np.abs(gt - pred) / gt)),
        "sq_rel": float(np.mean((gt - pred) ** 2 / gt)),
        "rmse": float(np.sqrt(np.mean((gt - pred) ** 2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        "a1": float(np.mean(thresh < 1.25)),
        "a2": float(np.mean(thresh < 1.25**2)),
        "a3": float(np.mean(thresh < 1.25**3)),
    }


def frame_depth_metrics(gt: np.ndarray, pred: np.ndarray, *, cap_mm: float, min_mm: float = 1e-3,
                        median_scaling: bool = True, valid: np.ndarray | None = None) -> tuple[dict[str, float], float] | None:
    """Protocol for one frame: mask, median-scale, clamp, metrics; returns ``(metrics, ratio)`` or None (no valid pixel)."""
    mask = (gt > min_mm) & (gt < cap_mm) & np.isfinite(gt)
    if valid is not None:
        mask &= valid
    if not mask.any():
        return None
    g, p = gt[mask].astype(np.float64), pred[mask].astype(np.float64)
    ratio = float(np.median(g) / np.median(p)) if median_scaling else 1.0
    p = np.clip(p * ratio, min_mm, cap_mm)
    return depth_metrics(g, p), ratio


def _rotation_angle_deg(R: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def ate_rpe(pred_c2w: np.ndarray, gt_c2w: np.ndarray) -> dict[str, float]:
    """ATE (mm, after Sim(3) alignment of the camera centres) and RPE of consecutive frames.

    Args:
        pred_c2w, gt_c2w: ``(N, 4, 4)`` trajectories, N >= 3 for a meaningful alignment.
    """
    pred_c2w, gt_c2w = np.asarray(pred_c2w, np.float64), np.asarray(gt_c2w, np.float64)
    s, R, t = umeyama(pred_c2w[:, :3, 3], gt_c2w[:, :3, 3])
    aligned = (s * (R @ pred_c2w[:, :3, 3].T)).T + t
    ate = float(np.sqrt(np.mean(np.sum((aligned - gt_c2w[:, :3, 3]) ** 2, axis=1))))
    trans, rot = [], []
    for i in range(len(gt_c2w) - 1):
        g = np.linalg.inv(gt_c2w[i]) @ gt_c2w[i + 1]
        p = np.linalg.inv(pred_c2w[i]) @ pred_c2w[i + 1]
        p[:3, 3] *= s
        E = np.linalg.inv(g) @ p
        trans.append(float(np.linalg.norm(E[:3, 3])))
        rot.append(_rotation_angle_deg(E[:3, :3]))
    return {"ate_mm": ate, "rpe_trans_mm": float(np.mean(trans)) if trans else 0.0,
            "rpe_rot_deg": float(np.mean(rot)) if rot else 0.0, "scale": s}


def intrinsics_error(K_pred: np.ndarray, K_gt: np.ndarray) -> dict[str, float]:
    """Focal error in % (mean of |dfx|/fx and |dfy|/fy) and principal-point error in pixels."""
    f = 0.5 * (abs(K_pred[0, 0] - K_gt[0, 0]) / K_gt[0, 0] + abs(K_pred[1, 1] - K_gt[1, 1]) / K_gt[1, 1])
    c = math.hypot(K_pred[0, 2] - K_gt[0, 2], K_pred[1, 2] - K_gt[1, 2])
    return {"focal_error_pct": 100.0 * float(f), "principal_point_error_px": float(c),
            "fx": float(K_pred[0, 0]), "fy": float(K_pred[1, 1]), "cx": float(K_pred[0, 2]), "cy": float(K_pred[1, 2])}


@dataclass
class _Accumulator:
    values: dict[str, list[float]]

    def add(self, m: dict[str, float]) -> None:
        for k, v in m.items():
            self.values.setdefault(k, []).append(v)

    def mean(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self.values.items()}


@torch.no_grad()
def evaluate_sequences(loaded, sequences, *, cap_mm: float | None = None, min_mm: float = 1e-3,
                       median_scaling: bool = True, device: torch.device | None = None,
                       progress: bool = False) -> dict[str, Any]:
    """Evaluate a loaded run (:class:`endo3d.depth.run.LoadedRun`) on :class:`FrameSequence` objects.

    Returns:
        ``{"depth": mean metrics over all frames, "frames": count, "cap_mm": .., "sequences": [per sequence
        {"name", "depth", "frames", "pose" (or None), "intrinsics" (or None)}], "pose": mean over sequences,
        "intrinsics": mean over sequences}``.
    """
    from tqdm import tqdm

    from endo3d.depth.train import resize_image, resize_intrinsics

    device = device or torch.device("cpu")
    net, pose = loaded.net.to(device).eval(), loaded.pose
    if pose is not None:
        pose = pose.to(device).eval()
    size = (net.config.height, net.config.width)
    total = _Accumulator({})
    pose_acc, k_acc = _Accumulator({}), _Accumulator({})
    per_seq = []
    frames_done = 0
    for seq in sequences:
        cap = cap_mm if cap_mm is not None else seq.eval_cap_mm
        acc = _Accumulator({})
        images = []
        for i in tqdm(range(len(seq)), desc=f"eval {seq.name}", disable=not progress, unit="frame"):
            img = resize_image(seq.image(i), size)
            images.append(img)
            gt = seq.depth(i)
            if gt is None:
                continue
            pred = net.depth(img[None].to(device))
            pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
            mask = seq.mask(i)
            out = frame_depth_metrics(gt[0].numpy(), pred, cap_mm=cap, min_mm=min_mm, median_scaling=median_scaling,
                                      valid=None if mask is None else mask[0].numpy())
            if out is not None:
                acc.add(out[0])
                total.add(out[0])
        seq_pose = seq_k = None
        if pose is not None and len(images) >= 2:
            c2w = [np.eye(4)]
            Ks = []
            for i in range(len(images) - 1):
                o = pose(images[i][None].to(device), images[i + 1][None].to(device))
                T = o.T[0].double().cpu().numpy()  # T_{i+1 from i}
                c2w.append(c2w[-1] @ np.linalg.inv(T))
                if o.K is not None:
                    Ks.append(o.K[0].double().cpu().numpy())
            if seq.poses is not None and len(images) >= 3:
                gt_poses = np.asarray(seq.poses, np.float64)
                # the eval is in mm: anchor the first predicted pose at the first true one
                seq_pose = ate_rpe(gt_poses[0] @ np.stack(c2w), gt_poses)
                pose_acc.add(seq_pose)
            if Ks and seq.K is not None:
                K_mean = resize_intrinsics(np.mean(Ks, axis=0), size, seq.size)
                seq_k = intrinsics_error(K_mean, seq.K)
                k_acc.add(seq_k)
        n = len(acc.values.get("abs_rel", []))
        frames_done += n
        per_seq.append({"name": seq.name, "source": str(seq.source), "frames": n, "cap_mm": cap,
                        "depth": acc.mean() if n else None, "pose": seq_pose, "intrinsics": seq_k})
    return {
        "depth": total.mean() if frames_done else None,
        "frames": frames_done,
        "median_scaling": median_scaling,
        "pose": pose_acc.mean() if pose_acc.values else None,
        "intrinsics": k_acc.mean() if k_acc.values else None,
        "sequences": per_seq,
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the per-sequence and overall metrics."""
    head = ["sequence", "frames", *DEPTH_METRICS, "ATE mm", "RPE mm", "RPE deg", "focal %", "pp px"]
    rows = []

    def row(name: str, frames: Any, depth: Any, pose: Any, k: Any) -> list[str]:
        d = [f"{depth[m]:.4f}" if depth else "-" for m in DEPTH_METRICS]
        p = [f"{pose[m]:.3f}" if pose else "-" for m in ("ate_mm", "rpe_trans_mm", "rpe_rot_deg")]
        i = [f"{k[m]:.2f}" if k else "-" for m in ("focal_error_pct", "principal_point_error_px")]
        return [name, str(frames), *d, *p, *i]

    for s in result["sequences"]:
        rows.append(row(s["name"], s["frames"], s["depth"], s["pose"], s["intrinsics"]))
    rows.append(row("all", result["frames"], result["depth"], result["pose"], result["intrinsics"]))
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def evaluate(config) -> tuple[dict[str, Any], Path]:
    """``endo3d depth eval``: evaluate ``config.checkpoint`` on ``config.data``; write the JSON.

    Returns:
        The result dict and the JSON path.
    """
    from endo3d.core.errors import InputError
    from endo3d.depth.data import open_sequences
    from endo3d.depth.run import load_run
    from endo3d.core.device import resolve_device

    if config.frame_step < 1:
        raise InputError("--frame-step", f"must be >= 1, got {config.frame_step}")
    if not config.data:
        raise InputError("settings", "give at least one dataset to evaluate on")
    if not (config.min_depth_mm > 0 and (config.max_depth_mm is None or config.min_depth_mm < config.max_depth_mm)):
        raise InputError("settings", f"need 0 < --min-depth-mm < --max-depth-mm, got {config.min_depth_mm}, "
                                     f"{config.max_depth_mm}")
    loaded = load_run(config.checkpoint)
    sequences = open_sequences(list(config.data), frame_step=config.frame_step)
    if not any(s.has_depth for s in sequences) and loaded.pose is None:
        raise InputError(sequences[0].source, "no ground-truth depth to evaluate against")
    result = evaluate_sequences(loaded, sequences, cap_mm=config.max_depth_mm, min_mm=config.min_depth_mm,
                                median_scaling=config.median_scaling, device=resolve_device(config.device),
                                progress=config.progress)
    result["checkpoint"] = str(config.checkpoint)
    out = Path(config.out) if config.out is not None else Path(config.checkpoint) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    return result, out
