"""Ray casting the scene at a time t with open3d's Embree-backed BVH.

Static surfaces go into one BVH built once per process; moving surfaces
(deforming tissue, instruments) into a BVH rebuilt per frame from the blocks
within reach of the camera. A cast queries both and keeps the nearer hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import time

import numpy as np
import open3d as o3d
import open3d.core as o3c
import torch

from endo3d.sim.scene import Scene
from endo3d.sim.surface import BLOCK_FACES, ViewCone

INVALID = np.iinfo(np.uint32).max


@dataclass
class Hits:
    """Per-ray results, N rays.

    Attributes:
        t: ``(N,)`` float32 distance along the unit ray (inf: no hit).
        surface: ``(N,)`` int32 index into ``scene.surfaces`` (-1: no hit).
        face: ``(N,)`` int64 face index within the surface.
        bary: ``(N, 2)`` float32 (u, v): the hit is ``(1-u-v) V0 + u V1 + v V2``.
        face_normal: ``(N, 3)`` float32 geometric normal of the hit triangle
            at this time (world frame, following the face winding).
    """

    t: np.ndarray
    surface: np.ndarray
    face: np.ndarray
    bary: np.ndarray
    face_normal: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        return self.surface >= 0


@dataclass
class _Layer:
    scene: o3d.t.geometry.RaycastingScene
    surfaces: list[int]  # geometry id -> surface index
    faces: list[np.ndarray | None]  # geometry id -> global face index per local face, or None
    center: np.ndarray  # bounding sphere of the layer's vertices
    radius: float

    def rays_near(self, rays: np.ndarray) -> np.ndarray | None:
        """Indices of the rays (origin, unit direction) whose line passes the
        bounding sphere, or None when most do (then all are cast). A small
        moving instrument is met by few of a frame's rays."""
        to_center = self.center - rays[:, :3]
        along = np.einsum("ij,ij->i", to_center, rays[:, 3:])
        miss2 = np.einsum("ij,ij->i", to_center, to_center) - along * along
        near = np.nonzero(miss2 <= self.radius * self.radius)[0]
        return None if len(near) > 0.5 * len(rays) else near


def _layer(items: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]) -> _Layer | None:
    if not items:
        return None
    scene = o3d.t.geometry.RaycastingScene()
    surfaces, faces = [], []
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for index, vertices, tris, face_ids in items:
        scene.add_triangles(o3c.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
                            o3c.Tensor(np.ascontiguousarray(tris, dtype=np.uint32)))
        surfaces.append(index)
        faces.append(face_ids)
        lo, hi = np.minimum(lo, vertices.min(axis=0)), np.maximum(hi, vertices.max(axis=0))
    return _Layer(scene, surfaces, faces, (lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2) + 1e-3)


def _cast(layer: _Layer, rays: np.ndarray, threads: int) -> Hits:
    r = layer.scene.cast_rays(o3c.Tensor(rays), nthreads=threads)
    gid = r["geometry_ids"].numpy()
    hit = gid != INVALID
    surface = np.full(len(gid), -1, dtype=np.int32)
    face = r["primitive_ids"].numpy().astype(np.int64)
    lookup = np.array(layer.surfaces, dtype=np.int32)
    surface[hit] = lookup[gid[hit]]
    for g, ids in enumerate(layer.faces):
        if ids is not None:
            sel = hit & (gid == g)
            face[sel] = ids[face[sel]]
    return Hits(r["t_hit"].numpy(), surface, face, r["primitive_uvs"].numpy(), r["primitive_normals"].numpy())


class Raycaster:
    """Builds :class:`FrameGeometry` for a scene; keeps the static BVH.

    ``seconds`` accumulates the time spent moving geometry, building BVHs and
    casting rays, for the simulator's time report.
    """

    def __init__(self, scene: Scene, threads: int = 0) -> None:
        self.scene = scene
        self.threads = threads  # for ray queries; 0 = all cores
        self.seconds = 0.0
        rays = scene.camera.rays(dtype=torch.float64).reshape(-1, 3).numpy()
        rays = rays[np.isfinite(rays).all(axis=1)]
        self.half_angle = float(np.arccos(np.clip(rays[:, 2], -1.0, 1.0)).max()) if len(rays) else np.pi
        self.margin = max((float(np.linalg.norm(light.position_mm)) for light in scene.lights), default=0.0)
        items = [(i, s.vertices, s.faces, None) for i, s in enumerate(scene.surfaces) if s.motion.static]
        self._static = _layer(items)

    def at(self, t: float, c2w: np.ndarray) -> "FrameGeometry":
        """The scene at time ``t`` (s) as seen by a camera at ``c2w``."""
        clock = time.perf_counter()
        view = ViewCone(c2w[:3, 3], c2w[:3, 2], self.half_angle, self.margin,
                        self.scene.render.max_range_mm + self.margin)
        items = []
        moved: dict[int, tuple[np.ndarray | None, np.ndarray]] = {}
        for i, surf in enumerate(self.scene.surfaces):
            if surf.motion.static:
                continue
            coarse = surf.faces_within(view)  # rest blocks widened by the deformation bound
            if coarse is None:
                local, positions = None, surf.motion.positions(surf.vertices, t)
                face_ids = np.arange(len(surf.faces))
                tris = surf.faces
            else:
                used = np.unique(surf.faces[coarse])
                local = np.full(len(surf.vertices), -1, dtype=np.int64)
                local[used] = np.arange(len(used))
                positions = surf.motion.positions(surf.vertices[used], t)
                face_ids = coarse
                tris = local[surf.faces[coarse]]
            if surf.is_tissue:  # fine: blocks whose moved triangles meet the view
                keep = _visible_faces(view, face_ids, positions[tris])
                face_ids, tris = face_ids[keep], tris[keep]
            if len(tris) == 0:
                continue
            items.append((i, positions, tris, None if len(face_ids) == len(surf.faces) else face_ids))
            moved[i] = (local, positions)
        layers = [layer for layer in (self._static, _layer(items)) if layer is not None]
        self.seconds += time.perf_counter() - clock
        return FrameGeometry(layers, self, t, moved)


