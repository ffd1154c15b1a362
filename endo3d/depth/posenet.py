"""Pose, brightness and intrinsics network on a frame pair (EndoDAC / Monodepth2 style).

A ResNet-18-shaped encoder (our own, no torchvision) reads the target and
the source frame stacked to 6 channels; a small convolutional decoder,
averaged over the image, gives the 6-DoF motion ``T_source_from_target``
(axis-angle times 0.01 rad, translation times ``translation_scale_mm``),
and a per-pair affine brightness change ``(a, b)`` of the source; an
intrinsics head on the globally pooled encoder features gives ``K``
(EndoDAC's parameterisation, in pixels of the network input)::

    f  = (softplus(z_f) + FOCAL_FLOOR) * [W, H]    (square pixels: fx = fy = (softplus(z_f) + FOCAL_FLOOR) W)
    c  = (z_c + 0.5) * [W, H] - 0.5
    z  = INTRINSICS_SCALE * A x + b + z_0      (x: LayerNorm of the pooled features)

EndoDAC's floor is 0.5, i.e. a horizontal field of view below 90 degrees;
endoscopes are often wider (our colon camera: 100 degrees, f = 0.42 W), so
the floor here is 0.1 (up to 157 degrees). The ``- 0.5`` moves EndoDAC's
pixel-edge convention to OpenCV pixel centres (CONVENTIONS.md), so
``z_c = 0`` is the exact image centre.

Square pixels (the default, ``square_pixels=True``): one focal logit sets
``fx = fy``, as for nearly every endoscope sensor. EndoDAC learns ``fx`` and
``fy`` apart; on the simulated colon (square pixels) the two drifted apart
(``fx`` 22 % below the truth, ``fy`` 14 % above after 350 steps, measured)
while their geometric mean stayed within 5 %: the aspect ratio is the poorly
observed part, so it is fixed unless asked for.

Initialisation: ``z_0`` starts the focal length at ``FOCAL_START * W``
pixels (90 degrees horizontally) on both axes; EndoDAC's ``z = 0`` start
would give ``fx / fy = W / H``, a non-square-pixel guess (for 4:3 images
one of the two starts 33 % off the other).

Learning rates: the per-pair part ``A x`` is scaled by ``INTRINSICS_SCALE``
so that Adam's per-weight steps, summed over the pooled channels, keep the
per-pair variation small; the biases ``b`` (the focal length and principal
point shared by all pairs) are unscaled. The focal bias
(:meth:`PoseNet.focal_parameters`) gets its own learning rate
(``--intrinsics-lr``): with Adam's at most lr-sized steps ``f`` moves by up
to ``lr * sigmoid(z_f) * W`` pixels a step (0.3 % of ``f`` at lr 1e-2). The
photometric gradient of ``f`` is weak and noisy, so the steps are a
fraction of that: with ground-truth depth on the simulated colon (10 fps),
300 steps at 1e-3 took ``f`` from 19 % to 16 % above the truth, at 1e-2 to
4 %. The principal point is observed still less well (at 1e-2 it wandered
8.7 px off at 128 x 96 in ``benchmarks/depth.py`` while ``f`` came within
1 %), so its bias trains with the pose net at ``--pose-lr``.

The focal length is observable only through camera rotation: a rotation
``theta`` moves a pixel ``x`` pixels from the centre by
``f theta (1 + x^2 / f^2)``, while a translation's flow ``f t / Z`` trades
``f`` against the (free) depth scale. Learn it on video with a turning
camera.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from endo3d.core import check_shape
from endo3d.geometry import axis_angle_to_matrix, pose_from_rt

__all__ = ["PoseNet", "PoseOutput", "focal_start_logits", "intrinsics_from_raw", "pose_from_raw"]

ROTATION_SCALE = 0.01
"""Radians per unit of the decoder's rotation output (Monodepth2)."""
FOCAL_FLOOR = 0.1
"""Smallest focal length, in image widths / heights (EndoDAC: 0.5)."""
FOCAL_START = 0.5
"""Focal length at initialisation, in image widths, for both axes (90 degrees horizontal field of view)."""
INTRINSICS_SCALE = 0.01
"""Scale of the intrinsics head's input-dependent part ``A x`` (not of its bias): Adam moves each of the
pooled channels' weights by about the learning rate per step, so unscaled the per-pair focal length
would jump by pixels per step."""


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
    return pose_from_rt(axis_angle_to_matrix(raw[:, :3] * ROTATION_SCALE), raw[:, 3:6] * translation_scale_mm)


