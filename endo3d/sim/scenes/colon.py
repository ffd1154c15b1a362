"""``colon``: a curved, folded lumen seen by a colonoscope moving along it.

Geometry, in mm, along arc length ``s`` of a centreline and angle ``theta``
around it:

- centreline: integrated curvature ``dT/ds = k1(s) N1 + k2(s) N2`` in a
  parallel-transport frame, ``k`` smooth random with typical bend radius
  ``bend_radius_mm``;
- radius ``R(s) = radius_mm (1 + radius_variation g(s))``;
- three teniae coli pull the wall in: ``R (1 - teniae cos 3(theta - theta0(s)))``;
- semilunar haustral folds every ``fold_spacing_mm`` (jittered): inward
  ridges of Gaussian profile (width ``fold_width_mm``) and depth
  ``fold_depth R``, deepest midway between teniae and vanishing at them;
- mucosal relief of ``relief_mm``.

The tube is closed by caps at both ends. Texture coordinates are
``(s, theta R_uv)`` mm with the circumference mapped to whole texture tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from endo3d.core.config import positive
from endo3d.sim.motion import Deformation
from endo3d.sim.noise import SmoothSignal
from endo3d.sim.scene import CameraSpec, DeformSpec, LightSpec, RenderSpec, Scene, max_displacement
from endo3d.sim.scenes.common import BuildArgs, CommonSpec, Relief, grid_faces, stream
from endo3d.sim.surface import Surface, TexturedMaterial, vertex_normals
from endo3d.sim.texture import PaletteSpec, make_texture
from endo3d.sim.trajectory import Curve, TubeFollower, TubePathSpec


@dataclass(frozen=True)
class ColonSpec(CommonSpec):
    """Scene file schema of ``kind = "colon"``; the defaults are the preset."""

    kind: Literal["colon"] = "colon"
    radius_mm: float = 16.0
    radius_variation: float = 0.15
    bend_radius_mm: float = 90.0
    fold_spacing_mm: float = 24.0
    fold_depth: float = 0.3
    fold_width_mm: float = 2.6
    teniae: float = 0.07
    relief_mm: float = 0.15
    edge_mm: float = 1.0
    """Target mesh edge length (a deforming mesh's BVH is rebuilt every frame:
    its cost grows with the triangles in view)."""
    path: TubePathSpec = TubePathSpec()
    camera: CameraSpec = CameraSpec(hfov_deg=100.0, fov_mask_radius=0.95)
    lights: tuple[LightSpec, ...] = (
        LightSpec(position_mm=(-3.5, 0.0, 0.0), intensity=(900.0, 870.0, 800.0), falloff=1.5),
        LightSpec(position_mm=(3.5, 0.0, 0.0), intensity=(900.0, 870.0, 800.0), falloff=1.5),
    )
    palette: PaletteSpec = PaletteSpec(tile_mm=50.0)
    deform: DeformSpec = DeformSpec(breathing_mm=0.8, cardiac_mm=0.15, wavelength_mm=50.0)
    render: RenderSpec = RenderSpec(max_range_mm=200.0)

    def problems(self) -> list[str]:
        out = super().problems() + self.path.problems()
        out += positive(self, "radius_mm", "bend_radius_mm", "fold_spacing_mm", "fold_width_mm", "edge_mm")
        if self.render.max_range_mm <= 0:
            out.append("render.max_range_mm must be > 0")
        return out


def build_colon(spec: ColonSpec, args: BuildArgs) -> Scene:
    rng = stream(args.seed, "geometry")
    far = spec.render.max_range_mm
    s_end = spec.path.start_mm + spec.path.speed_mm_s * args.duration_s + 10.0
    length = s_end + far + 10.0
    curve = _centreline(rng, length, spec.bend_radius_mm, spec.edge_mm)
    s = curve.s
    radius = spec.radius_mm * (1.0 + spec.radius_variation * np.clip(SmoothSignal.create(rng, 60.0, 200.0)(s), -1.5, 1.5))

    cols = max(int(round(2 * np.pi * spec.radius_mm / spec.edge_mm)), 24)
    theta = np.linspace(0.0, 2 * np.pi, cols + 1)  # last column duplicates the first (texture seam)
    S, TH = np.meshgrid(s, theta, indexing="ij")
    twist = SmoothSignal.create(rng, 100.0, 400.0)(s)[:, None] * 0.5
    tenia = np.cos(3.0 * (TH - twist))
    r = radius[:, None] * (1.0 - spec.teniae * tenia)
    haustra = (0.5 * (1.0 - tenia)) ** 1.5
    for s_k in _fold_positions(rng, length, spec.fold_spacing_mm):
        depth = spec.fold_depth * rng.uniform(0.6, 1.2)
        r -= depth * radius[:, None] * np.exp(-(((S - s_k) / spec.fold_width_mm) ** 2)) * haustra
    r_uv = spec.palette.tile_mm * max(1, round(2 * np.pi * spec.radius_mm / spec.palette.tile_mm)) / (2 * np.pi)
    r += Relief.create(rng, spec.relief_mm)(S, TH * r_uv)
    ring = np.cos(TH)[..., None] * curve.normals[:, None, :] + np.sin(TH)[..., None] * curve.binormals[:, None, :]
    wall = curve.points[:, None, :] + r[..., None] * ring
    wall[:, -1] = wall[:, 0]
    rows = len(s)
    cw = cols + 1
    vertices = wall.reshape(-1, 3)
    uv = np.stack([S, TH * r_uv], axis=-1).reshape(-1, 2)
    faces = grid_faces(rows, cw)

    # Caps: a fan from the centreline point at each end.
    start_c, end_c = len(vertices), len(vertices) + 1
    vertices = np.concatenate([vertices, curve.points[[0, -1]]])
    uv = np.concatenate([uv, [[0.0, 0.0], [s[-1], 0.0]]])
    j = np.arange(cols)
    cap0 = np.stack([np.full(cols, start_c), j + 1, j], -1)
    cap1 = np.stack([np.full(cols, end_c), (rows - 1) * cw + j, (rows - 1) * cw + j + 1], -1)
    faces = np.concatenate([faces, cap0, cap1]).astype(np.int32)

    # Smooth normals over the welded seam: duplicate column -> first column.
    weld = np.arange(len(vertices))
    seam = np.arange(rows) * cw + cols
    weld[seam] = seam - cols
    normals = vertex_normals(vertices, weld[faces])
    normals[seam] = normals[seam - cols]

    deform_fields = spec.deform.fields(stream(args.seed, "deform"))
    motion = Deformation(deform_fields, args.deform_scale)
    texture = make_texture(spec.palette, stream(args.seed, "texture"))
    colon = Surface("colon", vertices, faces, label=0, material=TexturedMaterial(texture, "uv"), motion=motion,
                    uv=uv, normals=normals, max_displacement_mm=abs(args.deform_scale) * max_displacement(deform_fields))
    path = TubeFollower.create(curve, radius, stream(args.seed, "path"), spec.path, s_end)
    camera = spec.camera.camera(args.width, args.height)
    return Scene("colon", [colon], camera, spec.camera.fov_mask(camera), path, spec.lights, spec.sensor,
                 spec.render, args.fps, args.num_frames, args.seed)


def _centreline(rng: np.random.Generator, length: float, bend_radius: float, step: float) -> Curve:
    """Integrate ``dT/ds = k1 N1 + k2 N2`` with smooth random ``k``."""
    n = int(np.ceil(length / step)) + 1
    s = np.linspace(0.0, length, n)
    k1 = SmoothSignal.create(rng, 80.0, 250.0, zero_at_origin=True)(s) / bend_radius / np.sqrt(2)
    k2 = SmoothSignal.create(rng, 80.0, 250.0, zero_at_origin=True)(s) / bend_radius / np.sqrt(2)
    t, n1 = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])
    n2 = np.cross(t, n1)
    points = np.zeros((n, 3))
    ds = s[1] - s[0]
    for i in range(1, n):
        points[i] = points[i - 1] + t * ds
        omega = (k1[i - 1] * n2 - k2[i - 1] * n1) * ds  # rotation turning t towards k1 n1 + k2 n2
        t, n1, n2 = (_rotate(v, omega) for v in (t, n1, n2))
    return Curve.from_points(points, initial_normal=np.array([1.0, 0.0, 0.0]))


def _rotate(v: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Rodrigues rotation of ``v`` by the rotation vector ``omega``."""
    angle = np.linalg.norm(omega)
    if angle < 1e-15:
        return v
    k = omega / angle
    return v * np.cos(angle) + np.cross(k, v) * np.sin(angle) + k * np.dot(k, v) * (1 - np.cos(angle))


def _fold_positions(rng: np.random.Generator, length: float, spacing: float) -> list[float]:
    out, s = [], rng.uniform(0.3, 1.0) * spacing
    while s < length:
        out.append(s)
        s += spacing * rng.uniform(0.75, 1.25)
    return out


