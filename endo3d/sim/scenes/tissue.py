"""``tissue``: open laparoscopic tissue under a near-static laparoscope.

World frame: the tissue is a height field ``z = h(x, y)`` (mm, z up): a few
smooth organ lobes, mid-scale undulation and fine relief, over a grid that
is finest under the camera (``edge_mm``) and coarser towards the rim (the
mapping ``x = c a + d a^3`` of a uniform ``a`` in [-1, 1]). The laparoscope
hovers ``distance_mm`` from the view centre, tilted ``tilt_deg`` from the
vertical, with slow drift and tremor. Breathing moves the tissue mostly up
and down; a grasper (``endo3d.sim.instrument``) enters from a trocar,
grasps, pulls and releases the tissue, and is labelled 1 in ``mask/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from endo3d.core.config import positive
from endo3d.sim.instrument import GraspPull, GraspScript, InstrumentPart, InstrumentSpec, cylinder, jaw
from endo3d.sim.motion import Deformation, Rigid
from endo3d.sim.noise import SmoothSignal
from endo3d.sim.scene import CameraSpec, DeformSpec, LightSpec, RenderSpec, Scene, max_displacement
from endo3d.sim.scenes.common import BuildArgs, CommonSpec, Relief, grid_faces, stream
from endo3d.sim.surface import Surface, TexturedMaterial, UniformMaterial
from endo3d.sim.texture import PaletteSpec, make_texture
from endo3d.sim.trajectory import Hovering

UP = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class TissueSpec(CommonSpec):
    """Scene file schema of ``kind = "tissue"``; the defaults are the preset."""

    kind: Literal["tissue"] = "tissue"
    half_extent_mm: float = 150.0
    """The tissue spans [-half, half]^2 around the view centre."""
    edge_mm: float = 0.9
    """Mesh edge length under the camera (coarser towards the rim); finer
    detail is in the texture and the interpolated normals."""
    vertices_per_side: int = 181
    lobes: int = 4
    lobe_height_mm: float = 12.0
    lobe_width_mm: float = 35.0
    undulation_mm: float = 2.0
    relief_mm: float = 0.25
    distance_mm: float = 90.0
    """Camera to view centre."""
    tilt_deg: float = 30.0
    """Viewing direction from the vertical."""
    drift_mm: float = 1.5
    tremor_deg: float = 0.3
    instrument: InstrumentSpec = InstrumentSpec()
    camera: CameraSpec = CameraSpec(hfov_deg=70.0)
    lights: tuple[LightSpec, ...] = (LightSpec(intensity=(9000.0, 8700.0, 8100.0), falloff=1.0),)
    palette: PaletteSpec = PaletteSpec(
        base_srgb=(0.55, 0.22, 0.17), mottling=0.15, patch_srgb=(0.80, 0.64, 0.44), patch_fraction=0.12,
        vessel_srgb=(0.42, 0.08, 0.08), vessel_density=0.25, vessel_width_mm=0.5, deep_vessel_density=0.08,
        roughness=0.4, wet_fraction=0.6, tile_mm=64.0)
    deform: DeformSpec = DeformSpec(breathing_mm=2.0, cardiac_mm=0.25, wavelength_mm=150.0, vertical_bias=0.85)
    render: RenderSpec = RenderSpec(max_range_mm=400.0, shadows=False)
    """A light on the optical axis casts no shadow the camera can see: no shadow rays."""

    def problems(self) -> list[str]:
        out = super().problems() + (self.instrument.problems() if self.instrument.enabled else [])
        out += positive(self, "half_extent_mm", "edge_mm", "distance_mm", "lobe_width_mm")
        if self.vertices_per_side < 2 or self.lobes < 0:
            out.append(f"vertices_per_side must be >= 2 and lobes >= 0, got {self.vertices_per_side}, {self.lobes}")
        if self.render.max_range_mm <= 0:
            out.append("render.max_range_mm must be > 0")
        return out


@dataclass(frozen=True)
class HeightField:
    """``h(x, y)`` in mm: Gaussian lobes + smooth undulation (picklable)."""

    centers: np.ndarray  # (L, 2)
    heights: np.ndarray  # (L,)
    widths: np.ndarray  # (L,)
    undulation: tuple[SmoothSignal, SmoothSignal]
    undulation_mm: float

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.asarray(x, float), np.asarray(y, float)
        h = np.zeros(np.broadcast(x, y).shape)
        for (cx, cy), a, w in zip(self.centers, self.heights, self.widths):
            h += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * w**2))
        fx, fy = self.undulation
        return h + self.undulation_mm * 0.5 * (fx(x + 0.3 * y) + fy(y - 0.3 * x))


def build_tissue(spec: TissueSpec, args: BuildArgs) -> Scene:
    rng = stream(args.seed, "geometry")
    lobes = spec.lobes
    height = HeightField(
        centers=rng.uniform(-60.0, 60.0, (lobes, 2)),
        heights=spec.lobe_height_mm * rng.uniform(0.5, 1.0, lobes),
        widths=spec.lobe_width_mm * rng.uniform(0.7, 1.3, lobes),
        undulation=(SmoothSignal.create(rng, 25.0, 80.0), SmoothSignal.create(rng, 25.0, 80.0)),
        undulation_mm=spec.undulation_mm)
    n = spec.vertices_per_side
    c = spec.edge_mm * (n - 1) / 2.0
    d = max(spec.half_extent_mm - c, 0.0)
    a = np.linspace(-1.0, 1.0, n)
    axis = c * a + d * a**3
    X, Y = np.meshgrid(axis, axis)  # rows along y
    relief = Relief.create(rng, spec.relief_mm)
    Z = height(X, Y) - height(0.0, 0.0) + relief(X, Y)
    vertices = np.stack([X, Y, Z], axis=-1).reshape(-1, 3)
    faces = grid_faces(n, n)[:, [0, 2, 1]]  # counter-clockwise seen from above: normals up
    uv = np.stack([X, Y], axis=-1).reshape(-1, 2)

    deform_fields = spec.deform.fields(stream(args.seed, "deform"), UP)
    surfaces = []
    reach = max_displacement(deform_fields)
    instrument_parts = []
    if spec.instrument.enabled:
        script = _grasp_script(spec, args, height, stream(args.seed, "instrument"))
        deform_fields += (GraspPull(script, spec.instrument.pull_sigma_mm),)
        reach += float(np.linalg.norm(spec.instrument.pull_mm))
        instrument_parts = _instrument(spec.instrument, script)
    texture = make_texture(spec.palette, stream(args.seed, "texture"))
    surfaces.append(Surface("tissue", vertices, faces, label=0, material=TexturedMaterial(texture, "uv"),
                            motion=Deformation(deform_fields, args.deform_scale), uv=uv,
                            max_displacement_mm=abs(args.deform_scale) * reach))
    surfaces.extend(instrument_parts)

    tilt = np.radians(spec.tilt_deg)
    target = np.array([0.0, 0.0, 0.0])
    eye = target + spec.distance_mm * np.array([0.0, -np.sin(tilt), np.cos(tilt)])
    path = Hovering.create(eye, target, np.array([0.0, 1.0, 0.0]), stream(args.seed, "path"),
                           spec.drift_mm, spec.tremor_deg)
    camera = spec.camera.camera(args.width, args.height)
    return Scene("tissue", surfaces, camera, spec.camera.fov_mask(camera), path, spec.lights, spec.sensor,
                 spec.render, args.fps, args.num_frames, args.seed)


def _grasp_script(spec: TissueSpec, args: BuildArgs, height: HeightField, rng: np.random.Generator) -> GraspScript:
    inst = spec.instrument
    period = min(inst.cycle_s, args.duration_s) if args.num_frames > 1 else inst.cycle_s
    cycles = int(np.ceil(args.duration_s / period)) + 1
    r = inst.grasp_region_mm * np.sqrt(rng.uniform(0, 1, cycles))
    phi = rng.uniform(0, 2 * np.pi, cycles)
    xy = np.stack([r * np.cos(phi), r * np.sin(phi) * 0.7], axis=1)
    z = height(xy[:, 0], xy[:, 1]) - height(0.0, 0.0)
    return GraspScript(np.asarray(inst.trocar_mm, float), np.c_[xy, z], UP, period, np.asarray(inst.pull_mm, float),
                       np.radians(inst.jaw_open_deg), 0.6 * inst.jaw_length_mm)


def _instrument(inst: InstrumentSpec, script: GraspScript) -> list[Surface]:
    r = inst.shaft_radius_mm
    shaft_v, shaft_f = cylinder(r, -400.0, -5.0)
    clevis_v, clevis_f = cylinder(0.9 * r, -5.5, 0.8)
    shaft = UniformMaterial(inst.shaft_srgb, roughness=0.35, specular=0.04)
    metal = UniformMaterial(inst.metal_srgb, roughness=0.28, metallic=1.0)
    parts = [("shaft", shaft_v, shaft_f, shaft, "body"), ("clevis", clevis_v, clevis_f, metal, "body")]
    for side in ("upper", "lower"):
        v, f = jaw(inst.jaw_length_mm, 1.7 * r, 0.55 * r, side == "upper")
        parts.append((f"jaw_{side}", v, f, metal, side))
    return [Surface(name, v, f, label=1, material=m, motion=Rigid(InstrumentPart(script, part)))
            for name, v, f, m, part in parts]
