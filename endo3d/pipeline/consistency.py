"""Temporally consistent depth and refined poses: a small photometric + geometric bundle adjustment.

The networks' depth maps agree with their motion only on average; per frame
the scale drifts. Following Endo3DAC's reconstruction step, each training
frame ``k`` gets a depth scale and shift, ``d'_k = exp(s_k) d_k + b_k m``
(``m``: the median depth of the clip, so ``b_k`` is unit-free), and a pose
correction ``c2w'_k = c2w_k exp(xi_k)`` (``xi_k`` in se(3): axis-angle, and
translation in units of ``m``); with estimated intrinsics the focal
length gets a shared log-correction ``f' = exp(phi) f``. All are fitted
jointly over every pair of training frames at most ``window`` training
frames apart, both directions, minimising

    photometric:  w (1 - SSIM) / 2 + (1 - w) |I_a - warp(I_b; d'_a, T_{b<-a}, K')|    (w = 0.85)
    geometric:    |z_{a->b} - d'_b(p_{a->b})| / (z_{a->b} + d'_b(p_{a->b}))            (SC-SfMLearner)

on pixels valid in both frames, plus a small penalty on the shifts, with
Adam whose rates fall linearly to 10 %, on a random subset of the pairs each
step. The
first training frame is the gauge: its pose and scale stay fixed. The
frames are compared at ``align_height`` pixels high. Held-out frames are not
in any pair: their poses are the networks' motion from the previous
training frame applied to its refined pose (:func:`endo3d.geometry.carry_corrections`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from endo3d.depth.losses import backproject, photometric_error, warp_source
from endo3d.depth.train import resize_intrinsics
from endo3d.geometry import invert_pose, se3_exp

GEOMETRIC_WEIGHT = 0.5
"""Weight of the geometric term against the photometric one."""
SHIFT_WEIGHT = 1e-2
"""Weight of the squared per-frame depth shifts (unit-free): a shift is used only where it pays."""
PAIRS_PER_STEP = 48
"""Pairs drawn at random for each step (all pairs when there are fewer): the cost of a step stays flat in
the clip length."""


@dataclass
class Refined:
    """The result of :func:`refine_cameras` for the frames it was given.

    Attributes:
        c2w: float64 ``(T, 4, 4)`` refined poses of the training frames.
        scale, shift_mm: ``(T,)`` the depth correction ``d' = scale d + shift_mm``.
        focal_scale: the factor applied to fx and fy (1 when K was given).
        loss_before, loss_after: the objective at the start and at the end.
    """

    c2w: torch.Tensor
    scale: torch.Tensor
    shift_mm: torch.Tensor
    focal_scale: float
    loss_before: float
    loss_after: float


def frame_pairs(count: int, window: int) -> torch.Tensor:
    """``(P, 2)`` ordered pairs ``(a, b)`` of positions ``0..count-1`` with ``1 <= |a - b| <= window``."""
    pairs = [(a, b) for a in range(count) for b in range(count) if 1 <= abs(a - b) <= window]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def pair_losses(rgb: torch.Tensor, valid: torch.Tensor, depth: torch.Tensor, K: torch.Tensor,
                c2w: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean photometric and geometric error of warping frame ``b`` into frame ``a`` for each pair.

    Args:
        rgb: ``(T, 3, h, w)``; valid: bool ``(T, 1, h, w)``; depth: ``(T, 1, h, w)`` (> 0);
        K: ``(3, 3)``; c2w: ``(T, 4, 4)``; pairs: ``(P, 2)`` positions ``(a, b)``.

    Returns:
        ``(photometric, geometric)``, scalars averaged over the valid pixels of all pairs.
    """
    a, b = pairs[:, 0], pairs[:, 1]
    T_b_from_a = invert_pose(c2w[b]) @ c2w[a]
    Ks = K.expand(len(pairs), 3, 3)
    source = torch.cat([rgb[b], depth[b], valid[b].to(rgb.dtype)], dim=1)
    warped, inside = warp_source(source, depth[a], Ks, T_b_from_a.to(rgb.dtype))
    image_b, depth_b, valid_b = warped[:, :3], warped[:, 3:4], warped[:, 4:5] > 0.999
    use = valid[a] & inside & valid_b
    weight = use.to(rgb.dtype)
    count = weight.sum().clamp_min(1)
    photometric = (photometric_error(image_b, rgb[a]) * weight).sum() / count
    points = backproject(depth[a], Ks).flatten(2)
    z = (T_b_from_a[:, 2:3, :3].to(rgb.dtype) @ points + T_b_from_a[:, 2:3, 3:].to(rgb.dtype)).view_as(depth[a])
    geometric = ((z - depth_b).abs() / (z + depth_b).clamp_min(1e-6) * weight).sum() / count
    return photometric, geometric


