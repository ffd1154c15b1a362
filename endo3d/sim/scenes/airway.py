"""``airway``: a bronchoscope descending a branching bronchial tree.

The lumen is the inside of a smooth union of capsules, one per branch:
``phi(X) = smin_i(|X - axis_i(X)| - r_i(X))`` (polynomial smooth minimum of
blend radius ``smoothing_mm``), meshed by Surface Nets. The trachea
bifurcates ``generations`` times (Murray-like radius ratio, branch length
``length_ratio`` x diameter, branching planes turning 90 degrees per
generation). C-shaped cartilage rings: every ``ring_pitch_mm`` along a
branch the wall bulges in by ``ring_depth_mm``, except on the posterior
membranous wall; rings also whiten the mucosa (per-vertex overlay). The
camera follows the centreline from the trachea to a random leaf and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from endo3d.core.config import positive
from endo3d.sim.motion import Deformation
from endo3d.sim.noise import smoothstep
from endo3d.sim.scene import CameraSpec, DeformSpec, LightSpec, RenderSpec, Scene, max_displacement
from endo3d.sim.scenes.common import BuildArgs, CommonSpec, stream
from endo3d.sim.surface import Surface, TexturedMaterial
from endo3d.sim.surfacenets import sdf_gradient, surface_nets
from endo3d.sim.texture import PaletteSpec, make_texture
from endo3d.sim.trajectory import Curve, TubeFollower, TubePathSpec

POSTERIOR = np.array([0.0, -1.0, 0.0])


@dataclass(frozen=True)
class AirwaySpec(CommonSpec):
    """Scene file schema of ``kind = "airway"``; the defaults are the preset."""

    kind: Literal["airway"] = "airway"
    trachea_radius_mm: float = 8.0
    trachea_length_mm: float = 70.0
    generations: int = 3
    """Bifurcations below the trachea."""
    radius_ratio: float = 0.78
    asymmetry: float = 0.12
    """Relative difference of the two children's radii and angles."""
    length_ratio: float = 3.0
    """Branch length / branch diameter."""
    branch_angle_deg: float = 35.0
    ring_pitch_mm: float = 4.0
    ring_depth_mm: float = 0.2
    smoothing_mm: float = 2.0
    voxel_mm: float = 0.6
    path: TubePathSpec = TubePathSpec(speed_mm_s=5.0, start_mm=15.0, lateral=0.25, lookahead_mm=20.0,
                                      angular_deg=4.0, roll_deg=15.0)
    camera: CameraSpec = CameraSpec(hfov_deg=90.0, fov_mask_radius=0.92)
    lights: tuple[LightSpec, ...] = (
        LightSpec(position_mm=(-1.3, 0.0, 0.0), intensity=(120.0, 116.0, 108.0), falloff=1.0),
        LightSpec(position_mm=(1.3, 0.0, 0.0), intensity=(120.0, 116.0, 108.0), falloff=1.0),
    )
    palette: PaletteSpec = PaletteSpec(
        base_srgb=(0.88, 0.58, 0.55), mottling=0.1, vessel_srgb=(0.70, 0.20, 0.20), vessel_density=0.9,
        vessel_width_mm=0.2, deep_vessel_density=0.1, deep_vessel_width_mm=0.6, overlay_srgb=(0.96, 0.88, 0.84),
        roughness=0.4, wet_fraction=0.6, tile_mm=40.0)
    deform: DeformSpec = DeformSpec(breathing_mm=0.4, cardiac_mm=0.08, wavelength_mm=40.0)
    render: RenderSpec = RenderSpec(max_range_mm=150.0, shadows=False)
    """Light guides 1.3 mm from the lens shadow 0.1 % of the pixels: no shadow rays."""

    def problems(self) -> list[str]:
        out = super().problems() + self.path.problems()
        out += positive(self, "trachea_radius_mm", "trachea_length_mm", "length_ratio", "ring_pitch_mm",
                        "smoothing_mm", "voxel_mm", "branch_angle_deg")
        if not 0 <= self.generations <= 6 or not 0 < self.radius_ratio <= 1 or not 0 <= self.asymmetry < 1:
            out.append("generations must be in [0, 6], radius_ratio in (0, 1], asymmetry in [0, 1)")
        if self.render.max_range_mm <= 0:
            out.append("render.max_range_mm must be > 0")
        return out


