"""DPT head of Depth Anything (V1 and V2 share it).

Module names follow the official checkpoints (``depth_head.*``):
``projects.{0-3}`` (1x1 convs to ``out_channels``), ``resize_layers``
(4x transposed conv, 2x transposed conv, identity, stride-2 3x3 conv),
``scratch.layer{1-4}_rn`` (3x3 convs to ``features``, no bias),
``scratch.refinenet{1-4}`` (feature fusion: ``resConfUnit1``,
``resConfUnit2``, ``out_conv``), ``scratch.output_conv1`` and
``scratch.output_conv2.{0,2}``; ``readout_projects`` only with
``use_clstoken=True`` (no released checkpoint uses it).

Data flow for a ``(h, w)`` patch grid: tap ``k`` is projected and resized to
``(4h, 4w)``, ``(2h, 2w)``, ``(h, w)``, ``(ceil(h/2), ceil(w/2))``; fusion runs
coarse to fine (``refinenet4`` -> ``refinenet1``), each stage upsampling
bilinearly (``align_corners=True``) to the next finer map, the last by 2x to
``(8h, 8w)``; ``output_conv1`` halves the channels, the map is upsampled to
``(14h, 14w)`` and ``output_conv2`` ends with a ReLU: one channel of relative
inverse depth (disparity up to an unknown scale and shift).

V1 and V2 differ only in which encoder blocks feed the head (see
:class:`endo3d.depth.model.DepthAnythingConfig`). V1's extra bilinear resize
of the output to the input size is the identity for sides that are multiples
of 14, and V1's second ReLU after the head is a no-op after the head's own.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from endo3d.depth.dinov2 import PATCH_SIZE, EncoderFeatures

__all__ = ["DPTHead", "FeatureFusionBlock", "ResidualConvUnit"]

HEAD_HIDDEN = 32
"""Channels between ``output_conv2``'s two convolutions."""


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` with 3x3 convolutions (pre-activation)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """Adds the skip (through ``resConfUnit1``), refines, upsamples, projects (``out_conv``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Fuse ``x`` with ``skip`` (same size) and resample to ``size`` (``None``: 2x)."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Depth Anything's DPT decoder.

    Args:
        in_channels: encoder width ``C``.
        features: fusion width (64 / 128 / 256 for S / B / L).
        out_channels: per-tap projection widths (e.g. ``[48, 96, 192, 384]``).
        use_clstoken: concatenate the class token to every patch token and
            project back (DPT's "project" readout). Released Depth Anything
            checkpoints do not use it.
    """

    def __init__(
        self, in_channels: int, features: int, out_channels: Sequence[int], use_clstoken: bool = False
    ) -> None:
        super().__init__()
        if len(out_channels) != 4:
            raise ValueError(f"out_channels needs 4 widths, got {list(out_channels)}")
        oc = [int(c) for c in out_channels]
        self.use_clstoken = use_clstoken
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, kernel_size=1) for c in oc)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
        ])
        if use_clstoken:
            self.readout_projects = nn.ModuleList(
                nn.Sequential(nn.Linear(2 * in_channels, in_channels), nn.GELU()) for _ in oc
            )
        self.scratch = nn.Module()
        for k, c in enumerate(oc, start=1):
            setattr(self.scratch, f"layer{k}_rn", nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False))
        for k in range(1, 5):
            setattr(self.scratch, f"refinenet{k}", FeatureFusionBlock(features))
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, HEAD_HIDDEN, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(HEAD_HIDDEN, 1, kernel_size=1),
            nn.ReLU(),
        )
        self.features = features

    def reassemble(self, feats: EncoderFeatures) -> list[torch.Tensor]:
        """Tap tokens -> 4 maps at 4x, 2x, 1x, 1/2x the patch grid, each ``(B, features, ., .)``."""
        if len(feats.patch_tokens) != 4:
            raise ValueError(f"the DPT head needs 4 taps, got {len(feats.patch_tokens)}")
        h, w = feats.grid
        out = []
        for k, (tokens, cls) in enumerate(zip(feats.patch_tokens, feats.cls_tokens)):
            if self.use_clstoken:
                tokens = self.readout_projects[k](torch.cat([tokens, cls[:, None].expand_as(tokens)], dim=-1))
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
            x = self.resize_layers[k](self.projects[k](x))
            out.append(getattr(self.scratch, f"layer{k + 1}_rn")(x))
        return out

    def fuse(self, feats: EncoderFeatures) -> list[torch.Tensor]:
        """Fused maps, finest first: ``(B, features, 8h, 8w)``, then 4h, 2h, h (``refinenet1..4``).

        These are the multi-scale decoder features a self-supervised depth
        decoder can read disparities from (EndoDAC attaches one small head per
        scale).
        """
        l1, l2, l3, l4 = self.reassemble(feats)
        s = self.scratch
        p4 = s.refinenet4(l4, size=l3.shape[2:])
        p3 = s.refinenet3(p4, l3, size=l2.shape[2:])
        p2 = s.refinenet2(p3, l2, size=l1.shape[2:])
        p1 = s.refinenet1(p2, l1)
        return [p1, p2, p3, p4]

    def forward(self, feats: EncoderFeatures) -> torch.Tensor:
        """Relative inverse depth ``(B, 1, 14h, 14w)``, >= 0."""
        h, w = feats.grid
        x = self.scratch.output_conv1(self.fuse(feats)[0])
        x = F.interpolate(x, size=(h * PATCH_SIZE, w * PATCH_SIZE), mode="bilinear", align_corners=True)
        return self.scratch.output_conv2(x)
