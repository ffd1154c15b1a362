"""Masked photometric loss (L1 + SSIM): the PyTorch reference and the fused CUDA kernel.

:func:`photometric_loss` runs ``cuda_ext/ssim.cu`` (one tiled pass forward,
one backward) on float32 CUDA tensors when :func:`~endo3d.kernels.build.cuda_ops`
allows it, and :func:`photometric_loss_reference` otherwise. The reference
maths (:func:`masked_mean`, :func:`ssim_map`) lives here so that
``endo3d.gs.losses`` and ``endo3d.gs.metrics`` import it from one place.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from endo3d.kernels.build import cuda_ops

__all__ = ["masked_mean", "photometric_loss", "photometric_loss_reference", "ssim_map"]

WINDOW = 11
"""Side of SSIM's Gaussian window, px."""
SIGMA = 1.5
"""Standard deviation of SSIM's Gaussian window, px."""


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (``(C, H, W)``) over the pixels where ``mask`` (``(1, H, W)``) is True, 0 if none."""
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).sum() / m.sum().clamp_min(1)


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """The normalised 1-D Gaussian of ``size`` taps, ``sigma`` px, in ``like``'s dtype and device."""
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    w = torch.exp(-x * x / (2 * sigma * sigma))
    return w / w.sum()


def _blur(x: torch.Tensor, w: torch.Tensor, border: Literal["reflect", "zeros"] = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of ``(N, H, W)`` maps, borders ``"reflect"``-ed or padded with ``"zeros"``.

    Two 1-D passes as depthwise (grouped) convolutions: on a CPU this is ~5x
    faster, forward and backward, than treating the maps as a batch of
    single-channel images.
    """
    n, r = x.shape[0], w.numel() // 2
    x = F.pad(x[None], (r, r, r, r), mode="reflect" if border == "reflect" else "constant")
    x = F.conv2d(x, w.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)
    return F.conv2d(x, w.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)[0]


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = WINDOW, sigma: float = SIGMA,
             border: Literal["reflect", "zeros"] = "reflect") -> torch.Tensor:
    """Per-pixel SSIM of two ``(C, H, W)`` images in [0, 1].

    ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))`` with
    local statistics under a ``window`` x ``window`` Gaussian (``sigma`` px), ``C1 = 0.01^2``,
    ``C2 = 0.03^2`` (Wang et al. 2004). The loss reflects the borders (and the CUDA kernel with
    it); ``border="zeros"`` pads with zeros, as 3DGS's ``ssim`` and hence EndoGaussian's and
    Deform3DGS's evaluation do, which :mod:`endo3d.gs.metrics` uses to report comparable numbers.
    The blur is separable, which is what makes it cheap enough for every training step on a CPU.
    """
    w = _gaussian_window(window, sigma, a)
    c = a.shape[0]
    stats = _blur(torch.cat([a, b, a * a, b * b, a * b]), w, border)
    mu_a, mu_b, aa, bb, ab = stats.split(c)
    var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def photometric_loss_reference(render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               ssim_weight: float) -> torch.Tensor:
    """``(1 - w) L1 + w (1 - SSIM)`` over the masked pixels (3DGS's loss, masked), in PyTorch.

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


class _FusedPhotometricLoss(torch.autograd.Function):
    """``ssim_l1_forward`` / ``ssim_l1_backward`` of ``cuda_ext/ssim.cu``; gradient to ``render`` only."""

    @staticmethod
    def forward(ctx: Any, render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, ssim_weight: float,
                ops: Any, with_grad: bool) -> torch.Tensor:
        loss, inv_count, dmaps = ops.ssim_l1_forward(render, target, mask, ssim_weight, with_grad)
        ctx.save_for_backward(render, target, mask, inv_count, dmaps)
        ctx.ssim_weight, ctx.ops = ssim_weight, ops
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        render, target, mask, inv_count, dmaps = ctx.saved_tensors
        grad = ctx.ops.ssim_l1_backward(grad_loss, render, target, mask, inv_count, dmaps, ctx.ssim_weight)
        return grad, None, None, None, None, None


def photometric_loss(render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     ssim_weight: float) -> torch.Tensor:
    """``(1 - w) masked_mean(|render - target|) + w masked_mean(1 - SSIM(where(mask, render, target), target))``.

    ``render`` and ``target`` are ``(C, H, W)`` images in [0, 1], ``mask`` a
    ``(1, H, W)`` bool (tissue that is observed), ``w = ssim_weight``; a scalar,
    0 for an empty mask. With ``w > 0``, H and W must be at least 6 (SSIM's
    reflected 5 px border). Runs the fused CUDA kernel for float32 CUDA images
    (the gradient then flows to ``render`` only; a ``target`` that requires
    grad takes the reference), else :func:`photometric_loss_reference`.
    """
    ops = cuda_ops(render, target, mask)
    # Images too small for SSIM's reflected border take the reference, whose F.pad raises the error: the
    # kernel's own check would throw from CUDA host code, which crashed torch 2.11's process on an H100.
    reflectable = ssim_weight == 0 or render.numel() == 0 or min(render.shape[-2:]) > 5
    fused = (ops is not None and render.dtype == torch.float32 and target.dtype == torch.float32
             and not target.requires_grad and reflectable)
    if not fused:
        return photometric_loss_reference(render, target, mask, ssim_weight)
    with_grad = torch.is_grad_enabled() and render.requires_grad  # else skip the derivative maps
    return _FusedPhotometricLoss.apply(render.contiguous(), target.contiguous(), mask.contiguous(),
                                       float(ssim_weight), ops, with_grad)
