"""Rendering one fully labelled frame of a scene.

For frame i at time ``t_i`` with pose ``c2w_i``:

1. cast one ray per pixel centre (any camera model: rays are unprojected
   pixel centres) into the scene at ``t_i`` -> G-buffer: surface, triangle,
   barycentrics, position, smooth normal (rest normal carried by the
   deformation gradient), material from the surface's textures;
2. shade with the endoscope's spotlights (shadow rays per light) and the
   ambient term -> linear radiance; the camera response (exposure,
   vignetting, Poisson-Gaussian noise, saturation, sRGB) -> 8-bit RGB;
3. labels: z-depth, camera-frame normals, mask labels, and forward flow: the
   same material point (triangle + barycentrics) at ``t_{i+1}``, projected
   by camera i+1, valid only where a ray from camera i+1 reaches it
   unoccluded and it lands inside the image and the aperture; and the
   camera in the tissue's frame (:func:`tissue_frame_pose`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from endo3d.geometry.align import umeyama
from endo3d.geometry.camera import Camera
from endo3d.render.brdf import Material
from endo3d.render.lights import SpotLight
from endo3d.render.response import CameraResponse, apply_response, to_uint8
from endo3d.render.shading import shade
from endo3d.sim.motion import transform_normals
from endo3d.sim.raycast import FrameGeometry, Raycaster
from endo3d.sim.scene import Scene
from endo3d.sim.surface import SurfacePoints

INVALID_LABEL = 255
SHADOW_OFFSET_MM = 0.02
FLOW_VISIBILITY_TOLERANCE = 1e-3  # relative distance slack for the occlusion test


@dataclass
class GBuffer:
    """Per-hit-pixel surface data of one frame (n hits).

    Attributes:
        pixels: ``(n,)`` flat pixel index ``v * W + u``.
        surface: ``(n,)`` surface index; face: ``(n,)`` face index in it.
        bary: ``(n, 3)`` barycentric weights of the face's vertices.
        points: ``(n, 3)`` world positions (mm) at the frame's time.
        rest: ``(n, 3)`` the same material points' rest positions (mm).
        normals: ``(n, 3)`` world shading normals, facing the camera.
        offsets: ``(n, 3)`` world geometric normals facing the camera (for
            offsetting shadow rays).
        material: ``(n, 6)`` linear albedo RGB, roughness, specular, metallic.
        labels: ``(n,)`` uint8 mask label of the hit surface.
    """

    pixels: np.ndarray
    surface: np.ndarray
    face: np.ndarray
    bary: np.ndarray
    points: np.ndarray
    rest: np.ndarray
    normals: np.ndarray
    offsets: np.ndarray
    material: torch.Tensor
    labels: np.ndarray


@dataclass
class FrameLabels:
    """The labels of one frame (H x W images, numpy): everything but the image."""

    depth: np.ndarray  # (H, W) float32 z-depth mm, 0 = invalid
    normal: np.ndarray  # (H, W, 3) float32 camera frame
    normal_valid: np.ndarray  # (H, W) bool
    flow: np.ndarray | None  # (H, W, 2) float32 px
    flow_valid: np.ndarray | None  # (H, W) bool
    mask: np.ndarray  # (H, W) uint8 labels
    albedo: np.ndarray  # (H, W, 3) float32 linear
    material: np.ndarray  # (H, W, 3) float32 roughness, specular, metallic
    c2w_tissue: np.ndarray  # (4, 4) float64, see tissue_frame_pose
    tissue_nonrigid_mm: float  # RMS of what the rigid fit leaves, mm


@dataclass
class FrameOutput:
    """Everything written for one frame (H x W images, numpy): the image and :class:`FrameLabels`."""

    rgb: np.ndarray  # (H, W, 3) uint8 sRGB
    depth: np.ndarray
    normal: np.ndarray
    normal_valid: np.ndarray
    flow: np.ndarray | None
    flow_valid: np.ndarray | None
    mask: np.ndarray
    albedo: np.ndarray
    material: np.ndarray
    c2w_tissue: np.ndarray
    tissue_nonrigid_mm: float
    timings: dict[str, float] = field(default_factory=dict)


class FrameRenderer:
    """Renders frames of ``scene`` with camera ``camera`` (default: the scene's)."""

    def __init__(self, scene: Scene, camera: Camera | None = None, fov_mask: np.ndarray | None = None,
                 cast_threads: int = 0) -> None:
        self.scene = scene
        self.camera = camera or scene.camera
        mask = scene.fov_mask if camera is None else fov_mask
        rays = self.camera.rays(dtype=torch.float64).reshape(-1, 3).numpy()
        # Pixels with a ray: inside the aperture, reached by the distortion
        # model (strong distortion leaves corners without a ray), and looking
        # forward (a fisheye ray beyond 90 degrees has no positive z-depth).
        inside = np.isfinite(rays).all(axis=1)
        inside[inside] = rays[inside, 2] > 1e-6
        if mask is not None:
            inside &= mask.reshape(-1)
        self.ray_mask = inside.reshape(self.camera.height, self.camera.width)
        self.ray_pixels = np.nonzero(inside)[0]
        self.rays_cam = rays[self.ray_pixels]
        self.raycaster = Raycaster(scene, cast_threads)
        self.lights = [SpotLight.create(l.position_mm, l.direction, l.intensity, l.falloff) for l in scene.lights]
        self.ambient = torch.tensor(scene.render.ambient, dtype=torch.float32)

    def geometry(self, index: int) -> FrameGeometry:
        return self.raycaster.at(self.scene.time(index), self.scene.c2w(index))

    def gbuffer(self, index: int, geom: FrameGeometry) -> GBuffer:
        scene = self.scene
        t = scene.time(index)
        c2w = scene.c2w(index)
        R, C = c2w[:3, :3], c2w[:3, 3]
        dirs = self.rays_cam @ R.T
        hits = geom.cast(C, dirs)
        keep = (hits.hit & (hits.t <= scene.render.max_range_mm)
                & (hits.t * self.rays_cam[:, 2] <= scene.render.depth_limit_mm))
        order = np.nonzero(keep)[0]
        n = len(order)
        surface = hits.surface[order]
        face = hits.face[order]
        uv = hits.bary[order].astype(np.float64)
        bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
        d = dirs[order]
        points = C + hits.t[order, None].astype(np.float64) * d
        normals = np.zeros((n, 3))
        rests = np.zeros((n, 3))
        material = torch.zeros((n, 6), dtype=torch.float32)
        labels = np.zeros(n, dtype=np.uint8)
        focal = float(self.camera.K[0, 0])
        face_n = hits.face_normal[order].astype(np.float64)
        flip = np.where(np.sum(face_n * d, axis=1) > 0, -1.0, 1.0)[:, None]
        for si in np.unique(surface):
            surf = scene.surfaces[si]
            sel = np.nonzero(surface == si)[0]
            values = _interp(surf.attributes, surf.faces[face[sel]], bary[sel])
            rest = values[:, 0:3]
            n_rest = _unit(values[:, 3:6])
            normal = n_rest if surf.motion.static else transform_normals(surf.motion.gradient(rest, t), n_rest)
            normal = _facing(normal.astype(np.float64) * flip[sel], d[sel])
            normals[sel] = normal
            rests[sel] = rest
            cos = np.abs(np.sum(normal * d[sel], axis=1))
            footprint = hits.t[order][sel] / focal / np.maximum(cos, 0.2)
            attrs = SurfacePoints.from_attributes(surf, values, footprint)
            material[torch.from_numpy(sel)] = surf.material.evaluate(attrs)
            labels[sel] = surf.label
        return GBuffer(self.ray_pixels[order], surface, face, bary, points, rests, normals, face_n * flip, material, labels)

    def visibility(self, index: int, gb: GBuffer, geom: FrameGeometry,
                   positions_cam: list[np.ndarray] | None = None) -> list[torch.Tensor] | None:
        """Shadow rays: per light a ``(n, 1)`` float32 tensor, 1 where the hit
        point sees the light, 0 where the scene blocks the segment to it.

        ``positions_cam`` are the lights' positions in the camera frame (mm);
        by default the scene's lights. None when the scene renders no shadows.
        """
        if not self.scene.render.shadows or not len(gb.points):
            return None
        if positions_cam is None:
            positions_cam = [np.asarray(light.position_mm, dtype=np.float64) for light in self.scene.lights]
        c2w = self.scene.c2w(index)
        R, C = c2w[:3, :3], c2w[:3, 3]
        origins = gb.points + SHADOW_OFFSET_MM * gb.offsets
        out = []
        for position in positions_cam:
            to_light = (C + R @ np.asarray(position, dtype=np.float64)) - origins
            blocked = geom.occluded(origins, to_light, tnear=0.0, tfar=1.0)
            out.append(torch.from_numpy((~blocked).astype(np.float32))[:, None])
        return out

    def radiance(self, index: int, gb: GBuffer, geom: FrameGeometry) -> torch.Tensor:
        """``(n, 3)`` linear radiance towards the camera at the hit pixels."""
        c2w = self.scene.c2w(index)
        R, C = c2w[:3, :3], c2w[:3, 3]
        points_cam = torch.from_numpy(((gb.points - C) @ R).astype(np.float32))
        normals_cam = torch.from_numpy((gb.normals @ R).astype(np.float32))
        visibility = self.visibility(index, gb, geom)
        m = gb.material
        material = Material(m[:, 0:3], m[:, 3:4], m[:, 4:5], m[:, 5:6])
        return shade(points_cam, normals_cam, material, self.lights, self.ambient, visibility=visibility)

    def response(self, exposure: float) -> CameraResponse:
        """The scene's camera response at ``exposure``."""
        sensor = self.scene.sensor
        return CameraResponse(
            exposure=exposure, white_balance=sensor.white_balance, vignetting=sensor.vignetting,
            noise_shot=sensor.noise_shot, noise_read=sensor.noise_read,
            gamma=sensor.gamma if sensor.gamma == "srgb" else float(sensor.gamma))

    def render(self, index: int, geom: FrameGeometry, geom_next: FrameGeometry | None, exposure: float) -> FrameOutput:
        scene, cam = self.scene, self.camera
        H, W = cam.height, cam.width
        cast_before = self.raycaster.seconds
        clock = time.perf_counter()
        gb = self.gbuffer(index, geom)
        radiance = self.radiance(index, gb, geom)
        image = torch.zeros((H * W, 3), dtype=torch.float32)
        image[torch.from_numpy(gb.pixels)] = radiance
        image = image.T.reshape(1, 3, H, W)
        response = self.response(exposure)
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([scene.seed, index]).generate_state(1)[0]))
        rgb = to_uint8(apply_response(image, response, cam.K_tensor(), generator=generator))[0]
        rgb[~self.ray_mask] = 0
        cast_shading = self.raycaster.seconds - cast_before
        t_shading = time.perf_counter() - clock - cast_shading

        clock = time.perf_counter()
        labels = self.labels(index, gb, geom_next)
        cast_total = self.raycaster.seconds - cast_before
        t_labels = time.perf_counter() - clock - (cast_total - cast_shading)
        out = FrameOutput(rgb=rgb, **vars(labels))
        out.timings = {"raycast": cast_total, "shading": t_shading, "labels": t_labels}
        return out

    def labels(self, index: int, gb: GBuffer, geom_next: FrameGeometry | None) -> FrameLabels:
        """Every label of frame ``index`` but the image: depth, normals, mask,
        material maps, and the flow to frame ``index + 1`` (None without ``geom_next``)."""
        scene, cam = self.scene, self.camera
        H, W = cam.height, cam.width
        c2w = scene.c2w(index)
        R, C = c2w[:3, :3], c2w[:3, 3]
        px = gb.pixels
        depth = np.zeros(H * W, dtype=np.float32)
        depth[px] = ((gb.points - C) @ R[:, 2]).astype(np.float32)
        normal = np.zeros((H * W, 3), dtype=np.float32)
        normal[px] = gb.normals @ R
        valid = np.zeros(H * W, dtype=bool)
        valid[px] = True
        mask = np.full(H * W, INVALID_LABEL, dtype=np.uint8)
        mask[px] = gb.labels
        albedo = np.zeros((H * W, 3), dtype=np.float32)
        albedo[px] = gb.material[:, 0:3].numpy()
        material = np.zeros((H * W, 3), dtype=np.float32)
        material[px] = gb.material[:, 3:6].numpy()
        flow = flow_valid = None
        if geom_next is not None:
            flow, flow_valid = self._flow(index, gb, geom_next)
        tissue = gb.labels == 0
        c2w_tissue, nonrigid = tissue_frame_pose(c2w, gb.rest[tissue], gb.points[tissue])
        return FrameLabels(depth=depth.reshape(H, W), normal=normal.reshape(H, W, 3),
                           normal_valid=valid.reshape(H, W), flow=flow, flow_valid=flow_valid,
                           mask=mask.reshape(H, W), albedo=albedo.reshape(H, W, 3),
                           material=material.reshape(H, W, 3), c2w_tissue=c2w_tissue, tissue_nonrigid_mm=nonrigid)

    def _flow(self, index: int, gb: GBuffer, geom_next: FrameGeometry) -> tuple[np.ndarray, np.ndarray]:
        scene, cam = self.scene, self.camera
        H, W = cam.height, cam.width
        c2w1 = scene.c2w(index + 1)
        R1, C1 = c2w1[:3, :3], c2w1[:3, 3]
        moved = gb.points.copy()
        for si in np.unique(gb.surface):
            surf = scene.surfaces[si]
            if surf.motion.static:
                continue
            sel = np.nonzero(gb.surface == si)[0]
            f = surf.faces[gb.face[sel]]
            corners = geom_next.vertex_positions(si, f.reshape(-1)).reshape(-1, 3, 3).astype(np.float64)
            moved[sel] = np.einsum("nk,nkc->nc", gb.bary[sel], corners)
        uv1, ok = cam.project(torch.from_numpy(((moved - C1) @ R1).astype(np.float32)))
        uv1, ok = uv1.numpy(), ok.numpy()
        px = gb.pixels
        u0, v0 = (px % W).astype(np.float64), (px // W).astype(np.float64)
        ok &= (uv1[:, 0] >= -0.5) & (uv1[:, 0] < W - 0.5) & (uv1[:, 1] >= -0.5) & (uv1[:, 1] < H - 0.5)
        iu = np.clip(np.rint(uv1[:, 0]), 0, W - 1).astype(np.int64)
        iv = np.clip(np.rint(uv1[:, 1]), 0, H - 1).astype(np.int64)
        ok &= self.ray_mask[iv, iu]  # lands on a pixel that has labels in frame i + 1
        ok &= np.linalg.norm(moved - C1, axis=1) <= scene.render.max_range_mm
        sel = np.nonzero(ok)[0]
        blocked = geom_next.occluded(np.broadcast_to(C1, (len(sel), 3)), moved[sel] - C1,
                                     tnear=0.0, tfar=1.0 - FLOW_VISIBILITY_TOLERANCE)
        ok[sel[blocked]] = False
        flow = np.zeros((H * W, 2), dtype=np.float32)
        flow[px] = np.stack([uv1[:, 0] - u0, uv1[:, 1] - v0], axis=1)
        valid = np.zeros(H * W, dtype=bool)
        valid[px] = ok
        flow[~valid] = 0.0
        return flow.reshape(H, W, 2), valid.reshape(H, W)


def tissue_frame_pose(c2w: np.ndarray, rest: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, float]:
    """The camera in the frame of the visible tissue, and what that frame leaves unexplained.

    ``T = argmin_{R, t} sum_p |R X_p + t - x_p|^2`` is the rigid motion that
    best carries the visible tissue's rest positions ``X_p`` to where they are
    now, ``x_p``, one term per pixel (Kabsch). Images cannot tell a rigid
    motion of everything in view from the opposite camera motion, so the
    pose that a video of deforming tissue determines is ``T^-1 c2w``: the
    camera in rest coordinates, equal to ``c2w`` for rigid tissue. Returns
    that pose (4x4, mm) and the RMS residual of the fit (mm), the part of
    the motion that is not rigid. With fewer than 3 points the tissue is
    taken as at rest: ``(c2w, 0)``.
    """
    if len(rest) < 3:
        return np.array(c2w, np.float64), 0.0
    _, R, t = umeyama(rest, points, with_scale=False)
    residual = points - (rest @ R.T + t)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return np.linalg.inv(T) @ c2w, float(np.sqrt(np.mean(np.sum(residual**2, axis=1))))


def _interp(table: np.ndarray, faces: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Barycentric interpolation ``(n, k)`` of per-vertex rows ``table`` (V, k) over ``faces`` (n, 3)."""
    return np.einsum("nvk,nv->nk", table[faces], bary.astype(table.dtype))


def _facing(normals: np.ndarray, rays: np.ndarray, slack: float = 1e-3) -> np.ndarray:
    """Normals turned to face the camera (``n . d < 0`` for ray direction
    ``d``): an interpolated normal near a silhouette can point slightly away
    although its triangle faces the camera; it is tilted into the plane
    perpendicular to the ray, just on the camera's side."""
    cos = np.sum(normals * rays, axis=1)
    away = cos > -slack
    if away.any():
        normals = normals.copy()
        normals[away] -= (cos[away] + slack)[:, None] * rays[away]
        normals[away] /= np.linalg.norm(normals[away], axis=1, keepdims=True)
    return normals


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
