"""Procedural tissue appearance: periodic material maps with mip levels.

A :class:`Texture` holds five channels over a square tile of ``tile_mm``
millimetres that repeats in both directions: linear albedo (RGB), perceptual
roughness and specular reflectance ``F0``. Surfaces look it up at texture
coordinates in millimetres, so the appearance is attached to the tissue and
moves with it. Lookups pick a mip level from the pixel footprint (trilinear
filtering), so far-away mucosa does not alias.

The maps are generated from a :class:`PaletteSpec`: mottled base colour,
optional patches of a second tissue (fat), a network of superficial vessels
(thin, red, sharp) over deep vessels (wide, blue-purple, blurred), and wet
areas that are smoother and more specular.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from endo3d.core.config import positive
from endo3d.render.response import srgb_decode
from endo3d.sim.noise import periodic_blur, periodic_field, smoothstep

CHANNELS = 5  # albedo r g b, roughness, specular F0


def srgb_to_linear(c: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """sRGB values in [0, 1] to linear, as numpy float64 (:func:`srgb_decode`)."""
    return srgb_decode(torch.as_tensor(np.asarray(c, dtype=np.float64))).numpy()


@dataclass(frozen=True)
class PaletteSpec:
    """How a tissue looks. Colours are sRGB in [0, 1]; lengths in mm."""

    base_srgb: tuple[float, float, float] = (0.86, 0.53, 0.46)
    """Mucosa base colour."""
    mottling: float = 0.12
    """Strength of low-frequency colour variation (log-albedo std)."""
    patch_srgb: tuple[float, float, float] = (0.90, 0.78, 0.45)
    """Colour of patches of a second tissue (e.g. fat)."""
    patch_fraction: float = 0.0
    """Area fraction covered by patches."""
    vessel_srgb: tuple[float, float, float] = (0.55, 0.10, 0.10)
    """Superficial vessel colour."""
    vessel_density: float = 0.6
    """Superficial vessel trees per cm^2."""
    vessel_width_mm: float = 0.35
    """Width of the largest superficial vessels."""
    deep_vessel_srgb: tuple[float, float, float] = (0.50, 0.28, 0.40)
    """Deep (submucosal) vessel colour."""
    deep_vessel_density: float = 0.15
    """Deep vessel trees per cm^2."""
    deep_vessel_width_mm: float = 1.2
    """Width of the largest deep vessels."""
    overlay_srgb: tuple[float, float, float] = (0.95, 0.86, 0.80)
    """Colour that per-vertex overlay weights blend towards (e.g. cartilage)."""
    roughness: float = 0.45
    """Perceptual roughness of dry mucosa."""
    wet_roughness: float = 0.18
    """Perceptual roughness of wet (mucus-covered) areas."""
    wet_fraction: float = 0.5
    """Area fraction that is wet."""
    specular: float = 0.028
    """Specular reflectance F0 of dry tissue (water is 0.02)."""
    wet_specular: float = 0.045
    """F0 of wet areas."""
    tile_mm: float = 64.0
    """Physical size of the repeating texture tile."""
    resolution: int = 1024
    """Texels along a tile side (a power of two)."""

    def problems(self) -> list[str]:
        out = positive(self, "tile_mm", "roughness", "wet_roughness", prefix="palette.")
        n = self.resolution
        if n < 8 or n > 8192 or n & (n - 1):
            out.append(f"palette.resolution must be a power of two in [8, 8192], got {n}")
        colours = (self.base_srgb, self.patch_srgb, self.vessel_srgb, self.deep_vessel_srgb, self.overlay_srgb)
        if any(not 0 <= c <= 1 for colour in colours for c in colour):
            out.append("palette colours must be sRGB values in [0, 1]")
        if not (0 <= self.patch_fraction <= 1 and 0 <= self.wet_fraction <= 1):
            out.append("palette fractions must be in [0, 1]")
        return out


@dataclass
class Texture:
    """Periodic material maps and their mip pyramid.

    Attributes:
        levels: per mip level an ``(n, n, 5)`` float32 tensor (channels last,
            so one bilinear tap gathers five contiguous values); level 0 is
            the full tile, each next level halves ``n`` by 2x2 averaging.
        tile_mm: physical size of the tile.
    """

    levels: list[torch.Tensor]
    tile_mm: float

    @property
    def texel_mm(self) -> float:
        return self.tile_mm / self.levels[0].shape[0]

    @classmethod
    def from_maps(cls, maps: np.ndarray, tile_mm: float) -> "Texture":
        """Build from ``(n, n, 5)`` maps; ``n`` must be a power of two."""
        tile = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
        levels = [tile]
        while tile.shape[0] > 1:
            tile = F.avg_pool2d(tile.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0).contiguous()
            levels.append(tile)
        return cls(levels, tile_mm)

    def sample(self, uv_mm: torch.Tensor, footprint_mm: torch.Tensor) -> torch.Tensor:
        """Trilinear lookup.

        Args:
            uv_mm: ``(N, 2)`` texture coordinates in mm (u along columns).
            footprint_mm: ``(N,)`` size of the pixel's footprint on the
                surface in mm; picks the mip level ``log2(footprint / texel)``.

        Returns:
            ``(N, 5)``: linear albedo RGB, roughness, specular F0.
        """
        n = uv_mm.shape[0]
        out = torch.empty((n, CHANNELS), dtype=torch.float32)
        if n == 0:
            return out
        top = len(self.levels) - 1
        lod = torch.log2(torch.clamp(footprint_mm * (1.0 / self.texel_mm), min=1.0)).clamp_(max=top)
        base = lod.long()
        frac = (lod - base)[:, None]
        # Visit the points level by level: one sort, then contiguous slices.
        order = torch.argsort(base)
        counts = torch.bincount(base, minlength=top + 1).tolist()
        uv_sorted, frac_sorted = uv_mm[order], frac[order]
        sorted_out = torch.empty((n, CHANNELS), dtype=torch.float32)
        start = 0
        for level, count in enumerate(counts):
            if count == 0:
                continue
            part = slice(start, start + count)
            lo = self._sample_level(level, uv_sorted[part])
            if level < top:
                lo = lo + (self._sample_level(level + 1, uv_sorted[part]) - lo) * frac_sorted[part]
            sorted_out[part] = lo
            start += count
        out[order] = sorted_out
        return out

    def sample_triplanar(
        self, points_mm: torch.Tensor, normals: torch.Tensor, footprint_mm: torch.Tensor
    ) -> torch.Tensor:
        """Triplanar lookup for surfaces without texture coordinates.

        Projects ``points_mm`` ``(N, 3)`` onto the three axis planes and
        blends the lookups with weights ``|n_i|^4 / sum_j |n_j|^4`` from the
        surface ``normals`` ``(N, 3)``; weights below 0.02 are dropped (and
        the rest renormalised), so most points need one or two lookups.
        """
        w = normals.abs() ** 4
        w = w / w.sum(dim=1, keepdim=True).clamp(min=1e-12)
        w = torch.where(w < 0.02, 0.0, w)
        w = w / w.sum(dim=1, keepdim=True)
        out = torch.zeros((points_mm.shape[0], CHANNELS), dtype=torch.float32)
        for axis, (a, b) in enumerate(((1, 2), (2, 0), (0, 1))):
            idx = torch.nonzero(w[:, axis] > 0).squeeze(1)
            uv = points_mm[idx][:, [a, b]]
            out[idx] += w[idx, axis, None] * self.sample(uv, footprint_mm[idx])
        return out

    def _sample_level(self, level: int, uv_mm: torch.Tensor) -> torch.Tensor:
        """Bilinear lookup with wrap-around; texel (i, j) has its centre at
        ((j + 0.5), (i + 0.5)) * texel size in (u, v). One gather of the four
        taps, ``(N, 4, 5)``, then their weighted sum."""
        tex = self.levels[level]
        n = tex.shape[0]
        c = uv_mm * (n / self.tile_mm) - 0.5
        c0 = c.floor()
        w = c - c0
        i0 = torch.remainder(c0.long(), n)
        i1 = torch.where(i0 == n - 1, 0, i0 + 1)
        r0, r1 = i0[:, 1] * n, i1[:, 1] * n
        taps = torch.stack([r0 + i0[:, 0], r0 + i1[:, 0], r1 + i0[:, 0], r1 + i1[:, 0]], dim=1)
        wu, wv = w[:, 0], w[:, 1]
        weights = torch.stack([(1 - wu) * (1 - wv), wu * (1 - wv), (1 - wu) * wv, wu * wv], dim=1)
        return torch.einsum("nkc,nk->nc", tex.view(n * n, CHANNELS)[taps], weights)


def make_texture(palette: PaletteSpec, rng: np.random.Generator) -> Texture:
    """Generate the material maps of ``palette`` (seeded by ``rng``)."""
    n = palette.resolution
    if n < 8 or n & (n - 1):
        raise ValueError(f"texture resolution must be a power of two >= 8, got {n}")
    texel = palette.tile_mm / n

    def field(min_mm: float, max_mm: float, slope: float = 1.0) -> np.ndarray:
        return periodic_field(n, rng, max(min_mm / texel, 2.0), max_mm / texel, slope)

    base = srgb_to_linear(palette.base_srgb)
    # Mottling: redder where blood perfusion is higher, i.e. green and blue vary more.
    mottle = field(1.0, 24.0)[..., None] * palette.mottling * np.array([0.6, 1.0, 1.2])
    albedo = base * np.exp(mottle + 0.04 * field(0.15, 1.0)[..., None])
    if palette.patch_fraction > 0:
        patch = _coverage_mask(field(6.0, 40.0, 1.5), palette.patch_fraction, softness=1.0)
        patch_color = srgb_to_linear(palette.patch_srgb) * np.exp(0.08 * field(1.0, 8.0))[..., None]
        albedo = albedo + (patch_color - albedo) * patch[..., None]
    for density, width, color, strength, blur in (
        (palette.deep_vessel_density, palette.deep_vessel_width_mm, palette.deep_vessel_srgb, 0.45, 0.35),
        (palette.vessel_density, palette.vessel_width_mm, palette.vessel_srgb, 0.85, 0.0),
    ):
        if density <= 0:
            continue
        cover = vessel_network(n, texel, rng, density, width)
        if blur > 0:
            cover = periodic_blur(cover, blur / texel)
        albedo = albedo + (srgb_to_linear(color) - albedo) * (strength * cover)[..., None]
    wet = _coverage_mask(field(2.0, 30.0, 1.5), palette.wet_fraction, softness=0.3)
    roughness = palette.roughness * np.exp(0.12 * field(0.5, 10.0))
    roughness = roughness + (palette.wet_roughness - roughness) * wet
    specular = palette.specular + (palette.wet_specular - palette.specular) * wet
    maps = np.concatenate(
        [np.clip(albedo, 0.0, 1.0), np.clip(roughness, 0.02, 1.0)[..., None], specular[..., None]], axis=-1
    )
    return Texture.from_maps(maps.astype(np.float32), palette.tile_mm)


def _coverage_mask(field: np.ndarray, fraction: float, softness: float) -> np.ndarray:
    """Smooth 0..1 mask covering about ``fraction`` of the tile where ``field`` is high."""
    if fraction <= 0:
        return np.zeros_like(field)
    if fraction >= 1:
        return np.ones_like(field)
    threshold = np.quantile(field, 1.0 - fraction)
    return smoothstep((field - threshold) / softness * 0.5 + 0.5)


def vessel_network(
    n: int, texel_mm: float, rng: np.random.Generator, density_per_cm2: float, max_width_mm: float
) -> np.ndarray:
    """Coverage ``(n, n)`` in [0, 1] of a periodic network of branching vessels.

    Each tree starts at a random point with a random heading and width in
    ``[0.6, 1] * max_width_mm``; it grows in steps of about two widths with a
    random-walk heading, tapers slowly, and branches (about once per 4 mm)
    into a child of 0.7 times its width at 25-65 degrees. A branch ends below
    a width of 0.05 mm or after a length drawn from its width. Vessels are
    drawn as chains of discs with the cross-section of a cylinder seen from
    above, ``sqrt(1 - (d / r)^2)``, anti-aliased at the edge.
    """
    area_cm2 = (n * texel_mm / 10.0) ** 2
    n_trees = rng.poisson(density_per_cm2 * area_cm2)
    centers: list[np.ndarray] = []
    radii: list[np.ndarray] = []
    min_width = 0.05
    for _ in range(n_trees):
        stack = [(rng.uniform(0, n * texel_mm, 2), rng.uniform(0, 2 * np.pi), max_width_mm * rng.uniform(0.6, 1.0))]
        budget = 400
        while stack and budget > 0:
            p, heading, width = stack.pop()
            length = width * rng.uniform(30.0, 60.0) + 2.0
            travelled = 0.0
            while travelled < length and width >= min_width and budget > 0:
                budget -= 1
                step = max(2.0 * width, 0.15)
                heading += rng.normal(0.0, 0.35) * np.sqrt(step)
                q = p + step * np.array([np.cos(heading), np.sin(heading)])
                k = max(int(np.ceil(step / max(width / 3.0, texel_mm / 2.0))), 1)
                s = (np.arange(k) + 0.5)[:, None] / k
                centers.append(p + (q - p) * s)
                radii.append(np.full(k, width / 2.0))
                p, travelled = q, travelled + step
                width *= 0.985 ** step
                if rng.random() < step / 4.0:
                    side = rng.choice([-1.0, 1.0])
                    stack.append((p.copy(), heading + side * np.radians(rng.uniform(25, 65)), width * 0.7))
    cover = np.zeros(n * n, dtype=np.float32)
    if not centers:
        return cover.reshape(n, n)
    c = np.concatenate(centers) / texel_mm  # texel units, x = column
    r = np.concatenate(radii) / texel_mm
    classes = np.maximum(np.ceil(r + 1.0).astype(int), 1)
    for reach in np.unique(classes):
        sel = classes == reach
        oy, ox = np.mgrid[-reach:reach + 1, -reach:reach + 1]
        ox, oy = ox.ravel(), oy.ravel()
        cx, cy, rr = c[sel, 0], c[sel, 1], r[sel]
        px = np.floor(cx)[:, None] + ox[None, :]
        py = np.floor(cy)[:, None] + oy[None, :]
        d = np.hypot(px + 0.5 - cx[:, None], py + 0.5 - cy[:, None])
        rad = np.maximum(rr[:, None], 0.5)
        profile = np.sqrt(np.clip(1.0 - (d / (rad + 0.5)) ** 2, 0.0, 1.0))
        edge = np.clip(rad + 0.5 - d, 0.0, 1.0)
        value = (profile * edge * np.minimum(rr[:, None] * 2.0, 1.0)).ravel()
        flat = (py.astype(np.int64) % n * n + px.astype(np.int64) % n).ravel()
        keep = value > 0
        np.maximum.at(cover, flat[keep], value[keep].astype(np.float32))
    return cover.reshape(n, n)
