"""View synthesis and the depth losses (pure functions, no state).

Self-supervised (Monodepth2 / EndoDAC): a target frame's depth and the
motion to a neighbouring source frame warp the source into the target view
(:func:`warp_source`); the photometric error
``w (1 - SSIM) / 2 + (1 - w) |I - I'|`` (w = 0.85, :func:`photometric_error`)
is minimised per pixel over the sources, static pixels are auto-masked,
and an edge-aware smoothness of mean-normalised disparity regularises
(:func:`view_synthesis_loss`). Supervised: scale-and-shift-invariant
disparity loss (MiDaS), scale-invariant log loss and L1 on log depth.

Shapes: images ``(B, 3, H, W)`` in [0, 1], depth ``(B, 1, H, W)`` mm,
``K`` ``(B, 3, 3)`` pixels (OpenCV centres), ``T_s_from_t`` ``(B, 4, 4)``
mapping target-camera points to source-camera points (mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from endo3d.core import check_shape

__all__ = [
    "LossTerms",
    "backproject",
    "l1_log_loss",
    "photometric_error",
    "silog_loss",
    "smoothness_loss",
    "specular_mask",
    "ssi_loss",
    "ssim_distance",
    "view_synthesis_loss",
    "warp_source",
]

_UNSEEN = 1e3
"""Photometric error given to pixels whose warp is invalid (loses every per-pixel minimum)."""


def backproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points ``(B, 3, H, W)`` in mm of every pixel: ``depth * K^-1 [u, v, 1]``."""
    sizes = check_shape(depth, "B 1 H W", "depth")
    check_shape(K, f"{sizes['B']} 3 3", "K")
    h, w = sizes["H"], sizes["W"]
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype, device=depth.device),
                          torch.arange(w, dtype=depth.dtype, device=depth.device), indexing="ij")
    fx, fy = K[:, 0, 0, None, None], K[:, 1, 1, None, None]
    cx, cy = K[:, 0, 2, None, None], K[:, 1, 2, None, None]
    x = (u[None] - cx) / fx
    y = (v[None] - cy) / fy
    return torch.stack([x, y, torch.ones_like(x)], dim=1) * depth


