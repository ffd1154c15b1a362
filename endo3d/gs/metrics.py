"""Image and depth metrics of held-out frames, the anchors' two protocols side by side.

- **masked full image** (Deform3DGS's PSNR; EndoGaussian's and Deform3DGS's
  SSIM and LPIPS): render and target are both multiplied by the tissue mask
  and compared over *all* pixels, so the instrument pixels count as
  perfectly predicted; it is inflated by the masked area.
- **tissue only** (EndoGaussian's PSNR, whose ``psnr(render, gt, mask)``
  divides the masked squared error by the mask's pixel count): the error is
  averaged over tissue pixels alone.

PSNR is ``10 log10(1 / MSE)`` for images in [0, 1], at most :data:`PSNR_CAP_DB`.
SSIM uses an 11x11 Gaussian window (sigma 1.5) with zero-padded borders, as
3DGS's ``ssim``, which both anchors evaluate with. LPIPS (AlexNet, as
Deform3DGS; EndoGaussian uses VGG) needs weights that cannot be downloaded
here; it is computed only when the ``lpips`` package and its AlexNet backbone
are present locally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from endo3d.gs.losses import ssim_map

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
PSNR_CAP_DB = 100.0
"""PSNR of identical images (MSE 0), which would otherwise be infinite: no image of 8-bit renders that differ
comes near it (one 8-bit step in one pixel of 640 x 512 x 3 is 113 dB), and JSON has no infinity."""


@dataclass
class ImageMetrics:
    """Metrics of one frame (None where they cannot be computed)."""

    psnr: float | None
    """Masked full image (Deform3DGS's protocol); None for a frame without tissue pixels."""
    psnr_tissue: float | None
    """Tissue pixels only (EndoGaussian's protocol)."""
    ssim: float | None
    """Masked full image, zero-padded borders (both anchors' protocol); None without tissue pixels."""
    lpips: float | None
    depth_rmse_mm: float | None


def psnr(mse: float) -> float:
    """PSNR in dB of images in [0, 1]: ``-10 log10(mse)``, at most :data:`PSNR_CAP_DB`."""
    return min(PSNR_CAP_DB, math.inf if mse <= 0 else -10 * math.log10(mse))


def format_metric(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or ``n/a`` where it could not be computed (None)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


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
                       ssim=float(ssim_map(a, b, border="zeros").mean()) if tissue else None,
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