def intrinsics_from_raw(z_focal: torch.Tensor, z_centre: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """EndoDAC intrinsics: focal and centre logits -> ``(B, 3, 3)`` K in pixels (OpenCV centres).

    ``z_focal`` ``(B, 2)``: ``f = (softplus(z_f) + FOCAL_FLOOR) * [W, H]``; ``(B, 1)``: square pixels,
    ``fx = fy = (softplus(z_f) + FOCAL_FLOOR) * W``. ``z_centre`` ``(B, 2)``: ``c = (z_c + 0.5) * [W, H] - 0.5``.
    """
    unit = F.softplus(z_focal) + FOCAL_FLOOR
    K = torch.zeros(z_focal.shape[0], 3, 3, dtype=z_focal.dtype, device=z_focal.device)
    K[:, 0, 0] = unit[:, 0] * width
    K[:, 1, 1] = unit[:, 1] * height if z_focal.shape[1] == 2 else K[:, 0, 0]
    K[:, 0, 2] = (z_centre[:, 0] + 0.5) * width - 0.5
    K[:, 1, 2] = (z_centre[:, 1] + 0.5) * height - 0.5
    K[:, 2, 2] = 1.0
    return K


def focal_start_logits(height: int, width: int, *, square_pixels: bool) -> list[float]:
    """``z_0``: the focal logits of ``fx = fy = FOCAL_START * width`` pixels, one or two (softplus inverted)."""
    scale = [FOCAL_START] if square_pixels else [FOCAL_START, FOCAL_START * width / height]
    return [math.log(math.expm1(s - FOCAL_FLOOR)) for s in scale]


class PoseNet(nn.Module):
    """Frame pair -> motion, brightness change and (optionally) intrinsics.

    Args:
        learn_intrinsics: add the intrinsics head.
        width: encoder base width (64: ResNet-18).
        translation_scale_mm: mm per unit of the translation output. 1 mm,
            the order of an endoscope's motion between frames (0.3-2 mm),
            lets the decoder's O(1) outputs reach it in tens of steps. The
            decoder starts near 0 (motions of ~0.1 mm). EndoDAC's x0.001
            relies on the depth network picking whatever scale matches the
            motion; a depth network fine-tuned in mm (``--init``) has its
            scale already, and with 0.1 mm per unit the motion lagged 5x
            behind it after 200 steps (measured), so depth shrank instead.
        square_pixels: learn one focal length for both axes (else fx and fy, EndoDAC).
    """

    def __init__(self, *, learn_intrinsics: bool = True, width: int = 64, translation_scale_mm: float = 1.0,
                 square_pixels: bool = True) -> None:
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
        self.square_pixels = square_pixels
        if learn_intrinsics:
            self.focal = nn.Linear(c, 1 if square_pixels else 2)
            self.centre = nn.Linear(c, 2)
            for layer in (self.focal, self.centre):
                nn.init.normal_(layer.weight, std=1e-3)
                nn.init.zeros_(layer.bias)

    def focal_parameters(self) -> list[nn.Parameter]:
        """The focal head's bias: the focal length shared by all frame pairs (trained at ``--intrinsics-lr``)."""
        return [self.focal.bias] if self.learn_intrinsics else []

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
            z_f = INTRINSICS_SCALE * F.linear(pooled, self.focal.weight) + self.focal.bias
            z_c = INTRINSICS_SCALE * F.linear(pooled, self.centre.weight) + self.centre.bias
            z_0 = focal_start_logits(sizes["H"], sizes["W"], square_pixels=self.square_pixels)
            z_f = torch.cat([z_f[:, k : k + 1] + v for k, v in enumerate(z_0)], dim=1)
            K = intrinsics_from_raw(z_f, z_c, sizes["H"], sizes["W"])
        return PoseOutput(T, brightness, K)
