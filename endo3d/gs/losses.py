"""Training losses of the reconstruction: masked photometric, depth, smoothness.

Every term averages over the pixels of a boolean mask (tissue that is
observed), so instrument pixels and the field-of-view border neither help
nor hurt. The photometric term and its SSIM live in :mod:`endo3d.kernels.ssim`
(PyTorch reference and fused CUDA kernel) and are re-exported here.
"""

from __future__ import annotations

import torch

from endo3d.kernels.ssim import masked_mean, photometric_loss, ssim_map

__all__ = ["inverse_depth_l1", "masked_mean", "pearson_depth_loss", "photometric_loss", "ssim_map",
           "total_variation"]


def inverse_depth_l1(depth: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 between inverse depths, in units of the target's median inverse depth.

    ``mean |m / d - m / d*|`` with ``m = median(d*)`` over valid pixels: the
    inverse-depth L1 of EndoGaussian / Deform3DGS made unit-free, so its weight
    does not depend on millimetres vs metres. ``mask`` must exclude ``d* = 0``.
    """
    valid = mask & (target > 0) & (depth > 1e-6)
    if not bool(valid.any()):
        return depth.sum() * 0
    m = target[valid].median()
    return masked_mean((m / depth.clamp_min(1e-6) - m / target.clamp_min(1e-6)).abs(), valid)


def pearson_depth_loss(depth: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - corr(1/d, target)`` over valid pixels: for relative (scale/shift-free) inverse depth targets.

    ``target`` here is any quantity affine in inverse depth (e.g. a monocular
    model's relative disparity); EndoGaussian uses this form with weight 1e-3.
    """
    valid = mask & (target > 0) & (depth > 1e-6)
    if int(valid.sum()) < 2:
        return depth.sum() * 0
    x = 1 / depth[valid].clamp_min(1e-6)
    y = target[valid]
    x, y = x - x.mean(), y - y.mean()
    return 1 - (x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-12)


def total_variation(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontally and vertically adjacent masked pixels."""
    m = mask.to(x.dtype)
    mx, my = m[..., :, 1:] * m[..., :, :-1], m[..., 1:, :] * m[..., :-1, :]
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs() * mx
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs() * my
    return (dx.sum() + dy.sum()) / (mx.sum() + my.sum()).clamp_min(1)
