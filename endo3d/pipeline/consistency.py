"""Temporally consistent depth and refined poses: a small photometric + geometric bundle adjustment.

The networks' depth maps agree with their motion only on average; per frame
the scale drifts. Following Endo3DAC's reconstruction step, each training
frame ``k`` gets a depth scale, a smooth shape correction and a shift,
``d'_k(p) = exp(s_k + S_k(p)) d_k(p) + b_k m`` (``m``: the median depth of
the clip, so ``b_k`` is unit-free; ``S_k`` bilinear between a coarse grid of
zero-mean log factors, :data:`SHAPE_ROWS`: the flexible deformation of
Robust Consistent Video Depth, Kopf et al. 2021, which undoes the low
frequency shape errors of a depth prior), and its
motion from the previous training frame a correction,
``M'_k = M_k exp(xi_k)`` (``xi_k`` in se(3): axis-angle, and translation in
units of ``m``; :func:`corrected` chains them back into poses, so fixing one
motion carries every later camera); with estimated intrinsics the focal
length gets a shared log-correction ``f' = exp(phi) f``. All are fitted
jointly over every pair of training frames at most ``window`` training
frames apart, both directions, minimising

    photometric:  w (1 - SSIM) / 2 + (1 - w) |I_a - warp(I_b; d'_a, T_{b<-a}, K')|    (w = 0.85)
    geometric:    |z_{a->b} - d'_b(p_{a->b})| / (z_{a->b} + d'_b(p_{a->b}))            (SC-SfMLearner)

on pixels valid in both frames, plus small penalties on the shifts and the shape factors, with
Adam whose rates fall linearly to 10 %, on a random subset of the pairs each
step, coarse to fine over an image pyramid (:data:`LEVELS`). The first
training frame is the gauge: its pose and scale stay fixed (its shape is free). The finest level
compares the frames at ``align_height`` pixels high. Held-out frames are not
in any pair: their poses start from the networks' motion from the previous
training frame applied to its refined pose (:func:`endo3d.geometry.carry_corrections`),
then :func:`register_frames` aligns each to its fixed training neighbours.

Measured on a simulated colon (16 frames, ground-truth depth and K, the pose
net's chain as the start): per-camera corrections stalled at 17 % of the
path length (ATE), the chained motion corrections reach 2.6 %, where the
objective equals its value at the true poses. With a stand-in depth prior
(scale-invariant AbsRel 0.147) and the networks' K, the shape grids take the
same colon to AbsRel 0.060, ATE 2.2 -> 1.2 % and focal error 11.6 -> 1.1 %
(300 steps, window 4).
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
from endo3d.pipeline.cameras import chain

GEOMETRIC_WEIGHT = 0.5
"""Weight of the geometric term against the photometric one."""
SHIFT_WEIGHT = 1e-2
"""Weight of the squared per-frame depth shifts (unit-free): a shift is used only where it pays."""
POSE_LR = 3e-3
"""Adam learning rate of the motion corrections (radians, and translation in units of the median depth)."""
FOCAL_LR = 1e-2
"""Adam learning rate of the log focal correction."""
LEVELS = 3
"""Pyramid levels: the steps are split evenly over the comparison height / 4, / 2 and full, coarse first, so
the first steps see motions of several pixels as a fraction of one."""
SHAPE_ROWS = 8
"""Rows of each frame's shape grid; its columns follow the aspect ratio (10 at 160 x 128, 14 at 640 x 360)."""
SHAPE_WEIGHT = 0.03
"""Weight of the mean squared shape factor (log depth): the prior's shape is kept where the views do not
constrain it (a near-static camera)."""
SHAPE_FROM_LEVEL = 1
"""First pyramid level at which the shape grids act: the poses settle on the coarsest level before depth shape
may absorb them (on the analytic test surface, shape from the start left 0.45 mm of a 0.80 mm pose error,
from the second level 0.38 mm; 0.31 mm without shape grids)."""
PAIRS_PER_STEP = 48
"""Pairs drawn at random for each step (all pairs when there are fewer): the cost of a step stays flat in
the clip length."""
FOCAL_PROBE = 0.1
"""Relative focal change at which :func:`focal_profile` probes the objective (-+10 %)."""
FOCAL_PROBE_FACTORS = (1 / (1 + FOCAL_PROBE), 1.0, 1 + FOCAL_PROBE)
"""The focal factors :func:`focal_profile` refits at, one refit each: shorter, the estimate, longer."""
FOCAL_DETERMINED_RISE = 0.02
"""Smallest rise of the refitted objective at both probes for the video to determine the focal length.
Measured on simulated clips (160 x 128, 16 and 32 frames, estimated depth): a colon's forward, turning camera
gave 3.5 to 4.7 %, where the estimate was 1 % off; the laparoscopic tissue's nearly translating camera -0.1 to
0.8 %, where it was 5 to 14 % off, and full refinements at a focal held fixed anywhere in 0.85..1.15 of the
truth ended within 1.2 % of each other, with the true depth given too."""


