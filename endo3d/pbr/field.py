"""The neural material field: world point (mm) -> metal-rough material.

A multiresolution hash grid (Instant-NGP's encoding, written in plain torch
so it runs on any device) feeds a small MLP whose six outputs are mapped to
the ranges of :class:`endo3d.render.Material` by :func:`material_from_raw`:

    albedo    = sigmoid(r[0:3])                              in (0, 1), linear RGB
    roughness = R_MIN + (1 - R_MIN) sigmoid(r[3])            in (R_MIN, 1)
    specular  = F0_MAX sigmoid(r[4])                         F0 in (0, 0.08) (Disney: specular 1 = 0.08)
    metallic  = sigmoid(r[5]), or 0 when metals are off      tissue is a dielectric

A zero output gives albedo 0.5, roughness ~0.54 and F0 = 0.04 (water-like).
The light-baked baseline uses the same encoding with three outputs mapped to
linear radiance by :func:`radiance_from_raw`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from endo3d.core import check_shape
from endo3d.render.brdf import Material

__all__ = ["F0_MAX", "R_MIN", "HashEncoding", "MaterialField", "material_from_raw", "radiance_from_raw"]

#: Smallest perceptual roughness of the field (above ``sqrt(ALPHA_MIN)``, where the GGX width stops changing).
R_MIN = 0.08
#: Largest specular reflectance ``F0`` (the Disney ``specular = 1``).
F0_MAX = 0.08

_PRIMES = (1, 2654435761, 805459861)


def material_from_raw(raw: torch.Tensor, metallic: bool = False) -> Material:
    """Map unconstrained MLP outputs to a :class:`Material` (module docstring).

    Args:
        raw: ``(..., 6)`` network outputs.
        metallic: use ``raw[..., 5]``; otherwise metallic is 0.

    Returns:
        albedo ``(..., 3)``, roughness, specular and metallic ``(..., 1)``.
    """
    check_shape(raw, "... 6", "raw")
    albedo = torch.sigmoid(raw[..., 0:3])
    roughness = R_MIN + (1 - R_MIN) * torch.sigmoid(raw[..., 3:4])
    specular = F0_MAX * torch.sigmoid(raw[..., 4:5])
    metal = torch.sigmoid(raw[..., 5:6]) if metallic else torch.zeros_like(raw[..., 5:6])
    return Material(albedo, roughness, specular, metal)


def radiance_from_raw(raw: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Linear radiance ``scale * exp(raw)`` of the light-baked baseline, ``(..., 3)``; positive."""
    check_shape(raw, "... 3", "raw")
    return scale * torch.exp(raw.clamp(max=30.0))


