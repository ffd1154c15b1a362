"""Depth Anything (V1 / V2): DINOv2 encoder + DPT head -> relative inverse depth.

Attribute names match the official checkpoints: ``pretrained`` (the encoder,
:class:`~endo3d.depth.dinov2.DinoVisionTransformer`) and ``depth_head``
(:class:`~endo3d.depth.dpt.DPTHead`), so an official state dict loads as is
(:func:`endo3d.depth.checkpoint.load_depth_anything` also reads the
Hugging Face layout).

Images: ``(B, 3, H, W)`` float32. :func:`preprocess` takes RGB in [0, 1]
(``CONVENTIONS.md``) and returns the ImageNet-normalised network input at the
official working size; :meth:`DepthAnything.forward` takes that. The output
is *relative inverse depth*: proportional to disparity up to an unknown scale
and shift, larger = nearer, >= 0 (ReLU); not millimetres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from endo3d.core import check_shape
from endo3d.depth.dinov2 import PATCH_SIZE, VIT_SIZES, DinoVisionTransformer, EncoderFeatures
from endo3d.depth.dpt import DPTHead

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DepthAnything",
    "DepthAnythingConfig",
    "lower_bound_size",
    "predict_inverse_depth",
    "preprocess",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 518
"""Official working size: the shorter image side becomes 518 px (37 patches)."""

_HEAD = {  # encoder -> (DPT features, out_channels); the same in V1 and V2
    "vits": (64, (48, 96, 192, 384)),
    "vitb": (128, (96, 192, 384, 768)),
    "vitl": (256, (256, 512, 1024, 1024)),
}
_TAPS_V2 = {"vits": (2, 5, 8, 11), "vitb": (2, 5, 8, 11), "vitl": (4, 11, 17, 23)}


@dataclass(frozen=True)
class DepthAnythingConfig:
    """Which Depth Anything network to build.

    Attributes:
        encoder: DINOv2 size: ``"vits"`` (24.8 M parameters with the head),
            ``"vitb"`` or ``"vitl"``.
        version: 2 taps blocks 2, 5, 8, 11 (S, B) or 4, 11, 17, 23 (L);
            1 taps the last four blocks (``get_intermediate_layers(x, 4)``).
            The weights have the same names and shapes, so the version cannot
            be read from a checkpoint: it must match the weights.
        use_clstoken: DPT class-token readout (unused by released weights).
    """

    encoder: Literal["vits", "vitb", "vitl"]
    version: Literal[1, 2] = 2
    use_clstoken: bool = False

    def __post_init__(self) -> None:
        if self.encoder not in VIT_SIZES:
            raise ValueError(f"encoder must be one of {sorted(VIT_SIZES)}, got {self.encoder!r}")
        if self.version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {self.version!r}")

    @property
    def embed_dim(self) -> int:
        return VIT_SIZES[self.encoder].embed_dim

    @property
    def taps(self) -> tuple[int, int, int, int]:
        """Encoder blocks whose outputs feed the DPT head."""
        if self.version == 2:
            return _TAPS_V2[self.encoder]
        depth = VIT_SIZES[self.encoder].depth
        return (depth - 4, depth - 3, depth - 2, depth - 1)

    @property
    def head_features(self) -> int:
        return _HEAD[self.encoder][0]

    @property
    def head_out_channels(self) -> tuple[int, int, int, int]:
        return _HEAD[self.encoder][1]


class DepthAnything(nn.Module):
    """Depth Anything V1/V2 for relative inverse depth.

    Example:
        >>> model = DepthAnything(DepthAnythingConfig("vits")).eval()
        >>> model(torch.zeros(1, 3, 70, 98)).shape
        torch.Size([1, 1, 70, 98])
    """

    def __init__(self, config: DepthAnythingConfig) -> None:
        super().__init__()
        self.config = config
        self.pretrained = DinoVisionTransformer.from_size(config.encoder, config.taps)
        self.depth_head = DPTHead(config.embed_dim, config.head_features, config.head_out_channels, config.use_clstoken)

    def forward_features(self, images: torch.Tensor) -> EncoderFeatures:
        """Normed encoder tokens at the 4 tap blocks (``.maps()`` gives ``(B, C, H/14, W/14)`` maps).

        Args:
            images: ``(B, 3, H, W)`` ImageNet-normalised, sides multiples of 14.
        """
        return self.pretrained.forward_features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Relative inverse depth ``(B, 1, H, W)`` (>= 0, larger = nearer).

        Args:
            images: ``(B, 3, H, W)`` ImageNet-normalised, ``H`` and ``W``
                multiples of 14 (see :func:`preprocess`).
        """
        return self.depth_head(self.forward_features(images))


def _round_half_even(x: float) -> int:
    return int(round(x))  # Python's round is half-to-even, like np.round in the official code


def lower_bound_size(height: int, width: int, size: int = INPUT_SIZE, multiple: int = PATCH_SIZE) -> tuple[int, int]:
    """Working size ``(H', W')`` of the official ``Resize(..., keep_aspect_ratio=True,
    ensure_multiple_of=14, resize_method="lower_bound")``.

    Both sides are scaled by ``max(size / H, size / W)`` (so the shorter side
    becomes ``size`` and neither is below it), then each is rounded to the
    nearest multiple of ``multiple`` (half to even), rounding up instead when
    that would fall below ``size``.

    Example:
        >>> lower_bound_size(256, 320)
        (518, 644)
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = max(size / height, size / width)

    def constrain(x: float) -> int:
        y = _round_half_even(x / multiple) * multiple
        if y < size:
            y = math.ceil(x / multiple) * multiple
        return int(y)

    return constrain(scale * height), constrain(scale * width)


def preprocess(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Official Depth Anything inference transform on a batch.

    Resizes to :func:`lower_bound_size` with bicubic interpolation
    (``align_corners=False``, no antialiasing, no clamping), then normalises
    with the ImageNet mean and std. The official code resizes with OpenCV's
    ``INTER_CUBIC`` (same Keys a = -0.75 kernel and pixel-centre alignment);
    torch's border handling and rounding can differ from OpenCV's by small
    amounts, so results are close but not bit-identical.

    Args:
        images: ``(B, 3, H, W)`` RGB in [0, 1].
        size: lower bound for both sides (518 in the official code).

    Returns:
        ``(B, 3, H', W')`` float32, ``H'`` and ``W'`` multiples of 14.
    """
    sizes = check_shape(images, "B 3 H W", "images")
    out_hw = lower_bound_size(sizes["H"], sizes["W"], size)
    x = images.float()
    if out_hw != (sizes["H"], sizes["W"]):
        x = F.interpolate(x, size=out_hw, mode="bicubic", align_corners=False, antialias=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def predict_inverse_depth(model: DepthAnything, images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Relative inverse depth at the input resolution, as the official ``infer_image``.

    :func:`preprocess`, the network, then a bilinear resize
    (``align_corners=True``) back to ``(H, W)``. Runs without gradients; the
    caller chooses ``model.eval()`` and the device (``images``' device is used).

    Args:
        model: a :class:`DepthAnything`.
        images: ``(B, 3, H, W)`` RGB in [0, 1].
        size: working-size lower bound (518).

    Returns:
        ``(B, 1, H, W)`` relative inverse depth (>= 0, larger = nearer).
    """
    sizes = check_shape(images, "B 3 H W", "images")
    out = model(preprocess(images, size))
    return F.interpolate(out, size=(sizes["H"], sizes["W"]), mode="bilinear", align_corners=True)
