"""The adaptable depth network: Depth Anything + adapters + multi-scale disparity heads.

:class:`DepthNet` runs the (frozen or adapted) Depth Anything encoder and
the DPT fusion stages (:meth:`endo3d.depth.dpt.DPTHead.fuse`), and reads a
sigmoid disparity from each of the four fused maps (finest first,
EndoDAC / Monodepth2 style). Each disparity is upsampled bilinearly to the
input size (Monodepth2's "full-resolution" multi-scale), and
:func:`disparity_to_depth` maps it to millimetres.

Input: RGB ``(B, 3, H, W)`` in [0, 1] with ``H``, ``W`` multiples of 14; the
ImageNet normalisation happens inside.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from endo3d.core import check_shape
from endo3d.depth.adapters import LoRAConfig, NeckConfig, inject_adapters, inject_necks
from endo3d.depth.config import DepthNetConfig
from endo3d.depth.model import IMAGENET_MEAN, IMAGENET_STD, DepthAnything, DepthAnythingConfig

__all__ = ["DepthNet", "DisparityHead", "build_backbone", "disparity_to_depth", "depth_to_disparity"]


def disparity_to_depth(disp: torch.Tensor, min_depth_mm: float, max_depth_mm: float) -> torch.Tensor:
    """Sigmoid disparity in [0, 1] -> depth in mm: ``1 / (1/max + (1/min - 1/max) disp)``."""
    lo, hi = 1.0 / max_depth_mm, 1.0 / min_depth_mm
    return 1.0 / (lo + (hi - lo) * disp)


def depth_to_disparity(depth: torch.Tensor, min_depth_mm: float, max_depth_mm: float) -> torch.Tensor:
    """Inverse of :func:`disparity_to_depth` (depth clamped to the range first)."""
    lo, hi = 1.0 / max_depth_mm, 1.0 / min_depth_mm
    return (1.0 / depth.clamp(min_depth_mm, max_depth_mm) - lo) / (hi - lo)


class DisparityHead(nn.Module):
    """3x3 conv, ELU, 3x3 conv to one channel, sigmoid (Monodepth2's ``dispconv`` with a hidden layer)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        hidden = max(features // 2, 8)
        self.conv1 = nn.Conv2d(features, hidden, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv2(F.elu(self.conv1(x))))


def build_backbone(config: DepthNetConfig, weights: Path | None = None) -> DepthAnything:
    """Depth Anything of ``config``'s size, from ``weights`` (official / HF layout) or random init.

    Raises:
        InputError: unreadable weights, or weights of another size.
    """
    from endo3d.core.errors import InputError
    from endo3d.depth.dinov2 import VIT_SIZES

    if config.encoder not in VIT_SIZES:
        raise InputError("--encoder", f"must be one of {', '.join(sorted(VIT_SIZES))}, got {config.encoder!r}")
    if weights is None:
        return DepthAnything(DepthAnythingConfig(config.encoder, version=config.version))  # type: ignore[arg-type]
    from endo3d.depth.checkpoint import load_depth_anything

    return load_depth_anything(weights, encoder=config.encoder, version=config.version)


class DepthNet(nn.Module):
    """Depth Anything backbone + adapters + ``config.scales`` disparity heads.

    Args:
        backbone: a :class:`DepthAnything` (base weights already loaded).
        config: the network description; adapters and necks it names are
            injected into ``backbone`` unless ``inject=False`` (when the caller
            loads them from a file).
    """

    def __init__(self, backbone: DepthAnything, config: DepthNetConfig, *, inject: bool = True) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        encoder = backbone.pretrained
        if inject and config.adapter != "none" and encoder.lora_config is None:
            inject_adapters(backbone, LoRAConfig(kind=config.adapter, rank=config.rank, alpha=config.alpha))
        if inject and config.necks and encoder.neck_config is None:  # necks of an --init run are kept
            inject_necks(backbone, NeckConfig())
        features = backbone.depth_head.features
        self.heads = nn.ModuleList(DisparityHead(features) for _ in range(config.scales))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Disparities in [0, 1], one ``(B, 1, H, W)`` per scale, finest first.

        Args:
            images: ``(B, 3, H, W)`` RGB in [0, 1], sides multiples of 14.
        """
        sizes = check_shape(images, "B 3 H W", "images")
        feats = self.backbone.forward_features((images - self.mean) / self.std)
        fused = self.backbone.depth_head.fuse(feats)
        out = []
        for head, x in zip(self.heads, fused):
            d = head(x)
            out.append(F.interpolate(d, size=(sizes["H"], sizes["W"]), mode="bilinear", align_corners=False))
        return out

    def depth(self, images: torch.Tensor) -> torch.Tensor:
        """Depth in mm ``(B, 1, H, W)`` from the finest disparity."""
        return disparity_to_depth(self.forward_scale0(images), self.config.min_depth_mm, self.config.max_depth_mm)

    def forward_scale0(self, images: torch.Tensor) -> torch.Tensor:
        """Only the finest disparity (cheaper at inference)."""
        sizes = check_shape(images, "B 3 H W", "images")
        feats = self.backbone.forward_features((images - self.mean) / self.std)
        d = self.heads[0](self.backbone.depth_head.fuse(feats)[0])
        return F.interpolate(d, size=(sizes["H"], sizes["W"]), mode="bilinear", align_corners=False)
