"""DINOv2 ViT/14 image encoder, as used by Depth Anything V1 and V2.

The module names follow the official checkpoints (``pretrained.*`` in a
Depth Anything ``.pth``), so an official state dict loads without renaming:
``cls_token``, ``pos_embed``, ``mask_token``, ``patch_embed.proj``,
``blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2,
ls2.gamma}``, ``norm``.

Architecture (DINOv2 without register tokens): 14x14 patch embedding, a class
token, learned position embeddings for a 37x37 grid (518 px), pre-norm blocks
``x + ls1 * attn(norm1(x))`` then ``x + ls2 * mlp(norm2(x))`` with LayerScale,
qkv with bias, exact GELU MLP (ratio 4), LayerNorm eps 1e-6.

Position embeddings for other grids are resampled exactly as DINOv2's
``interpolate_pos_encoding`` does (see :func:`interpolate_pos_embed`).

:meth:`DinoVisionTransformer.forward_features` returns the tokens after the
final norm at the tap blocks, as DINOv2's
``get_intermediate_layers(x, taps, return_class_token=True, norm=True)``.

Optional per-block "necks" (``necks[str(i)]``, empty by default, so absent
from the state dict) run on the tokens right after block ``i``; see
:class:`endo3d.depth.adapters.ConvNeck`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from endo3d.core import check_shape

__all__ = [
    "PATCH_SIZE",
    "VIT_SIZES",
    "EncoderFeatures",
    "DinoVisionTransformer",
    "ViTSize",
    "interpolate_pos_embed",
]

PATCH_SIZE = 14
"""Side of a square patch in pixels (DINOv2 /14)."""

POS_GRID = 37
"""Side of the position-embedding grid the checkpoints store (518 px / 14)."""

INTERPOLATE_OFFSET = 0.1
"""DINOv2's offset added to the target grid before computing the scale factor."""

Encoder = Literal["vits", "vitb", "vitl"]


@dataclass(frozen=True)
class ViTSize:
    """Width, depth and heads of one DINOv2 size."""

    embed_dim: int
    depth: int
    num_heads: int


VIT_SIZES: dict[str, ViTSize] = {
    "vits": ViTSize(384, 12, 6),
    "vitb": ViTSize(768, 12, 12),
    "vitl": ViTSize(1024, 24, 16),
}
"""DINOv2 ViT/14 sizes used by Depth Anything (ViT-G is not supported)."""