@dataclass
class Refined:
    """The result of :func:`refine_cameras` for the frames it was given.

    Attributes:
        c2w: float64 ``(T, 4, 4)`` refined poses of the training frames.
        scale, shift_mm: ``(T,)`` and shape: ``(T, 1, rows, cols)`` zero-mean log factors, the depth
            correction of :func:`correct_depth`.
        focal_scale: the factor applied to fx and fy (1 when K was given).
        loss_before, loss_after: the objective at the start and at the end.
    """

    c2w: torch.Tensor
    scale: torch.Tensor
    shift_mm: torch.Tensor
    shape: torch.Tensor
    focal_scale: float
    loss_before: float
    loss_after: float


def shape_grid_size(height: int, width: int) -> tuple[int, int]:
    """Rows and columns of a shape grid for frames of ``height x width`` (:data:`SHAPE_ROWS` rows)."""
    return SHAPE_ROWS, max(2, round(SHAPE_ROWS * width / height))


def scale_focal(K: np.ndarray, factor: float) -> np.ndarray:
    """A copy of ``(3, 3)`` intrinsics ``K`` with ``fx`` and ``fy`` multiplied by ``factor``."""
    out = K.copy()
    out[0, 0] *= factor
    out[1, 1] *= factor
    return out


def correct_depth(depth: torch.Tensor, scale: torch.Tensor, shift_mm: torch.Tensor,
                  shape: torch.Tensor) -> torch.Tensor:
    """``d'(p) = scale exp(S(p)) d(p) + shift_mm`` for ``(T, 1, H, W)`` depth, ``(T,)`` scale and shift, and
    ``(T, 1, rows, cols)`` log shape factors ``S`` interpolated bilinearly (grid nodes on the image corners)."""
    factor = F.interpolate(shape, size=depth.shape[-2:], mode="bilinear", align_corners=True).exp()
    return scale[:, None, None, None] * factor * depth + shift_mm[:, None, None, None]


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


Level = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""One pyramid level: rgb, valid, depth (clamped > 0) and K at its size."""


def image_pyramid(rgb: torch.Tensor, valid: torch.Tensor, depth: torch.Tensor, K: np.ndarray, height: int,
                  levels: int, device: torch.device | str) -> list[Level]:
    """The frames area-downsampled to ``height / 2^l`` pixels high (at most their own), coarsest first."""
    H, W = rgb.shape[-2:]
    out = []
    for level in reversed(range(levels)):
        h = max(8, min(height, H) // 2 ** level)
        w = max(8, round(W * h / H))
        out.append((F.interpolate(rgb.to(device), size=(h, w), mode="area"),
                    F.interpolate(valid.to(device).float(), size=(h, w), mode="area") > 0.999,
                    F.interpolate(depth.to(device), size=(h, w), mode="area").clamp_min(1e-3),
                    torch.from_numpy(resize_intrinsics(K, (H, W), (h, w))).float().to(device)))
    return out


def valid_median(level: Level) -> float:
    """Median depth over the level's valid pixels (over all when none is valid): the translation unit."""
    _, valid, depth, _ = level
    return float(depth[valid].median()) if bool(valid.any()) else float(depth.median())


def motion_unit(median: float, device: torch.device | str) -> torch.Tensor:
    """``(6,)`` scale of an se(3) correction's parameters: radians for the rotation, ``median`` (the translation
    unit, :func:`valid_median`) for the translation."""
    return torch.tensor([1.0, 1.0, 1.0, median, median, median], device=device)


