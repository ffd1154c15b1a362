"""Depth maps -> one coloured triangle mesh by TSDF fusion; the mesh as PLY and as a picture.

Fusion (:func:`fuse_tsdf`) keeps a truncated signed distance field in a sparse
grid of voxel blocks (``open3d.t.geometry.VoxelBlockGrid`` on the CPU). For a
frame with z-depth map ``d``, intrinsics ``K`` and world-to-camera pose
``w2c = inverse(c2w)``, every voxel centre ``x`` near the observed surface is
taken to the camera, ``p = w2c x``, and projected to its pixel
``(u, v) = round(K p / p_z)``. Its projective signed distance is
``s = d(u, v) - p_z`` (mm, positive in front of the surface); voxels with
``s < -tau`` (hidden behind the surface) are left alone, the rest store
``min(s, tau) / tau``, with ``tau = truncation_voxels * voxel_mm``. Each frame
adds weight 1; the TSDF and the colour are the running weighted means.
Marching cubes on the zero level set, over voxels observed at least
``min_weight`` times, gives the mesh. Normals are the TSDF gradient, i.e. they
point out of the surface towards the cameras that saw it, and the faces wind
counter-clockwise about them.

All lengths are mm; cameras follow CONVENTIONS.md (OpenCV, pixel centres at
integer coordinates, ``c2w`` 4x4), which is also open3d's convention, so
intrinsics and ``inverse(c2w)`` go to open3d unchanged. Depth goes in as
float32 mm with ``depth_scale = 1``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
import open3d.core as o3c

from endo3d.core.errors import InputError
from endo3d.core.fs import write_bytes_atomic

# Voxels per block edge. Blocks of 8^3 voxels hold 512 * 20 bytes (TSDF, weight, RGB as float32).
BLOCK_RESOLUTION = 8
# Bound on the blocks the observed surface itself occupies when the voxel size is picked from the
# data; the truncation band roughly doubles the count, so the grid stays below ~150 MiB.
MAX_SURFACE_BLOCKS = 6000
# Pixels back-projected to estimate the surface's block count (a strided subset beyond this).
_SAMPLE_PIXELS = 1_000_000
BACKGROUND = (40, 40, 40)
AMBIENT = 0.25


@dataclass
class FusedMesh:
    """A triangle mesh in world mm.

    Attributes:
        vertices: float64 ``(V, 3)`` world positions, mm.
        faces: int64 ``(F, 3)`` vertex indices, counter-clockwise about the normals.
        colors: uint8 ``(V, 3)`` sRGB.
        normals: float64 ``(V, 3)`` unit vertex normals (world frame, out of
            the surface towards the cameras that observed it).
        voxel_mm: the TSDF voxel edge used, mm.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    normals: np.ndarray
    voxel_mm: float