class HashEncoding(nn.Module):
    """Multiresolution hash encoding of points in an axis-aligned box.

    Level ``l`` has cubic cells of size ``c_l`` mm (geometric from
    ``coarsest_mm`` to ``finest_mm``); the features at a point are the
    trilinear interpolation of the ``features`` values stored at its cell's
    eight corners. A level whose corners fit in the table is indexed densely,
    finer ones through the spatial hash ``xor(i * p_i) mod T``.

    Args:
        lower, upper: corners of the box in mm (points outside are clamped to it).
        levels, table_log2, features, coarsest_mm, finest_mm: see
            :class:`endo3d.pbr.config.FieldConfig`.
    """

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor, *, levels: int = 12, table_log2: int = 15,
                 features: int = 2, coarsest_mm: float = 16.0, finest_mm: float = 0.25) -> None:
        super().__init__()
        if levels < 1 or features < 1 or not 0 < finest_mm <= coarsest_mm:
            raise ValueError("need levels >= 1, features >= 1 and 0 < finest_mm <= coarsest_mm")
        self.register_buffer("lower", torch.as_tensor(lower, dtype=torch.float32).reshape(3).clone())
        self.register_buffer("upper", torch.as_tensor(upper, dtype=torch.float32).reshape(3).clone())
        growth = (finest_mm / coarsest_mm) ** (1 / max(levels - 1, 1))
        cells = torch.tensor([coarsest_mm * growth**level for level in range(levels)], dtype=torch.float64)
        extent = (self.upper - self.lower).double().clamp_min(1e-6)
        self.register_buffer("cell_mm", cells.float())
        # Corners per axis: a point in the box has base corner <= extent / cell, so +2 leaves room for base + 1.
        resolution = torch.floor(extent[None, :] / cells[:, None]).long() + 2  # (L, 3)
        if table_log2 < 1 or table_log2 > 30:
            raise ValueError(f"table_log2 must be in [1, 30], got {table_log2}")
        self.table_size = 2**table_log2
        dense = resolution.prod(dim=1) <= self.table_size
        # Per axis, what one step of the corner index adds to the table index:
        # dense levels use strides (1, rx, rx * ry), hashed ones the primes (xor-combined).
        strides = torch.stack([torch.ones(levels, dtype=torch.long), resolution[:, 0],
                               resolution[:, 0] * resolution[:, 1]], dim=1)
        primes = torch.tensor(_PRIMES, dtype=torch.long).expand(levels, 3)
        self.register_buffer("multiplier", torch.where(dense[:, None], strides, primes))
        self.register_buffer("resolution", resolution)
        self.register_buffer("dense", dense)
        self.levels, self.features = levels, features
        table = torch.empty(levels, self.table_size, features).uniform_(-1e-4, 1e-4)
        self.table = nn.Parameter(table)

    @property
    def out_features(self) -> int:
        return self.levels * self.features

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` points in mm -> ``(N, levels * features)`` features.

        Per level and axis the two corner coordinates ``b, b + 1`` become index
        terms ``c * m`` (``m`` a stride or a prime) and weights ``1 - f, f``;
        the eight corners are their broadcast sum (dense) or xor (hashed) and
        product, without materialising ``(N, L, 8, 3)`` integer tensors.
        """
        check_shape(points, "N 3", "points")
        n = points.shape[0]
        x = (torch.minimum(torch.maximum(points, self.lower), self.upper) - self.lower).to(self.table.dtype)
        scaled = x[:, None, :] / self.cell_mm.to(x.dtype)[None, :, None]  # (N, L, 3)
        base_f = scaled.detach().floor()
        frac = scaled - base_f
        base = base_f.long()
        terms = torch.stack([base, base + 1], dim=-1) * self.multiplier[None, :, :, None]  # (N, L, 3, 2)
        weights = torch.stack([1 - frac, frac], dim=-1)  # (N, L, 3, 2)
        tx, ty, tz = terms[:, :, 0, :, None, None], terms[:, :, 1, None, :, None], terms[:, :, 2, None, None, :]
        dense = self.dense[None, :, None, None, None]
        index = torch.where(dense, tx + ty + tz, tx ^ ty ^ tz) & (self.table_size - 1)  # (N, L, 2, 2, 2)
        index = index.reshape(n, self.levels, 8) + (
            torch.arange(self.levels, device=points.device) * self.table_size)[None, :, None]
        w = (weights[:, :, 0, :, None, None] * weights[:, :, 1, None, :, None]
             * weights[:, :, 2, None, None, :]).reshape(n, self.levels, 8)
        values = self.table.reshape(-1, self.features)[index]  # (N, L, 8, F)
        return torch.einsum("nlcf,nlc->nlf", values, w).reshape(n, self.out_features)


class MaterialField(nn.Module):
    """Hash encoding + MLP: world points (mm) -> raw outputs (``outputs`` per point).

    Args:
        lower, upper: the box of the scene in mm (e.g. of the visible mesh).
        outputs: 6 for a material (:func:`material_from_raw`), 3 for baked radiance.
        levels, table_log2, features, coarsest_mm, finest_mm, hidden: see
            :class:`endo3d.pbr.config.FieldConfig`.
    """

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor, *, outputs: int = 6, levels: int = 12,
                 table_log2: int = 15, features: int = 2, coarsest_mm: float = 16.0, finest_mm: float = 0.25,
                 hidden: int = 32) -> None:
        super().__init__()
        self.encoding = HashEncoding(lower, upper, levels=levels, table_log2=table_log2, features=features,
                                     coarsest_mm=coarsest_mm, finest_mm=finest_mm)
        self.mlp = nn.Sequential(
            nn.Linear(self.encoding.out_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, outputs),
        )
        last = self.mlp[-1]
        nn.init.uniform_(last.weight, -1e-3, 1e-3)
        nn.init.zeros_(last.bias)
        self.outputs = outputs

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` world points in mm -> ``(N, outputs)`` raw values."""
        return self.mlp(self.encoding(points))

    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.encoding.table]

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.mlp.parameters())


def inverse_sigmoid(p: float) -> float:
    """``x`` with ``sigmoid(x) = p``, for ``0 < p < 1``."""
    return math.log(p / (1 - p))
