"""Pose, brightness and intrinsics network on a frame pair (EndoDAC / Monodepth2 style).

A ResNet-18-shaped encoder (our own, no torchvision) reads the target and
the source frame stacked to 6 channels; a small convolutional decoder,
averaged over the image, gives the 6-DoF motion ``T_source_from_target``
(axis-angle times 0.01 rad, translation times ``translation_scale_mm``),
and a per-pair affine brightness change ``(a, b)`` of the source; an
intrinsics head on the globally pooled encoder features gives ``K``
(EndoDAC's parameterisation, in pixels of the network input)::

    f  = (softplus(z_f) + FOCAL_FLOOR) * [W, H]
    c  = (z_c + 0.5) * [W, H] - 0.5

EndoDAC's floor is 0.5, i.e. a horizontal field of view below 90 degrees;
endoscopes are often wider (our colon camera: 100 degrees, f = 0.42 W), so
the floor here is 0.1 (up to 157 degrees) and the focal bias starts at
f = 0.5 W (90 degrees). The ``- 0.5`` moves EndoDAC's pixel-edge convention
to OpenCV pixel centres (CONVENTIONS.md), so ``z_c = 0`` is the exact image
centre.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from endo3d.core import check_shape
from endo3d.geometry import axis_angle_to_matrix

__all__ = ["PoseNet", "PoseOutput", "intrinsics_from_raw", "pose_from_raw"]

ROTATION_SCALE = 0.01
"""Radians per unit of the decoder's rotation output (Monodepth2)."""
FOCAL_FLOOR = 0.1
"""Smallest focal length, in image widths / heights (EndoDAC: 0.5)."""
FOCAL_START = 0.5
"""Focal length at initialisation, in image widths / heights (90 degrees field of view)."""
INTRINSICS_SCALE = 0.01
"""The intrinsics head's linear outputs are scaled by this (as the motion outputs), so that Adam's
per-weight steps move ``f`` and ``c`` by a fraction of a pixel, not by pixels, per step."""


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNetEncoder(nn.Module):
    """ResNet-18 layout (7x7 stem, max-pool, 4 stages of 2 basic blocks) on ``in_channels`` inputs.

    ``width`` scales the channels (64 = ResNet-18: 11.2 M parameters with 6 inputs).
    """

    def __init__(self, in_channels: int = 6, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], width
        for k, n in enumerate(blocks):
            cout = width * 2**k
            layers.append(nn.Sequential(*[_BasicBlock(cin if j == 0 else cout, cout, 2 if (k and j == 0) else 1)
                                          for j in range(n)]))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


class PoseOutput(NamedTuple):
    """What :class:`PoseNet` predicts for a batch of (target, source) pairs."""

    T: torch.Tensor
    """``(B, 4, 4)`` ``T_source_from_target``: target-camera points to source-camera points (mm)."""
    brightness: torch.Tensor
    """``(B, 2)`` ``(a, b)``: the source looks like the target as ``a * source + b``."""
    K: torch.Tensor | None
    """``(B, 3, 3)`` intrinsics in pixels of the input size, or None (not learned)."""


def pose_from_raw(raw: torch.Tensor, translation_scale_mm: float) -> torch.Tensor:
    """``(B, 6)`` decoder output (axis-angle, translation) -> ``(B, 4, 4)`` rigid transform."""
    R = axis_angle_to_matrix(raw[:, :3] * ROTATION_SCALE)
    T = torch.eye(4, dtype=raw.dtype, device=raw.device).repeat(raw.shape[0], 1, 1)
    T[:, :3, :3] = R
    T[:, :3, 3] = raw[:, 3:6] * translation_scale_mm
    return T


def intrinsics_from_raw(z_focal: torch.Tensor, z_centre: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """EndoDAC intrinsics: ``(B, 2)`` focal and centre logits -> ``(B, 3, 3)`` K in pixels (OpenCV centres).

    ``f = (softplus(z_f) + FOCAL_FLOOR) * [W, H]``, ``c = (z_c + 0.5) * [W, H] - 0.5``.
    """
    size = torch.tensor([width, height], dtype=z_focal.dtype, device=z_focal.device)
    f = (F.softplus(z_focal) + FOCAL_FLOOR) * size
    c = (z_centre + 0.5) * size - 0.5
    K = torch.zeros(z_focal.shape[0], 3, 3, dtype=z_focal.dtype, device=z_focal.device)
    K[:, 0, 0], K[:, 1, 1] = f[:, 0], f[:, 1]
    K[:, 0, 2], K[:, 1, 2] = c[:, 0], c[:, 1]
    K[:, 2, 2] = 1.0
    return K


class PoseNet(nn.Module):
    """Frame pair -> motion, brightness change and (optionally) intrinsics.

    Args:
        learn_intrinsics: add the intrinsics head.
        width: encoder base width (64: ResNet-18).
        translation_scale_mm: mm per unit of the translation output. The
            decoder starts near 0, so the first steps see small motions;
            0.1 mm per unit is EndoDAC's x0.001 for scenes ~100 mm deep.
    """

    def __init__(self, *, learn_intrinsics: bool = True, width: int = 64, translation_scale_mm: float = 0.1) -> None:
        super().__init__()
        self.width = width
        self.encoder = ResNetEncoder(6, width)
        c = self.encoder.out_channels
        hidden = max(c // 2, 16)
        self.decoder = nn.Sequential(
            nn.Conv2d(c, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 8, 1),
        )
        self.learn_intrinsics = learn_intrinsics
        self.translation_scale_mm = float(translation_scale_mm)
        if learn_intrinsics:
            self.focal = nn.Linear(c, 2)
            self.centre = nn.Linear(c, 2)
            for layer in (self.focal, self.centre):  # start at f = FOCAL_START [W, H], c = image centre
                nn.init.normal_(layer.weight, std=1e-3)
                nn.init.zeros_(layer.bias)
        self.focal_offset = math.log(math.expm1(FOCAL_START - FOCAL_FLOOR))  # softplus^-1

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> PoseOutput:
        """Args: ``target``, ``source``: ``(B, 3, H, W)`` RGB in [0, 1] (same size)."""
        sizes = check_shape(target, "B 3 H W", "target")
        check_shape(source, f"{sizes['B']} 3 {sizes['H']} {sizes['W']}", "source")
        feats = self.encoder(torch.cat([target, source], dim=1) - 0.45)
        raw = self.decoder(feats).mean(dim=(2, 3))
        T = pose_from_raw(raw[:, :6], self.translation_scale_mm)
        brightness = torch.stack([torch.exp(0.01 * raw[:, 6]), 0.01 * raw[:, 7]], dim=1)
        K = None
        if self.learn_intrinsics:
            pooled = F.layer_norm(feats.mean(dim=(2, 3)), (feats.shape[1],))
            z_f = INTRINSICS_SCALE * self.focal(pooled) + self.focal_offset
            z_c = INTRINSICS_SCALE * self.centre(pooled)
            K = intrinsics_from_raw(z_f, z_c, sizes["H"], sizes["W"])
        return PoseOutput(T, brightness, K)