def _visible_faces(view: ViewCone, face_ids: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Bool mask over ``face_ids`` (ascending, grouped in blocks of
    ``BLOCK_FACES``): faces of blocks whose moved triangles ``corners``
    ``(F, 3, 3)`` have a bounding sphere meeting ``view``."""
    if len(face_ids) == 0:
        return np.zeros(0, dtype=bool)
    block = face_ids // BLOCK_FACES
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
    lo = np.minimum.reduceat(corners.min(axis=1), starts)
    hi = np.maximum.reduceat(corners.max(axis=1), starts)
    keep = view.meets((lo + hi) / 2, np.linalg.norm(hi - lo, axis=1) / 2)
    return np.repeat(keep, np.diff(np.r_[starts, len(face_ids)]))


class FrameGeometry:
    """The scene frozen at one time, ready for ray queries."""

    def __init__(self, layers: list[_Layer], owner: Raycaster, t: float,
                 moved: dict[int, tuple[np.ndarray | None, np.ndarray]]) -> None:
        self._layers = layers
        self._owner = owner
        self.t = t
        self._moved = moved

    def vertex_positions(self, surface: int, vertices: np.ndarray) -> np.ndarray:
        """World positions ``(n, 3)`` of a surface's ``vertices`` (indices) at
        this time: those already moved for the BVH, the rest computed."""
        surf = self._owner.scene.surfaces[surface]
        if surface not in self._moved:
            return surf.motion.positions(surf.vertices[vertices], self.t)
        local, positions = self._moved[surface]
        if local is None:
            return positions[vertices]
        idx = local[vertices]
        out = np.empty((len(vertices), 3), dtype=positions.dtype)
        known = idx >= 0
        out[known] = positions[idx[known]]
        if not known.all():
            out[~known] = surf.motion.positions(surf.vertices[vertices[~known]], self.t)
        return out

    def cast(self, origins: np.ndarray, directions: np.ndarray) -> Hits:
        """Nearest hits of rays ``origins (N, 3) or (3,)`` + t ``directions (N, 3)`` (unit)."""
        clock = time.perf_counter()
        rays = np.empty((len(directions), 6), dtype=np.float32)
        rays[:, :3] = origins
        rays[:, 3:] = directions
        n = len(directions)
        best = Hits(np.full(n, np.inf, np.float32), np.full(n, -1, np.int32), np.zeros(n, np.int64),
                    np.zeros((n, 2), np.float32), np.zeros((n, 3), np.float32))
        for layer in self._layers:
            near = layer.rays_near(rays)
            hits = _cast(layer, rays if near is None else rays[near], self._owner.threads)
            closer = hits.t < (best.t if near is None else best.t[near])
            target = np.nonzero(closer)[0] if near is None else near[closer]
            for name in ("t", "surface", "face", "bary", "face_normal"):
                getattr(best, name)[target] = getattr(hits, name)[closer]
        self._owner.seconds += time.perf_counter() - clock
        return best

    def occluded(self, origins: np.ndarray, segments: np.ndarray, tnear: float = 0.0, tfar: float = 1.0) -> np.ndarray:
        """``(N,)`` bool: something lies on the segment ``origins + s * segments``
        for ``s`` in ``[tnear, tfar]`` (``segments`` are not normalised, so
        one scalar bound serves segments of every length)."""
        clock = time.perf_counter()
        rays = np.empty((len(segments), 6), dtype=np.float32)
        rays[:, :3] = origins
        rays[:, 3:] = segments
        out = np.zeros(len(segments), dtype=bool)
        unit = np.empty_like(rays)
        unit[:, :3] = rays[:, :3]
        unit[:, 3:] = segments / np.maximum(np.linalg.norm(segments, axis=1, keepdims=True), 1e-12)
        for layer in self._layers:
            near = layer.rays_near(unit)
            subset = rays if near is None else rays[near]
            blocked = layer.scene.test_occlusions(o3c.Tensor(subset), tnear=tnear, tfar=tfar,
                                                  nthreads=self._owner.threads).numpy().astype(bool)
            if near is None:
                out |= blocked
            else:
                out[near[blocked]] = True
        self._owner.seconds += time.perf_counter() - clock
        return out
