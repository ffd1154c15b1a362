"""Scene surfaces: triangle meshes with material, label and motion.

A :class:`Surface` stores its rest mesh (world mm at t = 0 for tissue, the
instrument's own frame for rigid parts), smooth rest vertex normals, optional
texture coordinates (mm) and a per-vertex overlay weight. Its triangles are
sorted along a Morton (Z-order) curve of their centroids and grouped into
blocks of consecutive faces with bounding spheres, so blocks are compact and
a frame only rebuilds and ray-casts the blocks the camera can see (a 2 m
colon costs the same per frame as a 30 cm one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from endo3d.sim.motion import Motion, Static
from endo3d.sim.texture import Texture, srgb_to_linear

BLOCK_FACES = 2048


@dataclass(frozen=True)
class SurfacePoints:
    """Rest-space attributes of surface points hit by camera rays (N points)."""

    rest: torch.Tensor  # (N, 3) rest position, mm
    rest_normal: torch.Tensor  # (N, 3) unit
    uv: torch.Tensor | None  # (N, 2) texture coordinates, mm
    overlay: torch.Tensor | None  # (N,) overlay weight in [0, 1]
    footprint: torch.Tensor  # (N,) pixel footprint on the surface, mm

    @classmethod
    def from_attributes(cls, surface: "Surface", values: np.ndarray, footprint: np.ndarray) -> "SurfacePoints":
        """Split interpolated rows of ``surface.attributes`` ``(N, k)``."""
        t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        uv = t[:, 6:8] if surface.uv is not None else None
        overlay = t[:, -1] if surface.overlay is not None else None
        return cls(t[:, 0:3], t[:, 3:6], uv, overlay, torch.from_numpy(footprint.astype(np.float32)))


class SurfaceMaterial(Protocol):
    def evaluate(self, points: SurfacePoints) -> torch.Tensor:
        """``(N, 6)``: linear albedo RGB, roughness, specular F0, metallic."""
        ...


@dataclass(frozen=True)
class UniformMaterial:
    """One material everywhere (instrument steel, plastic)."""

    albedo_srgb: tuple[float, float, float]
    roughness: float
    specular: float = 0.04
    metallic: float = 0.0

    def evaluate(self, points: SurfacePoints) -> torch.Tensor:
        row = torch.tensor([*srgb_to_linear(self.albedo_srgb), self.roughness, self.specular, self.metallic],
                           dtype=torch.float32)
        return row.expand(points.rest.shape[0], 6).clone()


@dataclass(frozen=True)
class TexturedMaterial:
    """Procedural tissue: a :class:`Texture` looked up by texture coordinates
    (``mapping="uv"``) or triplanar in rest space (``mapping="triplanar"``),
    blended towards ``overlay_srgb`` by the per-vertex overlay weight."""

    texture: Texture
    mapping: str = "uv"
    overlay_srgb: tuple[float, float, float] | None = None

    def evaluate(self, points: SurfacePoints) -> torch.Tensor:
        if self.mapping == "uv":
            maps = self.texture.sample(points.uv, points.footprint)
        else:
            maps = self.texture.sample_triplanar(points.rest, points.rest_normal, points.footprint)
        if self.overlay_srgb is not None and points.overlay is not None:
            target = torch.tensor(srgb_to_linear(self.overlay_srgb), dtype=torch.float32)
            w = points.overlay[:, None]
            maps[:, :3] = maps[:, :3] + (target - maps[:, :3]) * w
        metallic = torch.zeros((maps.shape[0], 1), dtype=torch.float32)
        return torch.cat([maps, metallic], dim=1)


@dataclass(frozen=True)
class ViewCone:
    """What one frame's rays can reach: a cone from ``eye`` around ``axis``.

    ``half_angle`` (rad) covers every camera ray; ``margin`` (mm) widens it
    for rays that do not start at the eye: a shadow ray runs from a point in
    the cone to a light within ``margin`` of the eye, so every point of it
    lies within ``margin`` of the cone. ``reach`` (mm) is the ray length
    (max range, plus the margin).
    """

    eye: np.ndarray
    axis: np.ndarray
    half_angle: float
    margin: float
    reach: float

    def meets(self, centers: np.ndarray, radii: np.ndarray) -> np.ndarray:
        """Which spheres ``(centers (K, 3), radii (K,))`` may intersect the
        widened cone within reach (a conservative test)."""
        offset = centers - self.eye
        dist = np.linalg.norm(offset, axis=1)
        r = radii + self.margin
        inside = dist <= r
        within = dist - r <= self.reach
        if self.half_angle >= np.pi:
            return within
        angle = np.arccos(np.clip((offset @ self.axis) / np.maximum(dist, 1e-12), -1.0, 1.0))
        spread = np.arcsin(np.clip(r / np.maximum(dist, 1e-12), 0.0, 1.0))
        return within & (inside | (angle - spread <= self.half_angle))


def morton_order(points: np.ndarray, bits: int = 10) -> np.ndarray:
    """Permutation sorting ``points`` (N, 3) along a 3-D Z-order curve, so
    that consecutive points are close in space."""
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = points.min(axis=0), points.max(axis=0)
    q = ((points - lo) / np.maximum(hi - lo, 1e-12) * (2**bits - 1)).astype(np.uint64)
    code = np.zeros(len(points), dtype=np.uint64)
    for bit in range(bits):
        for axis in range(3):
            code |= ((q[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return np.argsort(code, kind="stable")


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals ``(V, 3)``, following the face winding."""
    v = vertices.astype(np.float64)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        for axis in range(3):
            n[:, axis] += np.bincount(faces[:, k], weights=fn[:, axis], minlength=len(v))
    return (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class Surface:
    """A triangle mesh that the simulator renders.

    Attributes:
        name: for messages and metadata.
        vertices: ``(V, 3)`` float32 rest positions, mm.
        faces: ``(F, 3)`` int32 vertex indices.
        label: mask label, 0 = tissue, 1..254 = instrument id.
        material: how it looks.
        motion: how it moves.
        uv: ``(V, 2)`` texture coordinates in mm, or None.
        overlay: ``(V,)`` overlay weights in [0, 1], or None.
        normals: ``(V, 3)`` rest vertex normals (computed when not given).
        max_displacement_mm: bound on how far any point moves from rest
            (tissue) used to cull blocks safely; instruments are never culled.
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    label: int
    material: SurfaceMaterial
    motion: Motion = field(default_factory=Static)
    uv: np.ndarray | None = None
    overlay: np.ndarray | None = None
    normals: np.ndarray | None = None
    max_displacement_mm: float = 0.0
    block_centers: np.ndarray = field(init=False)
    block_radii: np.ndarray = field(init=False)
    attributes: np.ndarray = field(init=False)
    """``(V, 6 | 8 | 9)`` float32 per-vertex table interpolated in one gather:
    rest position, rest normal, then uv and overlay when present."""

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32)
        self.faces = np.ascontiguousarray(self.faces[morton_order(self.vertices[self.faces].mean(axis=1))],
                                          dtype=np.int32)
        if self.normals is None:
            self.normals = vertex_normals(self.vertices, self.faces)
        columns = [self.vertices, self.normals]
        if self.uv is not None:
            columns.append(self.uv)
        if self.overlay is not None:
            columns.append(self.overlay[:, None])
        self.attributes = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype=np.float32)
        starts = np.arange(0, len(self.faces), BLOCK_FACES)
        centers, radii = [], []
        for a in starts:
            p = self.vertices[self.faces[a:a + BLOCK_FACES].ravel()]
            lo, hi = p.min(axis=0), p.max(axis=0)
            centers.append((lo + hi) / 2)
            radii.append(np.linalg.norm(hi - lo) / 2 + self.max_displacement_mm)
        self.block_centers = np.array(centers, dtype=np.float64).reshape(-1, 3)
        self.block_radii = np.array(radii, dtype=np.float64)

    @property
    def is_tissue(self) -> bool:
        return self.label == 0

    def faces_within(self, view: "ViewCone") -> np.ndarray | None:
        """Indices of faces in blocks that may meet ``view``; None when that is
        every face (no culling needed)."""
        if not self.is_tissue or len(self.block_radii) == 1:
            return None
        near = view.meets(self.block_centers, self.block_radii)
        if near.all():
            return None
        blocks = np.nonzero(near)[0]
        return np.concatenate([np.arange(b * BLOCK_FACES, min((b + 1) * BLOCK_FACES, len(self.faces))) for b in blocks]
                              ).astype(np.int64) if len(blocks) else np.zeros(0, dtype=np.int64)
