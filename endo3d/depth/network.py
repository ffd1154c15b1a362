"""The adaptable depth network: Depth Anything + adapters + multi-scale depth heads.

:class:`DepthNet` runs the (frozen or adapted) Depth Anything encoder and
the DPT fusion stages (:meth:`endo3d.depth.dpt.DPTHead.fuse`), and reads a
depth map from each of the four fused maps (finest first, EndoDAC /
Monodepth2 style multi-scale). Each head's logit is upsampled bilinearly to
the input size (Monodepth2's "full-resolution" multi-scale) and mapped to
millimetres by :func:`logit_to_depth`.

Depth parameterisation (log-depth sigmoid)::

    depth = d_min * (d_max / d_min) ** sigmoid(z)
    d log(depth) / dz = log(d_max / d_min) * sigmoid(z) * (1 - sigmoid(z))

so ``z = 0`` is the geometric centre ``sqrt(d_min d_max)`` (17.3 mm for the
default 1..300 mm), where the sensitivity is largest (``log(d_max / d_min) / 4``
= 1.43 per unit logit for 1..300 mm), and it falls off symmetrically in log
depth towards both ends. Monodepth2 / EndoDAC map a sigmoid disparity
``depth = 1 / (1/d_max + (1/d_min - 1/d_max) sigmoid(z))`` instead, which
starts at ``~2 d_min`` (2 mm: 40x too near for an abdomen) and whose
sensitivity ``d log(depth) / dz = -(1 - depth / d_max)(1 - sigmoid(z))``
vanishes at the far end; a fine-tune that overshoots there cannot come
back (measured: the finest heads ran to logits below -70, all depths
300 mm, after 30 supervised steps). Each head also starts from a
LayerNorm of its input, so the logits do not grow with the magnitude of
the shared decoder features (which differs between a random-init and a
pretrained backbone and grows while the backbone trains), and its last
convolution starts at zero: every head predicts the flat geometric-centre
depth at initialisation and its gradient is not saturated there.

Input: RGB ``(B, 3, H, W)`` in [0, 1] with ``H``, ``W`` multiples of 14; the
ImageNet normalisation happens inside.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from endo3d.core import check_shape
from endo3d.depth.adapters import ChannelLayerNorm, LoRAConfig, NeckConfig, inject_adapters, inject_necks
from endo3d.depth.config import DepthNetConfig
from endo3d.depth.model import IMAGENET_MEAN, IMAGENET_STD, DepthAnything, DepthAnythingConfig

__all__ = ["DepthHead", "DepthNet", "build_backbone", "depth_to_logit", "logit_to_depth"]


def logit_to_depth(z: torch.Tensor, min_depth_mm: float, max_depth_mm: float) -> torch.Tensor:
    """Head logit -> depth in mm: ``d_min * (d_max / d_min) ** sigmoid(z)``, in ``(d_min, d_max)``."""
    return torch.exp(math.log(min_depth_mm) + math.log(max_depth_mm / min_depth_mm) * torch.sigmoid(z))


def depth_to_logit(depth: torch.Tensor, min_depth_mm: float, max_depth_mm: float, eps: float = 1e-6) -> torch.Tensor:
    """Inverse of :func:`logit_to_depth` (the sigmoid argument clamped to ``[eps, 1 - eps]``)."""
    s = (torch.log(depth) - math.log(min_depth_mm)) / math.log(max_depth_mm / min_depth_mm)
    return torch.logit(s.clamp(eps, 1 - eps))


class DepthHead(nn.Module):
    """Channel LayerNorm, 3x3 conv, ELU, 3x3 conv to one logit (Monodepth2's ``dispconv`` with a hidden layer).

    The last convolution is zero-initialised: the head starts at ``z = 0``
    everywhere (the geometric centre of the depth range, see the module
    docstring), where the sigmoid's slope is largest.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        hidden = max(features // 2, 8)
        self.norm = ChannelLayerNorm(features)
        self.conv1 = nn.Conv2d(features, hidden, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=1, padding_mode="reflect")
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, features, h, w)`` -> logit ``(B, 1, h, w)``."""
        return self.conv2(F.elu(self.conv1(self.norm(x))))


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
    """Depth Anything backbone + adapters + ``config.scales`` depth heads.

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
        self.heads = nn.ModuleList(DepthHead(features) for _ in range(config.scales))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _fused(self, images: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        sizes = check_shape(images, "B 3 H W", "images")
        feats = self.backbone.forward_features((images - self.mean) / self.std)
        return self.backbone.depth_head.fuse(feats), (sizes["H"], sizes["W"])

    def _depth(self, head: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        z = F.interpolate(head(x), size=size, mode="bilinear", align_corners=False)
        return logit_to_depth(z, self.config.min_depth_mm, self.config.max_depth_mm)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Depth in mm, one ``(B, 1, H, W)`` per scale, finest first.

        Args:
            images: ``(B, 3, H, W)`` RGB in [0, 1], sides multiples of 14.
        """
        fused, size = self._fused(images)
        return [self._depth(head, x, size) for head, x in zip(self.heads, fused)]

    def depth(self, images: torch.Tensor) -> torch.Tensor:
        """Depth in mm ``(B, 1, H, W)`` from the finest head only (cheaper at inference)."""
        fused, size = self._fused(images)
        return self._depth(self.heads[0], fused[0], size)
