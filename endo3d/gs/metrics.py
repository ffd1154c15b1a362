"""Image and depth metrics of held-out frames, two protocols side by side.

- **masked full image** (EndoGaussian / Deform3DGS): render and target are
  both multiplied by the tissue mask and compared over *all* pixels, so the
  instrument pixels count as perfectly predicted. This is the number the
  anchors report; it is inflated by the masked area.
- **tissue only**: the error is averaged over tissue pixels alone.

PSNR is ``10 log10(1 / MSE)`` for images in [0, 1]. SSIM uses an 11x11
Gaussian window (sigma 1.5). LPIPS (AlexNet) needs weights that cannot be
downloaded here; it is computed only when the ``lpips`` package and its
AlexNet backbone are present locally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from endo3d.gs.losses import ssim_map

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"


@dataclass
class ImageMetrics:
    """Metrics of one frame (None where they cannot be computed)."""

    psnr: float | None
    """Masked full image (anchor protocol); None for a frame without tissue pixels."""
    psnr_tissue: float | None
    """Tissue pixels only."""
    ssim: float
    """Masked full image."""
    lpips: float | None
    depth_rmse_mm: float | None


def psnr(mse: float) -> float:
    """PSNR in dB of images in [0, 1] (inf for identical images)."""
    return math.inf if mse <= 0 else -10 * math.log10(mse)


def image_metrics(render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *,
                  depth: torch.Tensor | None = None, target_depth: torch.Tensor | None = None,
                  lpips: Callable[[torch.Tensor, torch.Tensor], float] | None = None) -> ImageMetrics:
    """Metrics of one rendered frame.

    Args:
        render, target: ``(3, H, W)`` in [0, 1].
        mask: bool ``(1, H, W)``, True on tissue.
        depth, target_depth: ``(1, H, W)`` z-depth in mm; the RMSE is over
            tissue pixels where the target is > 0.
        lpips: a callable returning LPIPS of two masked ``(3, H, W)`` images.
    """
    m = mask.to(render.dtype)
    diff2 = ((render - target) * m) ** 2
    mse_full = float(diff2.mean())
    mse_tissue = float(diff2.sum() / (3 * m.sum()).clamp_min(1))
    a, b = render * m, target * m
    tissue = bool(mask.any())
    out = ImageMetrics(psnr=psnr(mse_full) if tissue else None, psnr_tissue=psnr(mse_tissue) if tissue else None,
                       ssim=float(ssim_map(a, b).mean()),
                       lpips=lpips(a, b) if lpips is not None else None, depth_rmse_mm=None)
    if depth is not None and target_depth is not None:
        valid = mask & (target_depth > 0)
        if bool(valid.any()):
            out.depth_rmse_mm = float(((depth - target_depth)[valid] ** 2).mean().sqrt())
    return out


def load_lpips(device: torch.device) -> tuple[Callable[[torch.Tensor, torch.Tensor], float] | None, str]:
    """LPIPS (AlexNet) if its weights are on this machine, else ``(None, why)``.

    Nothing is downloaded: the ``lpips`` package must be installed and
    torchvision's AlexNet checkpoint must already be in the torch hub cache.
    """
    try:
        import lpips as lpips_package
    except ImportError:
        return None, "LPIPS not computed: the lpips package is not installed"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT
    if not cached.is_file():
        return None, f"LPIPS not computed: AlexNet weights not found at {cached} (nothing is downloaded)"
    net = lpips_package.LPIPS(net="alex", verbose=False).to(device).eval()

    def score(a: torch.Tensor, b: torch.Tensor) -> float:
        with torch.no_grad():
            return float(net(a[None] * 2 - 1, b[None] * 2 - 1).mean())

    return score, "LPIPS (AlexNet) on masked images"


def mean_metrics(frames: list[ImageMetrics]) -> dict[str, float | None]:
    """Average of per-frame metrics (PSNR averaged in dB, as the anchors do)."""

    def avg(name: str) -> float | None:
        values = [getattr(f, name) for f in frames if getattr(f, name) is not None]
        return sum(values) / len(values) if values else None

    return {name: avg(name) for name in ("psnr", "psnr_tissue", "ssim", "lpips", "depth_rmse_mm")}