def refine_cameras(rgb: torch.Tensor, valid: torch.Tensor, depth: torch.Tensor, K: np.ndarray, c2w: torch.Tensor,
                   *, steps: int, window: int, height: int, learn_focal: bool,
                   on_step: Callable[[int], None] | None = None, seed: int = 0,
                   device: torch.device | str = "cpu") -> Refined:
    """Fit per-frame depth scale and shift, pose corrections and (optionally) the focal length; module docstring.

    Args:
        rgb: ``(T, 3, H, W)`` training frames; valid: bool ``(T, 1, H, W)``; depth: ``(T, 1, H, W)`` mm;
        K: ``(3, 3)`` at ``(H, W)``; c2w: ``(T, 4, 4)``; steps: Adam steps; window: neighbours per side;
        height: comparison height in pixels; learn_focal: fit the focal correction; seed: of the pair draws;
        device: where the fit runs (inputs and results stay on the CPU).
    """
    H, W = rgb.shape[-2:]
    h = min(height, H)
    w = max(8, round(W * h / H))
    small_rgb = F.interpolate(rgb.to(device), size=(h, w), mode="area")
    small_valid = F.interpolate(valid.to(device).float(), size=(h, w), mode="area") > 0.999
    small_depth = F.interpolate(depth.to(device), size=(h, w), mode="area").clamp_min(1e-3)
    K0 = torch.from_numpy(resize_intrinsics(K, (H, W), (h, w))).float().to(device)
    count = rgb.shape[0]
    median = float(small_depth[small_valid].median()) if bool(small_valid.any()) else float(small_depth.median())
    log_scale = torch.zeros(count, device=device, requires_grad=True)
    shift = torch.zeros(count, device=device, requires_grad=True)
    xi = torch.zeros(count, 6, device=device, requires_grad=True)
    log_focal = torch.zeros((), device=device, requires_grad=learn_focal)
    free = torch.ones(count, 1, device=device)
    free[0] = 0  # the gauge frame
    params = [{"params": [log_scale, shift], "lr": 1e-2}, {"params": [xi], "lr": 1e-3}]
    if learn_focal:
        params.append({"params": [log_focal], "lr": 2e-3})
    optimizer = torch.optim.Adam(params)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 - 0.9 * k / max(steps, 1))
    unit = torch.tensor([1.0, 1.0, 1.0, median, median, median], device=device)  # radians; translation / median
    pairs = frame_pairs(count, window).to(device)
    base = c2w.float().to(device)

    def objective(use: torch.Tensor) -> torch.Tensor:
        s = log_scale * free[:, 0]
        d = (s.exp()[:, None, None, None] * small_depth + (shift * free[:, 0])[:, None, None, None] * median)
        d = d.clamp_min(1e-3)
        poses = base @ se3_exp(xi * unit * free)
        Kf = K0.clone()
        Kf[0, 0] = K0[0, 0] * log_focal.exp()
        Kf[1, 1] = K0[1, 1] * log_focal.exp()
        photometric, geometric = pair_losses(small_rgb, small_valid, d, Kf, poses, use)
        return photometric + GEOMETRIC_WEIGHT * geometric + SHIFT_WEIGHT * (shift ** 2).mean()

    if len(pairs) == 0:
        steps = 0
    draw = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        before = float(objective(pairs)) if len(pairs) else 0.0
    for step in range(steps):
        loss = objective(pairs[torch.randperm(len(pairs), generator=draw)[:PAIRS_PER_STEP].to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_step is not None:
            on_step(step + 1)
    with torch.no_grad():
        after = float(objective(pairs)) if len(pairs) else 0.0
        scale = (log_scale * free[:, 0]).exp().cpu()
        shift_mm = (shift * free[:, 0] * median).cpu()
        poses = c2w @ se3_exp((xi * unit * free).double().cpu())
    return Refined(c2w=poses, scale=scale, shift_mm=shift_mm,
                   focal_scale=float(log_focal.detach().exp()), loss_before=before, loss_after=after)