def linear_decay(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The rates of ``optimizer`` falling linearly from their start to 10 % of it over ``steps`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 - 0.9 * k / max(steps, 1))


def centred(shape: torch.Tensor) -> torch.Tensor:
    """``(T, 1, rows, cols)`` shape grids minus each frame's mean: shape only, the scale stays in ``s_k``."""
    return shape - shape.mean(dim=(2, 3), keepdim=True)


def corrected(c2w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``(T, 4, 4)`` poses whose consecutive motions ``M_k = c2w_{k-1}^-1 c2w_k`` carry the corrections
    ``delta_k``: ``c2w'_0 = c2w_0 delta_0``, ``c2w'_k = c2w'_{k-1} M_k delta_k``.

    A correction of one motion moves every later camera with it, so a drift in the chain is undone by one
    step instead of diffusing through the window pairs of per-camera corrections."""
    motions = invert_pose(c2w[:-1]) @ c2w[1:]
    return c2w[0] @ delta[0] @ chain(motions @ delta[1:])


def refine_cameras(rgb: torch.Tensor, valid: torch.Tensor, depth: torch.Tensor, K: np.ndarray, c2w: torch.Tensor,
                   *, steps: int, window: int, height: int, learn_focal: bool, levels: int = LEVELS,
                   on_step: Callable[[int], None] | None = None, seed: int = 0,
                   device: torch.device | str = "cpu") -> Refined:
    """Fit per-frame depth scale, shape and shift, pose corrections and (optionally) the focal length; module
    docstring.

    Args:
        rgb: ``(T, 3, H, W)`` training frames; valid: bool ``(T, 1, H, W)``; depth: ``(T, 1, H, W)`` mm;
        K: ``(3, 3)`` at ``(H, W)``; c2w: ``(T, 4, 4)``; steps: Adam steps; window: neighbours per side;
        height: comparison height in pixels; learn_focal: fit the focal correction; seed: of the pair draws;
        device: where the fit runs (inputs and results stay on the CPU).
    """
    pyramid = image_pyramid(rgb, valid, depth, K, height, levels, device)
    median = valid_median(pyramid[-1])
    count = rgb.shape[0]
    log_scale = torch.zeros(count, device=device, requires_grad=True)
    shift = torch.zeros(count, device=device, requires_grad=True)
    shape = torch.zeros(count, 1, *shape_grid_size(*rgb.shape[-2:]), device=device, requires_grad=True)
    xi = torch.zeros(count, 6, device=device, requires_grad=True)
    log_focal = torch.zeros((), device=device, requires_grad=learn_focal)
    free = torch.ones(count, 1, device=device)
    free[0] = 0  # the gauge frame
    params = [{"params": [log_scale, shift, shape], "lr": 1e-2}, {"params": [xi], "lr": POSE_LR}]
    if learn_focal:
        params.append({"params": [log_focal], "lr": FOCAL_LR})
    optimizer = torch.optim.Adam(params)
    schedule = linear_decay(optimizer, steps)
    unit = motion_unit(median, device)
    pairs = frame_pairs(count, window).to(device)
    base = c2w.float().to(device)

    def depth_correction() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scale, shift (mm) and shape of :func:`correct_depth`, the gauge frame's scale and shift fixed."""
        return (log_scale * free[:, 0]).exp(), shift * free[:, 0] * median, centred(shape)

    def objective(use: torch.Tensor, level: int = levels - 1) -> torch.Tensor:
        small_rgb, small_valid, small_depth, K0 = pyramid[level]
        scale, shift_mm, S = depth_correction()
        S = S * float(level >= SHAPE_FROM_LEVEL)
        d = correct_depth(small_depth, scale, shift_mm, S).clamp_min(1e-3)
        poses = corrected(base, se3_exp(xi * unit * free))
        Kf = K0.clone()
        Kf[0, 0] = K0[0, 0] * log_focal.exp()
        Kf[1, 1] = K0[1, 1] * log_focal.exp()
        photometric, geometric = pair_losses(small_rgb, small_valid, d, Kf, poses, use)
        return (photometric + GEOMETRIC_WEIGHT * geometric + SHIFT_WEIGHT * (shift ** 2).mean()
                + SHAPE_WEIGHT * (S ** 2).mean())

    if len(pairs) == 0:
        steps = 0
    draw = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        before = float(objective(pairs)) if len(pairs) else 0.0
    for step in range(steps):
        loss = objective(pairs[torch.randperm(len(pairs), generator=draw)[:PAIRS_PER_STEP].to(device)],
                         level=step * levels // steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_step is not None:
            on_step(step + 1)
    with torch.no_grad():
        after = float(objective(pairs)) if len(pairs) else 0.0
        scale, shift_mm, grids = (v.cpu() for v in depth_correction())
        poses = corrected(c2w.double(), se3_exp((xi * unit * free).double().cpu()))
    return Refined(c2w=poses, scale=scale, shift_mm=shift_mm, shape=grids,
                   focal_scale=float(log_focal.detach().exp()), loss_before=before, loss_after=after)


@dataclass
class FocalProfile:
    """How sharply the video determines the focal length (:func:`focal_profile`).

    Attributes:
        rise: relative rise of the refitted objective at ``f / (1 + p)`` and at ``f (1 + p)`` over its value
            at the estimate ``f`` (``p``: :data:`FOCAL_PROBE`); negative where the probe fits better.
    """

    rise: tuple[float, float]

    @property
    def determined(self) -> bool:
        """Both probes fit worse by at least :data:`FOCAL_DETERMINED_RISE`."""
        return min(self.rise) >= FOCAL_DETERMINED_RISE


def focal_profile(rgb: torch.Tensor, valid: torch.Tensor, depth: torch.Tensor, K: np.ndarray, refined: Refined,
                  *, steps: int, window: int, height: int, on_step: Callable[[int], None] | None = None,
                  seed: int = 0, device: torch.device | str = "cpu") -> FocalProfile:
    """The refinement's objective along the focal length: at the estimate, and :data:`FOCAL_PROBE` either side.

    From :func:`refine_cameras`' result (its corrected depth, poses and focal ``f``), the focal is held at
    ``f / (1 + p)``, ``f`` and ``f (1 + p)`` in turn while every other unknown is refitted for ``steps`` steps
    (the two finest pyramid levels, the same pair draws); the rises of the final objectives over the middle
    one say whether the images pin ``f`` down. A purely translating camera cannot: with the depth ``Z`` known,
    ``u' - c_x = (Z (u - c_x) + f t_x) / (Z + t_z)`` and a focal change is undone exactly by scaling the lateral
    translation. Rotation and depth range make the rises grow.

    Args:
        rgb, valid, depth, K, refined: the inputs of :func:`refine_cameras` (training frames, uncorrected
            depth, ``K`` before the focal correction) and its result; steps: refit steps per probe;
        window, height, seed, device: as for :func:`refine_cameras`; on_step: called with the steps done
            over all refits.
    """
    depth = correct_depth(depth, refined.scale, refined.shift_mm, refined.shape).clamp_min(1e-3)
    losses = []
    for k, factor in enumerate(FOCAL_PROBE_FACTORS):
        done = k * steps
        fit = refine_cameras(rgb, valid, depth, scale_focal(K, refined.focal_scale * factor), refined.c2w,
                             steps=steps, window=window, height=height, learn_focal=False, levels=2, seed=seed,
                             device=device,
                             on_step=None if on_step is None else lambda s, done=done: on_step(done + s))
        losses.append(fit.loss_after)
    middle = max(losses[1], 1e-12)
    return FocalProfile(rise=(losses[0] / middle - 1, losses[2] / middle - 1))


def register_frames(rgb: torch.Tensor, valid: torch.Tensor, depth: torch.Tensor, K: np.ndarray, c2w: torch.Tensor,
                    frames: list[int], anchors: list[int], *, steps: int, height: int, levels: int = LEVELS,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Register each of ``frames`` to its nearest ``anchors`` before and after it, which stay fixed.

    Only frame ``i``'s pose moves, ``c2w'_i = c2w_i exp(xi_i)``: the same photometric + geometric objective as
    :func:`refine_cameras` over the pairs ``(i, a)`` and ``(a, i)`` of each neighbour ``a``, with the given
    (already consistent) depth of every frame and ``K``, coarse to fine. Nothing is learnt from frame ``i``
    but its camera, so held-out frames may be registered this way.

    Args:
        rgb, valid, depth: ``(N, ...)`` all frames at the working size; K: ``(3, 3)``; c2w: ``(N, 4, 4)``
        starting poses; frames: positions to register; anchors: fixed positions (ascending); steps: Adam
        steps; height: finest comparison height.

    Returns:
        float64 ``(N, 4, 4)``: ``c2w`` with the registered frames replaced.
    """
    out = c2w.double().clone()
    if not frames or not anchors or steps <= 0:
        return out
    groups = []
    for i in frames:
        before = [a for a in anchors if a < i][-1:]
        after = [a for a in anchors if a > i][:1]
        groups.append([i] + before + after)
    order = [k for g in groups for k in g]
    first = [sum(len(g) for g in groups[:n]) for n in range(len(groups))]
    pairs = torch.tensor([(first[n], first[n] + m) for n, g in enumerate(groups) for m in range(1, len(g))]
                         + [(first[n] + m, first[n]) for n, g in enumerate(groups) for m in range(1, len(g))],
                         dtype=torch.long, device=device)
    pyramid = image_pyramid(rgb[order], valid[order], depth[order], K, height, levels, device)
    median = valid_median(pyramid[-1])
    unit = motion_unit(median, device)
    moving = torch.zeros(len(order), 1, device=device)
    moving[first] = 1
    xi = torch.zeros(len(order), 6, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([xi], lr=POSE_LR)
    schedule = linear_decay(optimizer, steps)
    base = c2w[order].float().to(device)
    for step in range(steps):
        small_rgb, small_valid, small_depth, Kl = pyramid[step * levels // steps]
        poses = base @ se3_exp(xi * unit * moving)
        photometric, geometric = pair_losses(small_rgb, small_valid, small_depth, Kl, poses, pairs)
        optimizer.zero_grad(set_to_none=True)
        (photometric + GEOMETRIC_WEIGHT * geometric).backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        delta = se3_exp((xi * unit).double().cpu())
    for n, i in enumerate(frames):
        out[i] = out[i] @ delta[first[n]]
    return out