def fuse_tsdf(depth: np.ndarray, rgb: np.ndarray, valid: np.ndarray, K: np.ndarray, c2w: np.ndarray, *,
              voxel_mm: float | None = None, truncation_voxels: float = 4.0, max_depth_mm: float | None = None,
              min_weight: int | None = None) -> FusedMesh:
    """Integrate N depth maps into a TSDF and extract its triangle mesh (see the module docstring).

    Args:
        depth: float ``(N, H, W)`` z-depth, mm; 0 or non-finite = invalid.
        rgb: ``(N, H, W, 3)`` sRGB, uint8 or float in [0, 1].
        valid: bool ``(N, H, W)``, the pixels to integrate.
        K: ``(3, 3)`` or ``(N, 3, 3)`` intrinsics, pixels.
        c2w: ``(N, 4, 4)`` camera-to-world poses, mm.
        voxel_mm: voxel edge, mm. None: about two pixels' footprint at the
            median depth, ``2 * median(depth) / f`` (``f`` the median focal
            length, so ``1 / f`` is the angle of a pixel in radians), enlarged
            where needed so that the observed surface occupies at most
            :data:`MAX_SURFACE_BLOCKS` blocks of :data:`BLOCK_RESOLUTION`^3 voxels.
        truncation_voxels: truncation distance ``tau`` in voxels.
        max_depth_mm: pixels deeper than this are not integrated (None: no limit).
        min_weight: frames a voxel must have been seen in to be part of the
            surface. None: ``min(3, N)``, so that surfaces seen only once or twice in a
            long sequence are dropped as likely noise.

    Raises:
        ValueError: bad shapes or parameters, no valid depth to fuse, or an
            empty mesh (nothing seen ``min_weight`` times).
    """
    depth, rgb, Ks, c2w = _checked_inputs(depth, rgb, valid, K, c2w, max_depth_mm)
    n = len(depth)
    if not depth.any():
        raise ValueError("fuse_tsdf: no valid depth to fuse (every pixel is masked out, zero, non-finite "
                         "or beyond max_depth_mm)")
    if not truncation_voxels > 0:
        raise ValueError(f"fuse_tsdf: truncation_voxels must be positive, got {truncation_voxels}")
    weight = min(3, n) if min_weight is None else int(min_weight)
    if weight < 1:
        raise ValueError(f"fuse_tsdf: min_weight must be positive, got {min_weight}")
    points = _sample_points(depth, Ks, c2w)
    if voxel_mm is None:
        voxel_mm, blocks = _auto_voxel_mm(depth, Ks, points)
    elif not voxel_mm > 0:
        raise ValueError(f"fuse_tsdf: voxel_mm must be positive, got {voxel_mm}")
    else:
        blocks = _surface_blocks(points, float(voxel_mm))
    voxel_mm = float(voxel_mm)
    grid = o3d.t.geometry.VoxelBlockGrid(
        ("tsdf", "weight", "color"), (o3c.float32, o3c.float32, o3c.float32), ((1,), (1,), (3,)),
        voxel_mm, BLOCK_RESOLUTION, _initial_capacity(blocks), o3c.Device("CPU:0"))
    depth_max = float(depth.max()) + voxel_mm  # all valid pixels pass open3d's depth_max test
    for d, c, k, pose in zip(depth, rgb, Ks, c2w):
        depth_image = o3d.t.geometry.Image(o3c.Tensor(d))
        intrinsic = o3c.Tensor(k, o3c.float64)
        extrinsic = o3c.Tensor(np.linalg.inv(pose), o3c.float64)
        blocks = grid.compute_unique_block_coordinates(depth_image, intrinsic, extrinsic, 1.0, depth_max,
                                                       truncation_voxels)
        colour = o3d.t.geometry.Image(o3c.Tensor(_unit_rgb(c)))
        grid.integrate(blocks, depth_image, colour, intrinsic, extrinsic, 1.0, depth_max, truncation_voxels)
    # Weights count frames; open3d keeps voxels whose weight exceeds the threshold (strictly).
    mesh = grid.extract_triangle_mesh(weight - 0.5)
    if mesh.triangle.indices.shape[0] == 0:
        raise ValueError(f"fuse_tsdf: the fused mesh is empty (no surface was observed in {weight} or more "
                         f"frames at voxel size {voxel_mm:.3g} mm)")
    normals = mesh.vertex.normals.numpy().astype(np.float64)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return FusedMesh(
        vertices=mesh.vertex.positions.numpy().astype(np.float64),
        faces=mesh.triangle.indices.numpy().astype(np.int64),
        colors=np.rint(np.clip(mesh.vertex.colors.numpy(), 0.0, 1.0) * 255.0).astype(np.uint8),
        normals=normals,
        voxel_mm=voxel_mm,
    )