@dataclass(frozen=True)
class Branch:
    start: np.ndarray
    end: np.ndarray
    radius: float
    rings: float  # cartilage ring strength, 0..1
    children: tuple[int, ...]


@dataclass(frozen=True)
class AirwaySDF:
    """The lumen's signed distance (negative inside), picklable."""

    branches: tuple[Branch, ...]
    smoothing: float
    ring_pitch: float
    ring_depth: float

    def branch_terms(self, b: Branch, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance to the branch wall, ring factor in [0, 1]) at points ``p`` (N, 3)."""
        axis = b.end - b.start
        length = np.linalg.norm(axis)
        axis = axis / length
        s = np.clip((p - b.start) @ axis, 0.0, length)
        q = p - (b.start + s[:, None] * axis)
        rho = np.linalg.norm(q, axis=1)
        back = POSTERIOR - axis * (POSTERIOR @ axis)
        back = back / max(np.linalg.norm(back), 1e-9)
        cos_back = (q @ back) / np.maximum(rho, 1e-9)
        c_shape = smoothstep((0.75 - cos_back) / 0.3)  # no cartilage on the posterior wall
        ring = (0.5 + 0.5 * np.cos(2 * np.pi * s / self.ring_pitch)) * c_shape * b.rings
        return rho - (b.radius - self.ring_depth * ring), ring

    def __call__(self, p: np.ndarray) -> np.ndarray:
        out = np.full(len(p), np.inf)
        for b in self.branches:
            out = smin(out, self.branch_terms(b, p)[0], self.smoothing)
        return out

    def rings(self, p: np.ndarray) -> np.ndarray:
        """Ring factor of the nearest branch at ``p``."""
        terms = [self.branch_terms(b, p) for b in self.branches]
        nearest = np.argmin(np.stack([d for d, _ in terms]), axis=0)
        return np.stack([r for _, r in terms])[nearest, np.arange(len(p))]


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: ``min(a, b) - h^2 k / 4``, ``h = max(k - |a - b|, 0) / k``."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(a), b, np.minimum(a, b) - h * h * k / 4.0)


def build_airway(spec: AirwaySpec, args: BuildArgs) -> Scene:
    rng = stream(args.seed, "geometry")
    branches = _tree(spec, rng)
    sdf = AirwaySDF(tuple(branches), spec.smoothing_mm, spec.ring_pitch_mm, spec.ring_depth_mm)
    vertices, faces = _mesh(sdf, branches, spec.voxel_mm)
    normals = sdf_gradient(sdf, vertices)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    overlay = sdf.rings(vertices)

    deform_fields = spec.deform.fields(stream(args.seed, "deform"))
    texture = make_texture(spec.palette, stream(args.seed, "texture"))
    airway = Surface("airway", vertices, faces, label=0,
                     material=TexturedMaterial(texture, "triplanar", spec.palette.overlay_srgb),
                     motion=Deformation(deform_fields, args.deform_scale), overlay=overlay, normals=normals,
                     max_displacement_mm=abs(args.deform_scale) * max_displacement(deform_fields))

    curve = _path(branches, rng)
    clearance = -sdf(curve.points)
    s_end = curve.length - max(spec.path.lookahead_mm * 0.5, 5.0)
    path = TubeFollower.create(curve, clearance, stream(args.seed, "path"), spec.path, s_end)
    camera = spec.camera.camera(args.width, args.height)
    return Scene("airway", [airway], camera, spec.camera.fov_mask(camera), path, spec.lights, spec.sensor,
                 spec.render, args.fps, args.num_frames, args.seed)


def _tree(spec: AirwaySpec, rng: np.random.Generator) -> list[Branch]:
    """Branches in depth-first order; branch 0 is the trachea along +z."""
    branches: list[Branch] = []

    def grow(start, direction, radius, plane_normal, generation) -> int:
        length = spec.trachea_length_mm if generation == 0 else spec.length_ratio * 2 * radius
        end = start + direction * length
        index = len(branches)
        branches.append(Branch(start, end, radius, 1.0 if generation == 0 else 0.6 ** generation, ()))
        kids = []
        if generation < spec.generations:
            side = np.cross(direction, plane_normal)
            side /= np.linalg.norm(side)
            for sign in (1.0, -1.0):
                skew = 1.0 + sign * spec.asymmetry * rng.uniform(0.5, 1.0)
                angle = np.radians(spec.branch_angle_deg) / skew
                child_dir = direction * np.cos(angle) + sign * side * np.sin(angle)
                twist = rng.uniform(-0.3, 0.3)
                next_plane = np.cos(twist) * side + np.sin(twist) * plane_normal
                kids.append(grow(end, child_dir, radius * spec.radius_ratio * skew, next_plane, generation + 1))
        branches[index] = Branch(start, end, radius, branches[index].rings, tuple(kids))
        return index

    grow(np.zeros(3), np.array([0.0, 0.0, 1.0]), spec.trachea_radius_mm, np.array([0.0, 1.0, 0.0]), 0)
    return branches


def _mesh(sdf: AirwaySDF, branches: list[Branch], voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample the SDF on a grid (only near each capsule) and run Surface Nets."""
    margin = 3.0 * voxel + sdf.smoothing
    lo = np.min([np.minimum(b.start, b.end) - b.radius for b in branches], axis=0) - margin
    hi = np.max([np.maximum(b.start, b.end) + b.radius for b in branches], axis=0) + margin
    shape = np.ceil((hi - lo) / voxel).astype(int) + 1
    grid = np.full(shape, np.inf)
    for b in branches:
        b_lo = np.floor((np.minimum(b.start, b.end) - b.radius - margin - lo) / voxel).astype(int).clip(0)
        b_hi = (np.ceil((np.maximum(b.start, b.end) + b.radius + margin - lo) / voxel).astype(int) + 1).clip(max=shape)
        axes = [lo[a] + voxel * np.arange(b_lo[a], b_hi[a]) for a in range(3)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        box = tuple(slice(b_lo[a], b_hi[a]) for a in range(3))
        grid[box] = smin(grid[box], sdf.branch_terms(b, pts)[0].reshape(grid[box].shape), sdf.smoothing)
    grid[np.isinf(grid)] = margin
    return surface_nets(grid, lo, voxel, sdf)


def _path(branches: list[Branch], rng: np.random.Generator) -> Curve:
    """Centreline from the trachea down to a random leaf, corners rounded."""
    points = [branches[0].start, branches[0].end]
    b = branches[0]
    while b.children:
        b = branches[b.children[rng.integers(len(b.children))]]
        points.append(b.end - (b.end - b.start) / np.linalg.norm(b.end - b.start) * b.radius)
    dense = []
    for p, q in zip(points[:-1], points[1:]):
        n = max(int(np.linalg.norm(q - p) / 0.5), 2)
        dense.append(p + (q - p) * np.linspace(0, 1, n, endpoint=False)[:, None])
    dense.append(points[-1][None])
    pts = np.concatenate(dense)
    kernel = np.exp(-0.5 * (np.arange(-20, 21) / 8.0) ** 2)
    kernel /= kernel.sum()
    padded = np.concatenate([np.repeat(pts[:1], 20, 0), pts, np.repeat(pts[-1:], 20, 0)])
    smooth = np.stack([np.convolve(padded[:, a], kernel, mode="valid") for a in range(3)], axis=1)
    return Curve.from_points(smooth, initial_normal=np.array([1.0, 0.0, 0.0]))
