"""Tests of endo3d.geometry.depth against analytic planes and spheres."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from endo3d.core import ShapeError
from endo3d.geometry import (
    Camera,
    axis_angle_to_matrix,
    depth_to_normals,
    depth_to_points,
    depth_to_points_from_rays,
    pixel_grid,
    pose_from_rt,
    reproject,
    sample_image,
)

PINHOLE = Camera("pinhole", 96, 80, [[90.0, 0.0, 47.5], [0.0, 92.0, 39.5], [0.0, 0.0, 1.0]])
CAMERAS = {
    "pinhole": PINHOLE,
    # The corners of this one lie beyond the fold of its distortion: no ray, no point.
    "opencv": Camera("opencv", 640, 512, [[400.0, 0.0, 319.5], [0.0, 400.0, 255.5], [0.0, 0.0, 1.0]],
                     (-0.3, 0.1, 1e-3, -1e-3, -0.02)).scaled(160, 128),
    # 160 degrees across the width: the corners see beyond 90 degrees (d_z <= 0).
    "fisheye": Camera.from_fov("fisheye", 160, 128, 160.0, (0.05, -0.01, 0.002, -0.0005)),
}


def _rays_z1(camera: Camera) -> np.ndarray:
    """``K^-1 [u, v, 1]`` for every pixel of a pinhole camera, ``(H, W, 3)``."""
    v, u = np.mgrid[0:camera.height, 0:camera.width].astype(np.float64)
    return np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(camera.K).T


def _plane_depth(camera: Camera, normal: np.ndarray, point: np.ndarray) -> np.ndarray:
    """z-depth of the plane through ``point`` with ``normal``, ``(H, W)``."""
    return float(normal @ point) / (_rays_z1(camera) @ normal)


def _angles_deg(a: torch.Tensor, b: np.ndarray) -> np.ndarray:
    """Angle between unit vectors ``a`` ``(3, H, W)`` and ``b`` ``(H, W, 3)`` or ``(3,)``, in degrees."""
    cos = np.sum(a.permute(1, 2, 0).double().numpy() * b, axis=-1)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _unit(v: list[float]) -> np.ndarray:
    x = np.asarray(v, dtype=np.float64)
    return x / np.linalg.norm(x)


@pytest.mark.parametrize("model", ["pinhole", "opencv", "fisheye"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_depth_to_points_projects_to_pixel_grid(model: str, dtype: torch.dtype) -> None:
    cam = CAMERAS[model]
    g = torch.Generator().manual_seed(0)
    depth = (10 + 90 * torch.rand(2, 1, cam.height, cam.width, generator=g, dtype=torch.float64)).to(dtype)
    depth[0, 0, 5, 7] = 0.0
    points = depth_to_points(depth, cam)
    assert points.shape == (2, 3, cam.height, cam.width) and points.dtype == dtype
    rays = cam.rays(torch.float64)
    has_ray = (torch.isfinite(rays).all(dim=-1) & (rays[..., 2] > 0))
    valid = (depth[:, 0] > 0) & has_ray
    assert bool((points.permute(0, 2, 3, 1)[~valid] == 0).all())
    assert bool(valid[:, ~has_ray].logical_not().all()) and bool(has_ray.any())
    if model != "pinhole":
        assert not bool(has_ray.all())
    assert torch.allclose(points[:, 2][valid], depth[:, 0][valid])
    uv, in_view = cam.project(points.permute(0, 2, 3, 1))
    grid = pixel_grid(cam.height, cam.width, dtype=dtype).expand(2, -1, -1, -1)
    assert bool(in_view[valid].all())
    tol = 1e-3 if dtype == torch.float32 else 1e-6
    assert float((uv[valid] - grid[valid]).abs().max()) < tol


def test_depth_to_points_from_rays() -> None:
    g = torch.Generator().manual_seed(1)
    depth = 5 + 20 * torch.rand(2, 1, 6, 7, generator=g, dtype=torch.float64)
    rays = torch.randn(2, 6, 7, 3, generator=g, dtype=torch.float64)
    rays[..., 2] = rays[..., 2].abs() + 0.1
    rays[1, 2, 3] = float("nan")
    rays[0, 1, 1, 2] = -0.5
    points = depth_to_points_from_rays(depth, rays)
    # Only the direction of a ray matters, not its length.
    assert torch.allclose(depth_to_points_from_rays(depth, 3 * rays), points, equal_nan=False)
    expected = depth[:, 0, ..., None] * rays / rays[..., 2:]
    expected[1, 2, 3] = 0.0
    expected[0, 1, 1] = 0.0
    assert torch.allclose(points.permute(0, 2, 3, 1), expected, atol=1e-12)
    shared = depth_to_points_from_rays(depth, rays[0].abs())
    assert torch.allclose(shared[1], depth_to_points_from_rays(depth[1:], rays[0].abs())[0])
    with pytest.raises(ShapeError, match="rays"):
        depth_to_points_from_rays(depth, rays[:, :5])
    with pytest.raises(ShapeError, match="depth"):
        depth_to_points(depth, PINHOLE)


def test_normals_of_tilted_plane() -> None:
    normal = _unit([0.3, -0.2, -1.0])  # facing the camera
    depth = torch.from_numpy(_plane_depth(PINHOLE, normal, np.array([0.0, 0.0, 50.0])))[None, None].float()
    normals = depth_to_normals(depth, PINHOLE)
    assert normals.shape == (1, 3, 80, 96) and normals.dtype == torch.float32
    err = _angles_deg(normals[0], normal)
    assert float(np.median(err)) < 0.5 and float(err.max()) < 0.05
    assert torch.allclose(normals.norm(dim=1), torch.ones(()), atol=1e-5)


def test_normals_of_sphere() -> None:
    centre, radius = np.array([4.0, -3.0, 60.0]), 25.0
    r = _rays_z1(PINHOLE)
    rc, rr = r @ centre, np.sum(r * r, axis=-1)
    disc = rc**2 - rr * (centre @ centre - radius**2)
    hit = disc > 0
    t = np.where(hit, (rc - np.sqrt(np.where(hit, disc, 0.0))) / rr, 0.0)  # z-depth, since r_z = 1
    depth = torch.from_numpy(t)[None, None]
    expected = (t[..., None] * r - centre) / radius  # outward normal, towards the camera on the visible side
    normals = depth_to_normals(depth, PINHOLE)
    valid = normals.norm(dim=1)[0].numpy() > 0
    assert valid.sum() > 0.9 * hit.sum()
    assert not valid[~hit].any()
    err = _angles_deg(normals[0], expected)[valid]
    assert float(np.median(err)) < 0.5
    points = depth_to_points(depth, PINHOLE)
    assert bool(((normals * points).sum(dim=1)[0][torch.from_numpy(valid)] < 0).all())


def test_normals_at_depth_discontinuity() -> None:
    near, far = _unit([0.2, 0.1, -1.0]), _unit([-0.4, 0.3, -1.0])
    depth_near = _plane_depth(PINHOLE, near, np.array([0.0, 0.0, 30.0]))
    depth_far = _plane_depth(PINHOLE, far, np.array([0.0, 0.0, 70.0]))
    left = np.arange(PINHOLE.width)[None, :] < 40
    depth = torch.from_numpy(np.where(left, depth_near, depth_far))[None, None]
    normals = depth_to_normals(depth, PINHOLE)
    expected = np.where(left[..., None], near, far)
    # Every pixel, the two next to the step included, takes its tangent from its own plane.
    assert float(_angles_deg(normals[0], expected).max()) < 0.01


def test_normals_zero_where_not_computable() -> None:
    depth = torch.zeros(1, 1, PINHOLE.height, PINHOLE.width, dtype=torch.float64)
    depth[..., 10, 10] = 20.0  # isolated pixel: no neighbour pair
    depth[..., 30:40, 50] = 20.0  # a one-pixel-wide column: no pair along u
    depth[..., 50:60, 20:30] = 25.0  # a patch: computable
    normals = depth_to_normals(depth, PINHOLE)
    norm = normals.norm(dim=1)[0]
    assert float(norm[10, 10]) == 0 and float(norm[30:40, 50].abs().max()) == 0
    assert torch.allclose(norm[50:60, 20:30], torch.ones((), dtype=torch.float64))
    assert float(norm[depth[0, 0] == 0].abs().max()) == 0


def test_reproject_plane_matches_homography() -> None:
    normal = _unit([0.25, -0.15, -1.0])
    point = np.array([1.0, -2.0, 45.0])
    depth = torch.from_numpy(_plane_depth(PINHOLE, normal, point))[None, None]
    R = axis_angle_to_matrix(torch.tensor([0.05, -0.08, 0.03], dtype=torch.float64))
    t = torch.tensor([3.0, -1.5, 2.0], dtype=torch.float64)
    T = pose_from_rt(R, t)[None]
    camera_j = Camera("pinhole", 80, 64, [[70.0, 0.0, 41.0], [0.0, 71.0, 30.0], [0.0, 0.0, 1.0]])
    uv, z, valid = reproject(depth, PINHOLE, T, camera_j)
    assert uv.shape == (1, 2, 80, 96) and z.shape == (1, 1, 80, 96) and valid.shape == (1, 1, 80, 96)
    assert bool(valid.all())
    # Plane n^T X = d in camera i: x_j ~ K_j (R + t n^T / d) K_i^-1 x_i, and z_j = z_i (H x_i)_3.
    d = float(normal @ point)
    H = camera_j.K @ (R.numpy() + np.outer(t.numpy(), normal) / d) @ np.linalg.inv(PINHOLE.K)
    v, u = np.mgrid[0:80, 0:96].astype(np.float64)
    mapped = np.stack([u, v, np.ones_like(u)], axis=-1) @ H.T
    expected_uv = mapped[..., :2] / mapped[..., 2:]
    expected_z = depth[0, 0].numpy() * mapped[..., 2]
    assert np.allclose(uv[0].permute(1, 2, 0).numpy(), expected_uv, atol=1e-9)
    assert np.allclose(z[0, 0].numpy(), expected_z, atol=1e-9)


def test_reproject_identity_and_invalid() -> None:
    g = torch.Generator().manual_seed(2)
    depth = 10 + 30 * torch.rand(2, 1, PINHOLE.height, PINHOLE.width, generator=g)
    depth[1, 0, :5] = 0.0
    uv, z, valid = reproject(depth, PINHOLE, torch.eye(4).expand(2, 4, 4))
    grid = pixel_grid(PINHOLE.height, PINHOLE.width).permute(2, 0, 1)
    assert torch.equal(valid, depth > 0)
    assert torch.allclose(uv[0], grid, atol=1e-3) and torch.allclose(z, depth)
    assert float(uv[1, :, :5].abs().max()) == 0
    behind = pose_from_rt(torch.eye(3), torch.tensor([0.0, 0.0, -25.0]))[None].expand(2, 4, 4)
    _, z_behind, valid_behind = reproject(depth, PINHOLE, behind)
    assert torch.equal(valid_behind, (depth > 25.0))
    assert bool((z_behind[~valid_behind] == 0).all())


def test_sample_image() -> None:
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 5, 7, generator=g)
    grid = pixel_grid(5, 7).permute(2, 0, 1).expand(2, -1, -1, -1)
    assert torch.equal(sample_image(image, grid), image)
    assert torch.equal(sample_image(image, grid, mode="nearest"), image)
    half = torch.tensor([2.5, 1.0]).reshape(1, 2, 1, 1).expand(2, 2, 1, 1)
    expected = (image[:, :, 1, 2] + image[:, :, 1, 3]) / 2
    assert torch.allclose(sample_image(image, half)[..., 0, 0], expected, atol=1e-6)
    outside = torch.tensor([[-1.0, 7.0, 3.0, 3.0], [2.0, 2.0, -1.0, 5.0]]).reshape(1, 2, 1, 4).expand(2, 2, 1, 4)
    assert float(sample_image(image, outside).abs().max()) == 0
    edge = torch.tensor([-0.5, 0.0]).reshape(1, 2, 1, 1).expand(2, 2, 1, 1)
    assert torch.allclose(sample_image(image, edge)[..., 0, 0], image[:, :, 0, 0] / 2)
    with pytest.raises(ShapeError, match="uv"):
        sample_image(image, grid[:1])
    with pytest.raises(ValueError, match="mode"):
        sample_image(image, grid, mode="bicubic")


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_sample_image_matches_grid_sample(mode: str) -> None:
    g = torch.Generator().manual_seed(5)
    image = torch.rand(2, 3, 9, 11, generator=g, dtype=torch.float64)
    uv = torch.rand(2, 2, 4, 6, generator=g, dtype=torch.float64) * 14 - 1.5  # inside, across and beyond the border
    uv[:, :, 0, 0] = 0.3  # away from a nearest-mode tie
    grid = torch.stack([uv[:, 0] * 2 / 10 - 1, uv[:, 1] * 2 / 8 - 1], dim=-1)
    expected = torch.nn.functional.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=True)
    assert torch.allclose(sample_image(image, uv, mode=mode), expected, atol=1e-12)


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(4)
    cam = Camera("pinhole", 6, 5, [[5.0, 0.0, 2.5], [0.0, 5.0, 2.0], [0.0, 0.0, 1.0]])
    depth = (10 + torch.rand(1, 1, 5, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: depth_to_normals(d, cam), (depth,))
    rays = cam.rays(torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(depth_to_points_from_rays, (depth, rays))
    T = pose_from_rt(axis_angle_to_matrix(torch.tensor([0.1, 0.0, -0.05], dtype=torch.float64)),
                     torch.tensor([0.5, 0.2, 1.0], dtype=torch.float64))[None].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d, t: reproject(d, cam, t)[:2], (depth, T))
    image = torch.rand(1, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    uv = (torch.rand(1, 2, 3, 4, generator=g, dtype=torch.float64) * 4 + 0.3).requires_grad_(True)
    assert torch.autograd.gradcheck(sample_image, (image, uv))
