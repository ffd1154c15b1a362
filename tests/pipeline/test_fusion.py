"""TSDF fusion: analytic depth maps of a plane and a sphere fuse into meshes on those surfaces; PLY and picture."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
import trimesh
from scipy.spatial import cKDTree

from endo3d.pipeline import fusion
from endo3d.core.errors import InputError
from endo3d.pipeline.fusion import (BACKGROUND, FusedMesh, fuse_tsdf, mesh_picture, read_mesh_ply,
                                    write_mesh_ply)

H, W = 64, 80
K = np.array([[60.0, 0.0, 39.5], [0.0, 60.0, 31.5], [0.0, 0.0, 1.0]])
PLANE_Z = 50.0
COLOUR = (200, 120, 60)


def rotation(rx: float, ry: float) -> np.ndarray:
    """Rotation about x by ``rx`` then y by ``ry`` (radians)."""
    cx, sx, cy, sy = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry)
    return np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV c2w at ``eye`` looking at ``target``, image rows going towards world +y."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    c2w[:3, 3] = eye
    return c2w


def world_rays(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera centre and world directions ``R K^-1 [u, v, 1]`` (camera z = 1) of every pixel, ``(H, W, 3)``."""
    v, u = np.mgrid[0:H, 0:W]
    pixels = np.stack([u, v, np.ones_like(u)], axis=-1).astype(np.float64)
    return c2w[:3, 3], pixels @ np.linalg.inv(K).T @ c2w[:3, :3].T