@dataclass(frozen=True)
class EncoderFeatures:
    """Normed tokens at the tap blocks, finest tap first.

    Attributes:
        patch_tokens: one ``(B, h*w, C)`` tensor per tap, row-major over the
            patch grid.
        cls_tokens: one ``(B, C)`` tensor per tap.
        grid: ``(h, w)``, the patch grid (image sides / 14).
    """

    patch_tokens: tuple[torch.Tensor, ...]
    cls_tokens: tuple[torch.Tensor, ...]
    grid: tuple[int, int]

    def maps(self) -> list[torch.Tensor]:
        """The patch tokens as feature maps, each ``(B, C, h, w)``."""
        h, w = self.grid
        return [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w) for t in self.patch_tokens]


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Position embeddings for a ``grid`` of patches, resampled as DINOv2 does.

    DINOv2 (and so Depth Anything) resamples the stored ``S x S`` grid
    bicubically (``align_corners=False``, no antialiasing, in float32) with
    ``scale_factor = ((h + 0.1) / S, (w + 0.1) / S)``: the output has
    ``floor(S * scale) = (h, w)`` cells but sampling positions follow the
    given scale factor, not ``S / h``; the two differ by a small amount
    that this function reproduces. The stored embeddings are returned
    unchanged when the grid is the stored square one.

    Args:
        pos_embed: ``(1, 1 + S*S, C)``, class-token embedding first.
        grid: ``(h, w)`` patches.

    Returns:
        ``(1, 1 + h*w, C)`` in ``pos_embed``'s dtype.
    """
    h, w = grid
    n = pos_embed.shape[1] - 1
    side = math.sqrt(n)
    if int(side) ** 2 != n:
        raise ValueError(f"pos_embed has {n} patch positions, not a square grid")
    if h == w and h * w == n:
        return pos_embed
    dim = pos_embed.shape[-1]
    stored = pos_embed.float()
    patch = stored[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    scale = ((h + INTERPOLATE_OFFSET) / side, (w + INTERPOLATE_OFFSET) / side)
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)
    if tuple(patch.shape[-2:]) != (h, w):  # cannot happen for the 0.1 offset; guard anyway
        raise RuntimeError(f"position embeddings resampled to {tuple(patch.shape[-2:])}, expected {(h, w)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat([stored[:, :1], patch], dim=1).to(pos_embed.dtype)


class PatchEmbed(nn.Module):
    """``(B, 3, H, W)`` -> ``(B, H/14 * W/14, C)`` with a strided convolution (``proj``)."""

    def __init__(self, embed_dim: int, in_chans: int = 3, patch_size: int = PATCH_SIZE) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (q, k, v stacked in that order)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale 1/sqrt(head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` on a residual branch."""

    def __init__(self, dim: int, init: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` with exact (erf) GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT/14 without register tokens.

    Args:
        embed_dim, depth, num_heads: the size (see :data:`VIT_SIZES`).
        taps: block indices whose outputs :meth:`forward_features` returns.
        pos_grid: side of the stored position-embedding grid (37 for 518 px).
    """

    def __init__(
        self, embed_dim: int, depth: int, num_heads: int, taps: Sequence[int], pos_grid: int = POS_GRID
    ) -> None:
        super().__init__()
        if not taps or any(not 0 <= t < depth for t in taps) or list(taps) != sorted(set(taps)):
            raise ValueError(f"taps must be increasing block indices in [0, {depth}), got {list(taps)}")
        self.embed_dim = embed_dim
        self.taps = tuple(int(t) for t in taps)
        self.patch_embed = PatchEmbed(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # unused; kept for checkpoint keys
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.necks = nn.ModuleDict()  # "i" -> module(tokens (B, 1+N, C), grid) -> tokens, after block i
        # Set by endo3d.depth.adapters when adapters are injected (LoRAConfig / NeckConfig).
        self.lora_config: object | None = None
        self.neck_config: object | None = None
        self._init_weights()

    @classmethod
    def from_size(cls, encoder: Encoder, taps: Sequence[int]) -> "DinoVisionTransformer":
        """The DINOv2 ``encoder`` size with the given tap blocks."""
        size = VIT_SIZES[encoder]
        return cls(size.embed_dim, size.depth, size.num_heads, taps)

    def _init_weights(self) -> None:
        # DINOv2's initialisation (only matters for models that are not loaded from a checkpoint).
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def prepare_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with the class token prepended and position embeddings added.

        Returns:
            tokens ``(B, 1 + h*w, C)`` and the grid ``(h, w)``.
        """
        sizes = check_shape(images, "B 3 H W", "images")
        if sizes["H"] % PATCH_SIZE or sizes["W"] % PATCH_SIZE or sizes["H"] == 0 or sizes["W"] == 0:
            raise ValueError(f"image sides must be positive multiples of {PATCH_SIZE}, got {sizes['H']}x{sizes['W']}")
        grid = (sizes["H"] // PATCH_SIZE, sizes["W"] // PATCH_SIZE)
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return x + interpolate_pos_embed(self.pos_embed, grid).to(x.dtype), grid

    def forward_features(self, images: torch.Tensor) -> EncoderFeatures:
        """Normed tokens at the tap blocks.

        Args:
            images: ``(B, 3, H, W)``, ImageNet-normalised, ``H`` and ``W``
                multiples of 14.
        """
        x, grid = self.prepare_tokens(images)
        patches: list[torch.Tensor] = []
        classes: list[torch.Tensor] = []
        last = self.taps[-1]
        for i, block in enumerate(self.blocks):
            x = block(x)
            key = str(i)
            if key in self.necks:
                x = self.necks[key](x, grid)
            if i in self.taps:
                normed = self.norm(x)
                classes.append(normed[:, 0])
                patches.append(normed[:, 1:])
            if i == last:
                break
        return EncoderFeatures(tuple(patches), tuple(classes), grid)

    def forward(self, images: torch.Tensor) -> EncoderFeatures:
        return self.forward_features(images)