def warp_source(
    source: torch.Tensor, depth_t: torch.Tensor, K: torch.Tensor, T_s_from_t: torch.Tensor,
    K_source: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source image seen from the target camera.

    Each target pixel is back-projected with its depth, moved into the
    source camera and projected with ``K_source`` (default ``K``); the
    source is sampled there bilinearly (``grid_sample``, ``align_corners=True``,
    so integer coordinates are pixel centres).

    Returns:
        ``warped`` ``(B, C, H, W)`` and ``valid`` ``(B, 1, H, W)`` bool: in
        front of the source camera and inside its image.
    """
    sizes = check_shape(source, "B C H W", "source")
    check_shape(T_s_from_t, f"{sizes['B']} 4 4", "T_s_from_t")
    Ks = K if K_source is None else K_source
    points = backproject(depth_t, K).flatten(2)  # (B, 3, HW)
    p = T_s_from_t[:, :3, :3] @ points + T_s_from_t[:, :3, 3:]
    z = p[:, 2:3]
    in_front = z > 1e-3
    z = torch.where(in_front, z, torch.ones_like(z))
    uv = (Ks @ (p / z))[:, :2]  # (B, 2, HW)
    h, w = sizes["H"], sizes["W"]
    u, v = uv[:, 0], uv[:, 1]
    inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    grid = torch.stack([2 * u / max(w - 1, 1) - 1, 2 * v / max(h - 1, 1) - 1], dim=-1).view(sizes["B"], h, w, 2)
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
    valid = (in_front[:, 0] & inside).view(sizes["B"], 1, h, w)
    return warped, valid


def ssim_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(1 - SSIM) / 2`` per pixel and channel, 3x3 window, reflection padding (Monodepth2), in [0, 1]."""
    c1, c2 = 0.01**2, 0.03**2
    x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x**2
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y**2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    n = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    d = (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
    return ((1 - n / d) / 2).clamp(0, 1)


def photometric_error(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.85) -> torch.Tensor:
    """``w (1 - SSIM) / 2 + (1 - w) |pred - target|``, averaged over channels: ``(B, 1, H, W)``."""
    l1 = (pred - target).abs().mean(1, keepdim=True)
    if ssim_weight == 0:
        return l1
    return ssim_weight * ssim_distance(pred, target).mean(1, keepdim=True) + (1 - ssim_weight) * l1


def smoothness_loss(disp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware smoothness of the mean-normalised disparity (Monodepth2), a scalar.

    ``disp`` ``(B, 1, h, w)``; ``image`` is resized to ``(h, w)`` if needed.
    """
    if image.shape[-2:] != disp.shape[-2:]:
        image = F.interpolate(image, size=disp.shape[-2:], mode="bilinear", align_corners=False)
    d = disp / (disp.mean(dim=(2, 3), keepdim=True) + 1e-7)
    gx = (d[..., :, :-1] - d[..., :, 1:]).abs()
    gy = (d[..., :-1, :] - d[..., 1:, :]).abs()
    ix = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    iy = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (gx * torch.exp(-ix)).mean() + (gy * torch.exp(-iy)).mean()


def specular_mask(image: torch.Tensor, threshold: float) -> torch.Tensor:
    """bool ``(B, 1, H, W)``: True where the gray level (channel mean) is at most ``threshold``."""
    return image.mean(1, keepdim=True) <= threshold


@dataclass
class LossTerms:
    """The parts of the self-supervised loss at one step (scalars, for logging)."""

    total: torch.Tensor
    photometric: torch.Tensor
    smoothness: torch.Tensor
    used: torch.Tensor
    """Share of target pixels that counted (valid, not auto-masked)."""


def view_synthesis_loss(
    depths: list[torch.Tensor],
    target: torch.Tensor,
    sources: list[torch.Tensor],
    poses: list[torch.Tensor],
    Ks: list[torch.Tensor],
    *,
    brightness: list[torch.Tensor] | None = None,
    target_valid: torch.Tensor | None = None,
    source_valid: list[torch.Tensor] | None = None,
    ssim_weight: float = 0.85,
    smoothness: float = 1e-3,
    automask: bool = True,
    noise: torch.Tensor | None = None,
) -> LossTerms:
    """Monodepth2's multi-scale self-supervised loss with EndoDAC's brightness correction.

    For every scale ``k`` (depth upsampled to full resolution) and every
    source ``s``: warp, correct brightness (``a_s warped + b_s``), photometric
    error; invalid warps (outside the source image, behind it, or onto an
    invalid / specular source pixel) get a large error. The per-pixel minimum
    over sources is averaged over pixels that are valid in the target and,
    with ``automask``, where some warped source beats every unwarped one.
    Smoothness of the disparity ``1 / depth`` at scale ``k`` is weighted
    ``smoothness / 2**k`` (mean-normalised, so its unit does not matter).

    Args:
        depths: per scale ``(B, 1, H, W)`` depths in mm.
        target: ``(B, 3, H, W)``.
        sources: per source ``(B, 3, H, W)``.
        poses: per source ``T_s_from_t`` ``(B, 4, 4)``.
        Ks: per source ``(B, 3, 3)`` intrinsics (learned per pair or known).
        brightness: per source ``(B, 2)`` ``(a, b)``; None = no correction.
        target_valid: ``(B, 1, H, W)`` bool, pixels to use (FOV, instruments, specular).
        source_valid: per source ``(B, 1, H, W)`` bool (sampled bilinearly at the warp and kept where
            it is > 0.999: a pixel next to an invalid one counts as invalid).
        noise: ``(B, S, H, W)`` tie-breaking noise added to the identity errors
            (Monodepth2 adds ``1e-5 * randn``); None = none.
    """
    identity = [photometric_error(s, target, ssim_weight) for s in sources] if automask else []
    photometric = target.new_zeros(())
    smooth = target.new_zeros(())
    used = target.new_zeros(())
    for k, depth in enumerate(depths):
        errors = []
        for i, (source, T, K) in enumerate(zip(sources, poses, Ks)):
            stack = source if source_valid is None else torch.cat([source, source_valid[i].to(source.dtype)], 1)
            warped, valid = warp_source(stack, depth, K, T)
            if source_valid is not None:
                warped, src_ok = warped[:, :3], warped[:, 3:] > 0.999
                valid = valid & src_ok
            if brightness is not None:
                a, b = brightness[i][:, 0, None, None, None], brightness[i][:, 1, None, None, None]
                warped = a * warped + b
            err = photometric_error(warped, target, ssim_weight)
            errors.append(torch.where(valid, err, torch.full_like(err, _UNSEEN)))
        reprojection = torch.cat(errors, dim=1)
        best, _ = reprojection.min(dim=1, keepdim=True)
        keep = best < _UNSEEN
        if target_valid is not None:
            keep = keep & target_valid
        if automask:
            ident = torch.cat(identity, dim=1)
            if noise is not None:
                ident = ident + noise
            keep = keep & (best < ident.min(dim=1, keepdim=True).values)
        weight = keep.to(best.dtype)
        photometric = photometric + (best * weight).sum() / weight.sum().clamp_min(1.0)
        smooth = smooth + smoothness_loss(1.0 / depth, target) / (2**k)
        used = used + weight.mean()
    n = len(depths)
    photometric, smooth, used = photometric / n, smooth / n, used / n
    return LossTerms(photometric + smoothness * smooth, photometric.detach(), smooth.detach(), used.detach())


# ---------------------------------------------------------------------------
# Supervised losses: pred and gt (B, 1, H, W), valid bool (B, 1, H, W).


def _normalise(d: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per image: ``(d - median) / mean |d - median|`` over valid pixels (MiDaS)."""
    out = torch.zeros_like(d)
    for b in range(d.shape[0]):
        x = d[b][valid[b]]
        if x.numel() < 2:
            continue
        med = x.median()
        s = (x - med).abs().mean().clamp_min(1e-8)
        out[b] = (d[b] - med) / s
    return out


def ssi_loss(pred_disp: torch.Tensor, gt_depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant L1 on disparity (MiDaS): both sides median/MAD-normalised per image."""
    gt_disp = torch.where(valid, 1.0 / gt_depth.clamp_min(1e-6), torch.zeros_like(gt_depth))
    diff = (_normalise(pred_disp, valid) - _normalise(gt_disp, valid)).abs()
    return (diff * valid).sum() / valid.sum().clamp_min(1)


def silog_loss(pred_depth: torch.Tensor, gt_depth: torch.Tensor, valid: torch.Tensor,
               variance_focus: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss ``sqrt(mean g^2 - l mean(g)^2)``, ``g = log pred - log gt`` (l = 0.85)."""
    g = (torch.log(pred_depth.clamp_min(1e-6)) - torch.log(gt_depth.clamp_min(1e-6)))[valid]
    if g.numel() == 0:
        return pred_depth.sum() * 0
    return torch.sqrt((g**2).mean() - variance_focus * g.mean() ** 2 + 1e-8)


def l1_log_loss(pred_depth: torch.Tensor, gt_depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Metric L1 on log depth."""
    g = (torch.log(pred_depth.clamp_min(1e-6)) - torch.log(gt_depth.clamp_min(1e-6)))[valid]
    return g.abs().mean() if g.numel() else pred_depth.sum() * 0