def _checked_inputs(depth: np.ndarray, rgb: np.ndarray, valid: np.ndarray, K: np.ndarray, c2w: np.ndarray,
                    max_depth_mm: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated arrays: float32 depth ``(N, H, W)`` with 0 wherever a pixel is not to be integrated,
    ``rgb`` as given (shape checked), float64 ``K`` ``(N, 3, 3)`` and ``c2w`` ``(N, 4, 4)``."""
    depth = np.asarray(depth, dtype=np.float32)
    rgb, valid = np.asarray(rgb), np.asarray(valid, dtype=bool)
    K, c2w = np.asarray(K, dtype=np.float64), np.asarray(c2w, dtype=np.float64)
    if depth.ndim != 3:
        raise ValueError(f"fuse_tsdf: depth must be (N, H, W), got shape {depth.shape}")
    n, h, w = depth.shape
    expected = {"rgb": (rgb.shape, (n, h, w, 3)), "valid": (valid.shape, (n, h, w)), "c2w": (c2w.shape, (n, 4, 4))}
    for name, (got, want) in expected.items():
        if got != want:
            raise ValueError(f"fuse_tsdf: {name} must have shape {want} to match depth, got {got}")
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (n, 3, 3))
    if K.shape != (n, 3, 3) or not np.isfinite(K).all():
        raise ValueError(f"fuse_tsdf: K must be finite (3, 3) or ({n}, 3, 3), got shape {K.shape}")
    if not np.isfinite(c2w).all():
        raise ValueError("fuse_tsdf: c2w has non-finite values")
    use = valid & np.isfinite(depth) & (depth > 0)
    if max_depth_mm is not None:
        use &= depth <= max_depth_mm
    return np.where(use, depth, np.float32(0.0)), rgb, np.ascontiguousarray(K), c2w


def _unit_rgb(rgb: np.ndarray) -> np.ndarray:
    """One frame's colour as contiguous float32 ``(H, W, 3)`` in [0, 1] (uint8 / 255; floats clipped, NaN 0)."""
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(np.clip(np.nan_to_num(rgb, nan=0.0), 0.0, 1.0), dtype=np.float32)


def _sample_points(depth: np.ndarray, Ks: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """World points ``(M, 3)`` mm of the valid pixels on a regular pixel stride that keeps M near
    :data:`_SAMPLE_PIXELS`: ``X = R d K^-1 [u, v, 1] + t`` with ``c2w = [R t]``."""
    stride = max(1, int(np.ceil(np.sqrt(depth.size / _SAMPLE_PIXELS))))
    pixels = _pixels(depth.shape[1], depth.shape[2], stride)
    points = []
    for d, k, pose in zip(depth[:, ::stride, ::stride], Ks, c2w):
        z = d.reshape(-1).astype(np.float64)
        keep = z > 0
        camera = (pixels[keep] @ np.linalg.inv(k).T) * z[keep, None]
        points.append(camera @ pose[:3, :3].T + pose[:3, 3])
    return np.concatenate(points)


def _pixels(height: int, width: int, stride: int = 1) -> np.ndarray:
    """Homogeneous pixel coordinates ``(u, v, 1)``, float64 ``(M, 3)``, of every ``stride``-th row and column,
    row-major."""
    v, u = np.mgrid[0:height:stride, 0:width:stride]
    return np.stack([u, v, np.ones_like(u)], axis=-1).reshape(-1, 3).astype(np.float64)


def _surface_blocks(points: np.ndarray, voxel_mm: float) -> int:
    """Distinct blocks (edge ``BLOCK_RESOLUTION * voxel_mm``) that contain the points."""
    cells = np.floor(points / (BLOCK_RESOLUTION * voxel_mm)).astype(np.int64)
    cells -= cells.min(axis=0)
    span = cells.max(axis=0) + 1
    return len(np.unique((cells[:, 0] * span[1] + cells[:, 1]) * span[2] + cells[:, 2]))


def _initial_capacity(surface_blocks: int) -> int:
    """Blocks to allocate up front: about twice the surface's blocks (:func:`_surface_blocks`; the truncation
    band), at most ``4 * MAX_SURFACE_BLOCKS``; open3d's CPU hash map grows beyond it when needed."""
    return min(2 * surface_blocks + 64, 4 * MAX_SURFACE_BLOCKS)


def _auto_voxel_mm(depth: np.ndarray, Ks: np.ndarray, points: np.ndarray) -> tuple[float, int]:
    """Two pixels' footprint at the median depth, ``2 * median(d) / f``, grown by
    ``sqrt(blocks / MAX_SURFACE_BLOCKS)`` (a surface's block count falls as 1 / voxel^2) until the
    points occupy at most :data:`MAX_SURFACE_BLOCKS` blocks; returns the voxel and that block count."""
    focal = float(np.median(np.sqrt(Ks[:, 0, 0] * Ks[:, 1, 1])))
    voxel = 2.0 * float(np.median(depth[depth > 0])) / focal
    while (blocks := _surface_blocks(points, voxel)) > MAX_SURFACE_BLOCKS:
        voxel *= 1.05 * np.sqrt(blocks / MAX_SURFACE_BLOCKS)
    return voxel, blocks


_VERTEX = np.dtype([(name, "<f4") for name in ("x", "y", "z", "nx", "ny", "nz")]
                   + [(name, "u1") for name in ("red", "green", "blue")])
_FACE = np.dtype([("count", "u1"), ("indices", "<i4", (3,))])
_VOXEL_COMMENT = re.compile(r"^comment endo3d TSDF mesh, units mm, voxel (\S+) mm$", re.MULTILINE)
_COUNT = re.compile(r"^element (vertex|face) (\d+)$", re.MULTILINE)


def _ply_header(vertices: int, faces: int, voxel_mm: float) -> str:
    """The header :func:`write_mesh_ply` writes (the voxel size as Python's exact ``repr``)."""
    return "".join([
        "ply\n", "format binary_little_endian 1.0\n", f"comment endo3d TSDF mesh, units mm, voxel {voxel_mm!r} mm\n",
        f"element vertex {vertices}\n", *(f"property float {name}\n" for name in _VERTEX.names[:6]),
        *(f"property uchar {name}\n" for name in _VERTEX.names[6:]),
        f"element face {faces}\n", "property list uchar int vertex_indices\n", "end_header\n",
    ])


def write_mesh_ply(path: str | os.PathLike[str], mesh: FusedMesh) -> None:
    """Write ``mesh`` as a binary little-endian PLY, atomically (temporary file beside ``path``, then rename).

    Vertices: float x y z (mm), nx ny nz, uchar red green blue; faces: ``list uchar int vertex_indices``;
    a comment holds the voxel size. trimesh, open3d, MeshLab and Blender read it.
    """
    vertex = np.empty(len(mesh.vertices), dtype=_VERTEX)
    for i, name in enumerate("xyz"):
        vertex[name] = mesh.vertices[:, i]
        vertex["n" + name] = mesh.normals[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        vertex[name] = mesh.colors[:, i]
    face = np.empty(len(mesh.faces), dtype=_FACE)
    face["count"] = 3
    face["indices"] = mesh.faces
    header = _ply_header(len(vertex), len(face), float(mesh.voxel_mm))
    write_bytes_atomic(path, header.encode("ascii") + vertex.tobytes() + face.tobytes())


def read_mesh_ply(path: str | os.PathLike[str]) -> FusedMesh:
    """Read a mesh written by :func:`write_mesh_ply` (positions and normals come back as float32 values).

    Raises:
        InputError: the file is missing, truncated, or not in :func:`write_mesh_ply`'s layout.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "missing")
    data = path.read_bytes()
    end = data.find(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii", errors="replace")
    voxel, counts = _VOXEL_COMMENT.search(header), dict(_COUNT.findall(header))
    if voxel is None or len(counts) != 2 or header != _ply_header(int(counts["vertex"]), int(counts["face"]),
                                                                   float(voxel.group(1))):
        raise InputError(path, "not a mesh written by endo3d (unexpected PLY header)")
    n, f = int(counts["vertex"]), int(counts["face"])
    if len(data) != end + n * _VERTEX.itemsize + f * _FACE.itemsize:
        raise InputError(path, "truncated or corrupt PLY mesh")
    vertex = np.frombuffer(data, _VERTEX, n, end)
    face = np.frombuffer(data, _FACE, f, end + n * _VERTEX.itemsize)
    if (face["count"] != 3).any() or (f and not 0 <= face["indices"].min() <= face["indices"].max() < n):
        raise InputError(path, "corrupt PLY mesh (faces that are not triangles of its vertices)")
    return FusedMesh(
        vertices=np.stack([vertex[name] for name in "xyz"], axis=1).astype(np.float64),
        faces=face["indices"].astype(np.int64),
        colors=np.stack([vertex[name] for name in ("red", "green", "blue")], axis=1),
        normals=np.stack([vertex[name] for name in ("nx", "ny", "nz")], axis=1).astype(np.float64),
        voxel_mm=float(voxel.group(1)),
    )


def mesh_picture(mesh: FusedMesh, K: np.ndarray, c2w: np.ndarray, width: int, height: int, *,
                 pull_back: float = 0.0) -> np.ndarray:
    """A uint8 ``(height, width, 3)`` picture of ``mesh`` seen by the camera ``K``, ``c2w``.

    Each pixel's ray ``R K^-1 [u, v, 1]`` is cast (open3d ``RaycastingScene``);
    a hit shows the barycentric blend of its triangle's vertex colours times a
    headlight term ``AMBIENT + (1 - AMBIENT) |n . r|`` (``n`` the interpolated
    unit vertex normal, ``r`` the unit ray); a miss shows :data:`BACKGROUND`.

    Args:
        pull_back: with ``pull_back > 0`` the camera first moves back along its
            own -z axis by ``pull_back`` times the median z-depth of the mesh as
            seen from ``c2w`` (the distance to the mesh's centroid when ``c2w``
            sees none of it), so that more of the mesh comes into view.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"mesh_picture: K must be (3, 3), got shape {K.shape}")
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3c.Tensor(np.ascontiguousarray(mesh.vertices, dtype=np.float32)),
                        o3c.Tensor(np.ascontiguousarray(mesh.faces, dtype=np.uint32)))
    rays_cam = _pixels(height, width) @ np.linalg.inv(K).T  # z = 1, so the hit distance is z-depth
    pose = np.asarray(c2w, dtype=np.float64)
    hits = _cast(scene, pose, rays_cam)
    if pull_back > 0:
        z = hits["t_hit"].numpy()
        seen = np.isfinite(z)
        distance = (float(np.median(z[seen])) if seen.any()
                    else float(np.linalg.norm(mesh.vertices.mean(axis=0) - pose[:3, 3])))
        pose = pose.copy()
        pose[:3, 3] -= pull_back * distance * pose[:3, 2]
        hits = _cast(scene, pose, rays_cam)
    picture = np.empty((height * width, 3), dtype=np.float64)
    picture[:] = BACKGROUND
    hit = np.isfinite(hits["t_hit"].numpy())
    face = mesh.faces[hits["primitive_ids"].numpy()[hit].astype(np.int64)]
    uv = hits["primitive_uvs"].numpy()[hit].astype(np.float64)
    bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)[..., None]  # (M, 3, 1)
    normal = (mesh.normals[face] * bary).sum(axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    ray = rays_cam[hit] @ pose[:3, :3].T
    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
    light = AMBIENT + (1.0 - AMBIENT) * np.abs(np.einsum("ij,ij->i", normal, ray))
    picture[hit] = (mesh.colors[face].astype(np.float64) * bary).sum(axis=1) * light[:, None]
    return np.rint(np.clip(picture, 0, 255)).reshape(height, width, 3).astype(np.uint8)


def _cast(scene: o3d.t.geometry.RaycastingScene, c2w: np.ndarray, rays_cam: np.ndarray) -> dict:
    """open3d's ray-cast results for camera-frame rays ``(M, 3)`` from the camera at ``c2w``."""
    rays = np.empty((len(rays_cam), 6), dtype=np.float32)
    rays[:, :3] = c2w[:3, 3]
    rays[:, 3:] = rays_cam @ c2w[:3, :3].T
    return scene.cast_rays(o3c.Tensor(rays))
