"""``mesh``: any triangle mesh file as tissue, seen along a camera path.

The mesh (OBJ, PLY, STL, GLB/GLTF, OFF, ... through trimesh; multi-part
files are merged) is taken in millimetres times ``scale``. Its own base
colour texture is used when it has one, else procedural tissue (triplanar).
The camera follows ``keyframes`` (time, eye, target, up; world mm) or, by
default, a slow arc around the mesh at ``orbit_distance`` bounding radii.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from endo3d.core.config import positive
from endo3d.core.errors import InputError
from endo3d.sim.motion import Deformation
from endo3d.sim.scene import CameraSpec, DeformSpec, LightSpec, RenderSpec, Scene, max_displacement
from endo3d.sim.scenes.common import BuildArgs, CommonSpec, stream
from endo3d.sim.surface import Surface, TexturedMaterial
from endo3d.sim.texture import PaletteSpec, Texture, make_texture, srgb_to_linear
from endo3d.sim.trajectory import Keyframes

MESH_SUFFIXES = {".obj", ".ply", ".stl", ".glb", ".gltf", ".off"}
DEPTH_SCALES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class KeyframeSpec:
    """One camera keyframe (world mm, after ``scale``)."""

    time_s: float
    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)


@dataclass(frozen=True)
class MeshSpec(CommonSpec):
    """Scene file schema of ``kind = "mesh"``."""

    kind: Literal["mesh"] = "mesh"
    mesh: str = ""
    """Mesh file; relative paths are relative to the scene file."""
    scale: float = 1.0
    """Mesh units to mm."""
    keyframes: tuple[KeyframeSpec, ...] = ()
    """Camera path; empty = an arc around the mesh."""
    orbit_deg: float = 40.0
    orbit_distance: float = 2.2
    """Default path: distance from the centre in bounding-sphere radii."""
    orbit_elevation_deg: float = 30.0
    use_mesh_texture: bool = True
    """Use the mesh's base colour texture when it has one."""
    camera: CameraSpec = CameraSpec(hfov_deg=80.0)
    lights: tuple[LightSpec, ...] = (LightSpec(falloff=1.0),)
    palette: PaletteSpec = PaletteSpec(base_srgb=(0.80, 0.45, 0.40), tile_mm=40.0)
    deform: DeformSpec = DeformSpec(breathing_mm=0.5, cardiac_mm=0.1, wavelength_mm=40.0)
    render: RenderSpec = RenderSpec(max_range_mm=0.0)
    """max_range_mm = 0 picks the range (and depth scale) from the mesh size."""

    def problems(self) -> list[str]:
        out = super().problems() + positive(self, "scale", "orbit_distance")
        times = [k.time_s for k in self.keyframes]
        if any(b <= a for a, b in zip(times, times[1:])):
            out.append(f"keyframes must have increasing time_s, got {times}")
        if any(np.allclose(k.eye, k.target) for k in self.keyframes):
            out.append("a keyframe's eye and target must differ")
        return out


def build_mesh(spec: MeshSpec, args: BuildArgs) -> Scene:
    import trimesh

    try:
        loaded = trimesh.load(spec.mesh, force="mesh", process=False)
    except Exception as e:  # trimesh raises many types for unreadable files
        raise InputError(spec.mesh, f"cannot read mesh ({type(e).__name__}: {e})") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise InputError(spec.mesh, "no triangles in the mesh file")
    vertices = np.asarray(loaded.vertices, dtype=np.float64) * spec.scale
    faces = np.asarray(loaded.faces, dtype=np.int64)
    if not np.all(np.isfinite(vertices)):
        raise InputError(spec.mesh, "mesh has non-finite vertex coordinates")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InputError(spec.mesh, f"faces refer to vertices outside 0..{len(vertices) - 1}")
    center = (vertices.min(0) + vertices.max(0)) / 2
    radius = float(np.linalg.norm(vertices - center, axis=1).max())
    if radius <= 0:
        raise InputError(spec.mesh, "mesh has zero size")

    material, uv = _material(spec, loaded, vertices, faces, args.seed)
    deform_fields = spec.deform.fields(stream(args.seed, "deform"))
    surface = Surface("mesh", vertices, faces, label=0, material=material,
                      motion=Deformation(deform_fields, args.deform_scale), uv=uv,
                      max_displacement_mm=abs(args.deform_scale) * max_displacement(deform_fields))
    path = _path(spec, center, radius, args)
    render = spec.render
    if render.max_range_mm <= 0:
        far = spec.orbit_distance * radius + 2 * radius
        if spec.keyframes:
            eyes = np.array([k.eye for k in spec.keyframes])
            far = float(np.max(np.linalg.norm(eyes - center, axis=1))) + 2 * radius
        scale = render.depth_scale_mm  # the given scale when 16 bits hold the range at it, else a coarser one
        if far / scale >= 60000:
            scale = max(scale, next((s for s in DEPTH_SCALES if far / s < 60000), DEPTH_SCALES[-1]))
        render = dataclasses.replace(render, max_range_mm=far, depth_scale_mm=scale)
    camera = spec.camera.camera(args.width, args.height)
    return Scene("mesh", [surface], camera, spec.camera.fov_mask(camera), path, spec.lights, spec.sensor, render,
                 args.fps, args.num_frames, args.seed)


