"""Inputs of PBR fitting: known geometry ray-cast at known poses.

An ``endo3d/v1`` dataset with a ``mesh`` gives the tissue surface (world mm)
and the camera poses. The mesh becomes a static one-surface simulator
:class:`~endo3d.sim.scene.Scene` whose camera path is the list of poses, so
the simulator's own ray caster and label code (:class:`FrameRenderer`:
G-buffers, shadow rays, depth, normals, flow with its occlusion test, masks)
serve fitting and re-rendering unchanged. Per frame the G-buffer is reduced
to the tensors the shading needs (:class:`FrameBuffers`) and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from endo3d.core.errors import InputError
from endo3d.geometry.camera import Camera
from endo3d.sim.frame import FrameRenderer, GBuffer
from endo3d.sim.raycast import FrameGeometry
from endo3d.sim.scene import LightSpec, RenderSpec, Scene, SensorSpec
from endo3d.sim.surface import Surface, UniformMaterial

__all__ = ["FrameBuffers", "MeshGeometry", "PoseTrajectory", "read_mesh"]

DEFAULT_MAX_RANGE_MM = 300.0


class PoseTrajectory:
    """A camera path given as poses at frame times ``index / fps`` (the simulator's ``Trajectory``)."""

    def __init__(self, poses: np.ndarray, fps: float) -> None:
        self.poses = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
        self.fps = float(fps)

    def c2w(self, t: float) -> np.ndarray:
        index = min(max(int(round(t * self.fps)), 0), len(self.poses) - 1)
        return self.poses[index].copy()


def read_mesh(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(vertices (V, 3) float32 mm, faces (F, 3) int32, vertex normals (V, 3) float32 or None)``.

    Raises:
        InputError: the file is missing, unreadable or has no triangles.
    """
    import open3d as o3d

    if not path.is_file():
        raise InputError(path, "mesh file missing")
    mesh = o3d.io.read_triangle_mesh(str(path))
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.triangles, dtype=np.int32)
    if len(faces) == 0 or len(vertices) == 0:
        raise InputError(path, "not a triangle mesh (no vertices or faces read)")
    normals = np.asarray(mesh.vertex_normals, dtype=np.float32) if mesh.has_vertex_normals() else None
    return vertices, faces, normals


@dataclass
class FrameBuffers:
    """One frame's surface samples, ``n`` hit pixels, as float32 tensors.

    Attributes:
        index: frame number.
        pixels: ``(n,)`` int64 flat pixel index ``v * W + u``.
        points_world: ``(n, 3)`` surface points, world mm.
        points_cam: ``(n, 3)`` the same in the camera frame (OpenCV, mm).
        normals_cam: ``(n, 3)`` unit shading normals, camera frame, facing the camera.
        visibility: ``(n, K)`` 1 where light ``k`` reaches the point (shadow rays), or None.
        target: ``(n, 3)`` the frame's sRGB values in [0, 1], or None.
        weight: ``(n,)`` photometric weight: 0 off tissue, lower for saturated pixels; or None.
    """

    index: int
    pixels: torch.Tensor
    points_world: torch.Tensor
    points_cam: torch.Tensor
    normals_cam: torch.Tensor
    visibility: torch.Tensor | None
    target: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    def subset(self, rows: torch.Tensor) -> "FrameBuffers":
        """The samples ``rows`` (indices into the ``n`` hit pixels) of this frame."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return FrameBuffers(self.index, self.pixels[rows], self.points_world[rows], self.points_cam[rows],
                            self.normals_cam[rows], pick(self.visibility), pick(self.target), pick(self.weight))


class MeshGeometry:
    """A known mesh seen along a camera path, ray cast with the simulator's machinery.

    Args:
        vertices, faces, normals: the mesh (world mm); normals per vertex or None.
        camera: the intrinsic camera.
        poses: ``(N, 4, 4)`` camera-to-world.
        fps: frame rate (frame ``i`` is at ``i / fps``).
        aperture: ``(H, W)`` bool, pixels inside the endoscope's aperture, or None.
        light_positions: ``(K, 3)`` light positions in the camera frame, mm (for shadow rays).
        max_range_mm: surfaces farther along the ray are not imaged.
        depth_scale_mm: depth PNG resolution of the datasets written from it.
        shadows: cast shadow rays.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray | None, camera: Camera,
                 poses: np.ndarray, *, fps: float, aperture: np.ndarray | None,
                 light_positions: Sequence[Sequence[float]], max_range_mm: float = DEFAULT_MAX_RANGE_MM,
                 depth_scale_mm: float = 0.01, shadows: bool = True) -> None:
        surface = Surface("tissue", vertices, faces, 0, UniformMaterial((0.5, 0.5, 0.5), 0.5), normals=normals)
        lights = tuple(LightSpec(position_mm=tuple(float(v) for v in p)) for p in light_positions)
        self.light_positions = [np.asarray(p, dtype=np.float64) for p in light_positions]
        self.poses = np.asarray(poses, dtype=np.float64)
        self.scene = Scene(
            name="mesh", surfaces=[surface], camera=camera, fov_mask=aperture,
            trajectory=PoseTrajectory(self.poses, fps), lights=lights,
            sensor=SensorSpec(auto_exposure=False, noise_shot=0.0, noise_read=0.0),
            render=RenderSpec(max_range_mm=max_range_mm, shadows=shadows, ambient=(0.0, 0.0, 0.0),
                              depth_scale_mm=depth_scale_mm, material_maps=False),
            fps=float(fps), num_frames=len(self.poses), seed=0)
        self.renderer = FrameRenderer(self.scene, cast_threads=0)
        self.camera = camera
        self._geometry: dict[int, FrameGeometry] = {}

    def __len__(self) -> int:
        return len(self.poses)

    def geometry(self, index: int) -> FrameGeometry:
        """The ray-query structure of frame ``index`` (one static BVH shared by all frames)."""
        if index not in self._geometry:
            self._geometry[index] = self.renderer.geometry(index)
        return self._geometry[index]

    def gbuffer(self, index: int) -> GBuffer:
        """The simulator's G-buffer of frame ``index``."""
        return self.renderer.gbuffer(index, self.geometry(index))

    def buffers(self, index: int, gb: GBuffer | None = None) -> FrameBuffers:
        """The shading inputs of frame ``index`` (points, normals, shadow visibility)."""
        gb = self.gbuffer(index) if gb is None else gb
        c2w = self.poses[index]
        R, C = c2w[:3, :3], c2w[:3, 3]
        visibility = self.renderer.visibility(index, gb, self.geometry(index), self.light_positions)
        return FrameBuffers(
            index=index,
            pixels=torch.from_numpy(gb.pixels.astype(np.int64)),
            points_world=torch.from_numpy(gb.points.astype(np.float32)),
            points_cam=torch.from_numpy(((gb.points - C) @ R).astype(np.float32)),
            normals_cam=torch.from_numpy((gb.normals @ R).astype(np.float32)),
            visibility=None if visibility is None else torch.cat(visibility, dim=1),
        )

    def bounds(self, frames: Sequence[FrameBuffers], margin_mm: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Box around the points seen in ``frames``, widened by ``margin_mm``."""
        points = torch.cat([f.points_world for f in frames])
        if len(points) == 0:
            return torch.zeros(3), torch.ones(3)
        return points.min(dim=0).values - margin_mm, points.max(dim=0).values + margin_mm


def aperture_from_masks(masks: Sequence[np.ndarray]) -> np.ndarray | None:
    """Pixels labelled anything but 255 (outside / invalid) in at least one frame; None without masks."""
    if not masks:
        return None
    out = np.zeros_like(masks[0], dtype=bool)
    for m in masks:
        out |= m != 255
    return out


def meta_max_range(source: dict[str, Any]) -> float | None:
    """The simulator's ``render.max_range_mm`` recorded in ``meta.json`` ``source``, if any."""
    try:
        value = float(source["scene_spec"]["render"]["max_range_mm"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if value > 0 else None