def plane_views(n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Poses slightly translated and rotated about the origin, and their z-depth of the plane z = PLANE_Z.

    The ray ``o + s d`` meets the plane at ``s = (PLANE_Z - o_z) / d_z``; since ``d`` has camera z = 1, ``s``
    is the z-depth."""
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    depth = np.empty((n, H, W))
    for i in range(n):
        c2w[i, :3, :3] = rotation(*rng.uniform(-0.06, 0.06, 2))
        c2w[i, :3, 3] = rng.uniform(-3, 3, 3)
        origin, d = world_rays(c2w[i])
        depth[i] = (PLANE_Z - origin[2]) / d[..., 2]
    return c2w, depth


def constant_rgb(n: int) -> np.ndarray:
    return np.broadcast_to(np.array(COLOUR, dtype=np.uint8), (n, H, W, 3)).copy()


@pytest.fixture(scope="module")
def plane() -> tuple[FusedMesh, np.ndarray, np.ndarray]:
    c2w, depth = plane_views()
    mesh = fuse_tsdf(depth, constant_rgb(len(depth)), np.ones(depth.shape, bool), K, c2w)
    return mesh, c2w, depth


def seen_count(c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
    """How many of the cameras see each world point inside their image."""
    count = np.zeros(len(points), dtype=int)
    for pose in c2w:
        cam = (points - pose[:3, 3]) @ pose[:3, :3]
        uv = cam @ K.T
        u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
        count += (cam[:, 2] > 0) & (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)
    return count


def test_plane_vertices_lie_on_the_plane(plane):
    mesh, _, depth = plane
    offset = np.abs(mesh.vertices[:, 2] - PLANE_Z)
    assert np.median(offset) < 0.5 * mesh.voxel_mm
    assert offset.max() < mesh.voxel_mm
    # two pixels' footprint at the median depth
    assert mesh.voxel_mm == pytest.approx(2 * np.median(depth) / 60.0, rel=1e-6)


def test_plane_mesh_covers_the_area_seen_three_times(plane):
    mesh, c2w, _ = plane
    x, y = np.meshgrid(np.arange(-60, 60, 0.25), np.arange(-50, 50, 0.25))
    grid = np.stack([x.ravel(), y.ravel(), np.full(x.size, PLANE_Z)], axis=1)
    count = seen_count(c2w, grid)
    seen, unseen = grid[count >= 3], grid[count < 3]  # min_weight defaults to min(3, N)
    # every vertex lies on the part of the plane seen three times ...
    assert cKDTree(seen).query(mesh.vertices)[0].max() < mesh.voxel_mm
    # ... and that part, bar a border of two voxels (marching cubes needs all eight corners), has vertices near it
    inner = seen[cKDTree(unseen).query(seen)[0] > 2 * mesh.voxel_mm]
    assert cKDTree(mesh.vertices).query(inner)[0].max() < mesh.voxel_mm


def test_plane_colours_and_normals(plane):
    mesh, _, _ = plane
    assert mesh.colors.dtype == np.uint8 and mesh.vertices.dtype == np.float64 and mesh.faces.dtype == np.int64
    assert np.abs(mesh.colors.astype(int) - COLOUR).max() <= 1
    np.testing.assert_allclose(np.linalg.norm(mesh.normals, axis=1), 1.0, atol=1e-6)
    assert np.median(mesh.normals[:, 2]) < -0.99  # towards the cameras
    corners = mesh.vertices[mesh.faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert (face_normals[:, 2] < 0).mean() > 0.99  # faces wind counter-clockwise about the normals


def test_sphere_vertices_at_the_radius():
    centre, radius = np.array([0.0, 0.0, 60.0]), 15.0
    eyes = [centre + 45 * np.array([np.sin(a) * np.cos(b), np.sin(b), -np.cos(a) * np.cos(b)])
            for a, b in [(0, 0), (0.6, 0.2), (-0.6, 0.2), (0.3, -0.5), (-0.3, -0.5), (0, 0.7)]]
    c2w = np.stack([look_at(eye, centre) for eye in eyes])
    depth = np.zeros((len(c2w), H, W))
    for i, pose in enumerate(c2w):
        origin, d = world_rays(pose)
        oc = origin - centre
        a, b, c = (d * d).sum(-1), 2 * (d @ oc), oc @ oc - radius**2
        disc = b * b - 4 * a * c
        depth[i] = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), 0.0)
    rgb = constant_rgb(len(c2w))
    mesh = fuse_tsdf(depth, rgb, depth > 0, K, c2w, voxel_mm=0.5)
    assert mesh.voxel_mm == 0.5
    r = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert abs(np.median(r - radius)) < 0.1 * mesh.voxel_mm  # unbiased
    # the spread comes from open3d's nearest-pixel depth lookup (a pixel spans 0.5 mm on the sphere here)
    assert np.median(np.abs(r - radius)) < 0.5 * mesh.voxel_mm
    assert np.abs(r - radius).max() < mesh.voxel_mm
    outward = np.einsum("ij,ij->i", mesh.normals, (mesh.vertices - centre) / r[:, None])
    assert np.median(outward) > 0.99


def test_auto_voxel_is_enlarged_to_bound_the_block_count(monkeypatch):
    c2w, depth = plane_views(n=2)
    monkeypatch.setattr(fusion, "MAX_SURFACE_BLOCKS", 12)
    mesh = fuse_tsdf(depth, constant_rgb(2), np.ones(depth.shape, bool), K, c2w)
    assert mesh.voxel_mm > 2 * 2 * np.median(depth) / 60.0
    points = fusion._sample_points(depth.astype(np.float32), np.broadcast_to(K, (2, 3, 3)), c2w)
    assert fusion._surface_blocks(points, mesh.voxel_mm) <= 12


def test_masked_and_far_pixels_are_not_fused():
    c2w, depth = plane_views(n=3)
    valid = np.ones(depth.shape, bool)
    valid[:, :, : W // 2] = False  # left half masked out in every view
    mesh = fuse_tsdf(depth, constant_rgb(3), valid, K, c2w, min_weight=1)
    assert mesh.vertices[:, 0].max() > 10 and mesh.vertices[:, 0].min() > -6
    with pytest.raises(ValueError, match="no valid depth"):
        fuse_tsdf(depth, constant_rgb(3), valid, K, c2w, max_depth_mm=PLANE_Z - 10)


def test_float_rgb_and_per_frame_intrinsics():
    c2w, depth = plane_views(n=3)
    rgb = np.broadcast_to(np.array(COLOUR, np.float32) / 255, (3, H, W, 3))
    mesh = fuse_tsdf(depth, rgb, np.ones(depth.shape, bool), np.stack([K] * 3), c2w)
    assert np.abs(mesh.colors.astype(int) - COLOUR).max() <= 1


def test_bad_input_raises_value_error():
    c2w, depth = plane_views(n=2)
    rgb, valid = constant_rgb(2), np.ones(depth.shape, bool)
    with pytest.raises(ValueError, match="no valid depth"):
        fuse_tsdf(depth, rgb, np.zeros(depth.shape, bool), K, c2w)
    with pytest.raises(ValueError, match="no valid depth"):
        fuse_tsdf(np.zeros_like(depth), rgb, valid, K, c2w)
    with pytest.raises(ValueError, match="rgb must have shape"):
        fuse_tsdf(depth, rgb[:, :-1], valid, K, c2w)
    with pytest.raises(ValueError, match="empty"):  # each surface point seen by at most two views
        fuse_tsdf(depth, rgb, valid, K, c2w, min_weight=3)


def test_ply_round_trip(plane, tmp_path):
    mesh, _, _ = plane
    path = tmp_path / "mesh.ply"
    write_mesh_ply(path, mesh)
    assert [p.name for p in tmp_path.iterdir()] == ["mesh.ply"]  # no temporary file left behind
    loaded = trimesh.load(path, process=False)
    assert len(loaded.vertices) == len(mesh.vertices) and len(loaded.faces) == len(mesh.faces)
    np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-4)
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], mesh.colors)
    legacy = o3d.io.read_triangle_mesh(str(path))
    assert legacy.has_vertex_colors() and legacy.has_vertex_normals()
    np.testing.assert_allclose(np.asarray(legacy.vertex_normals), mesh.normals, atol=1e-6)
    back = read_mesh_ply(path)
    assert back.voxel_mm == mesh.voxel_mm  # exact
    np.testing.assert_array_equal(back.vertices, mesh.vertices.astype(np.float32))
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.colors, mesh.colors)
    np.testing.assert_array_equal(back.normals, mesh.normals.astype(np.float32))


def test_read_mesh_ply_rejects_other_files(plane, tmp_path):
    mesh, _, _ = plane
    with pytest.raises(InputError, match="missing"):
        read_mesh_ply(tmp_path / "none.ply")
    other = tmp_path / "other.ply"
    o3d.io.write_triangle_mesh(str(other), o3d.geometry.TriangleMesh.create_box())
    with pytest.raises(InputError, match="unexpected PLY header"):
        read_mesh_ply(other)
    cut = tmp_path / "cut.ply"
    write_mesh_ply(cut, mesh)
    cut.write_bytes(cut.read_bytes()[:-5])
    with pytest.raises(InputError, match="truncated"):
        read_mesh_ply(cut)


def test_mesh_picture(plane):
    mesh, c2w, _ = plane
    centre = np.eye(4)
    picture = mesh_picture(mesh, K, centre, W, H)
    assert picture.shape == (H, W, 3) and picture.dtype == np.uint8
    covered = (picture != BACKGROUND).any(axis=2)
    assert covered.mean() > 0.7
    # the plane faces the camera: headlight term ~1 at the image centre
    assert np.abs(picture[H // 2, W // 2].astype(int) - COLOUR).max() <= 3
    pulled = mesh_picture(mesh, K, centre, W, H, pull_back=1.0)  # twice as far: the mesh looks half as large
    covered_pulled = (pulled != BACKGROUND).any(axis=2)
    assert covered_pulled[H // 2, W // 2] and not covered_pulled[0, 0]
    assert covered_pulled.mean() == pytest.approx(covered.mean() / 4, rel=0.25)
    away = centre.copy()
    away[:3, :3] = rotation(np.pi, 0.0)
    assert (mesh_picture(mesh, K, away, W, H) == BACKGROUND).all()
