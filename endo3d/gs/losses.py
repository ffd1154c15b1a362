"""Training losses of the reconstruction: masked photometric, depth, smoothness.

Every term averages over the pixels of a boolean mask (tissue that is
observed), so instrument pixels and the field-of-view border neither help
nor hurt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (``(C, H, W)``) over the pixels where ``mask`` (``(1, H, W)``) is True, 0 if none."""
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).sum() / m.sum().clamp_min(1)


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    w = torch.exp(-x * x / (2 * sigma * sigma))
    return w / w.sum()


def _blur(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, H, W)`` maps with reflected borders.

    Two 1-D passes as depthwise (grouped) convolutions: on a CPU this is ~5x
    faster, forward and backward, than treating the maps as a batch of
    single-channel images.
    """
    n, r = x.shape[0], w.numel() // 2
    x = F.pad(x[None], (r, r, r, r), mode="reflect")
    x = F.conv2d(x, w.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)
    return F.conv2d(x, w.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)[0]


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of two ``(C, H, W)`` images in [0, 1].

    ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))`` with
    local statistics under a ``window`` x ``window`` Gaussian (``sigma`` px), ``C1 = 0.01^2``,
    ``C2 = 0.03^2`` (Wang et al. 2004), borders reflected. The blur is separable, which is
    what makes it cheap enough for every training step on a CPU.
    """
    w = _gaussian_window(window, sigma, a)
    c = a.shape[0]
    stats = _blur(torch.cat([a, b, a * a, b * b, a * b]), w)
    mu_a, mu_b, aa, bb, ab = stats.split(c)
    var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def photometric_loss(render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     ssim_weight: float) -> torch.Tensor:
    """``(1 - w) L1 + w (1 - SSIM)`` over the masked pixels (3DGS's loss, masked).

    SSIM needs a neighbourhood: the unmasked pixels of the render are replaced
    by the target's there so the window terms near the mask border compare
    only what the mask keeps.
    """
    l1 = masked_mean((render - target).abs(), mask)
    if ssim_weight == 0:
        return l1
    filled = torch.where(mask, render, target)
    dssim = masked_mean(1 - ssim_map(filled, target), mask)
    return (1 - ssim_weight) * l1 + ssim_weight * dssim


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