def _material(spec: MeshSpec, loaded, vertices: np.ndarray, faces: np.ndarray, seed: int):
    visual = loaded.visual
    image = getattr(getattr(visual, "material", None), "baseColorTexture", None) or \
        getattr(getattr(visual, "material", None), "image", None)
    uv = getattr(visual, "uv", None)
    if spec.use_mesh_texture and image is not None and uv is not None and len(uv) == len(vertices):
        return _image_material(spec, np.asarray(image.convert("RGB")), np.asarray(uv, float), vertices, faces)
    texture = make_texture(spec.palette, stream(seed, "texture"))
    return TexturedMaterial(texture, "triplanar"), None


def _image_material(spec: MeshSpec, image: np.ndarray, uv: np.ndarray, vertices: np.ndarray, faces: np.ndarray):
    """The mesh's texture as a :class:`Texture` whose tile is the [0, 1]^2 uv square.

    Texture coordinates are rescaled to mm by the mesh's median texel
    density ``sqrt(uv area / surface area)`` so mip selection sees physical
    footprints; the image is resampled to a power-of-two square.
    """
    tri = vertices[faces]
    tri_uv = uv[faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    uv_area = np.abs(np.cross(tri_uv[:, 1] - tri_uv[:, 0], tri_uv[:, 2] - tri_uv[:, 0]))
    ok = (area > 0) & (uv_area > 0)
    uv_per_mm = float(np.median(np.sqrt(uv_area[ok] / area[ok]))) if ok.any() else 1.0
    n = int(min(2048, 2 ** np.ceil(np.log2(max(image.shape[:2])))))
    linear = torch.from_numpy(srgb_to_linear(image / 255.0).astype(np.float32)).permute(2, 0, 1)[None]
    albedo = F.interpolate(linear, size=(n, n), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    # uv v runs up the image; our texture rows run down.
    albedo = torch.flip(albedo, dims=[0]).numpy()
    maps = np.concatenate([albedo, np.full((n, n, 1), spec.palette.roughness), np.full((n, n, 1), spec.palette.specular)], -1)
    texture = Texture.from_maps(maps.astype(np.float32), 1.0 / uv_per_mm)
    return TexturedMaterial(texture, "uv"), (uv / uv_per_mm).astype(np.float32)


def _path(spec: MeshSpec, center: np.ndarray, radius: float, args: BuildArgs) -> Keyframes:
    if spec.keyframes:
        k = sorted(spec.keyframes, key=lambda f: f.time_s)
        return Keyframes(np.array([f.time_s for f in k]), np.array([f.eye for f in k], float),
                         np.array([f.target for f in k], float), np.array([f.up for f in k], float))
    duration = args.duration_s
    angles = np.radians(spec.orbit_deg) * np.linspace(-0.5, 0.5, 5)
    elev = np.radians(spec.orbit_elevation_deg)
    d = spec.orbit_distance * radius
    eyes = center + d * np.stack([np.cos(elev) * np.cos(angles), np.cos(elev) * np.sin(angles),
                                  np.full_like(angles, np.sin(elev))], axis=1)
    times = np.linspace(0.0, duration, 5)
    return Keyframes(times, eyes, np.repeat(center[None], 5, 0), np.repeat([[0.0, 0.0, 1.0]], 5, 0))
