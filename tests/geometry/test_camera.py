"""Tests of endo3d.geometry.camera: the three projection models, their inverse, Camera."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kornia.geometry.calibration import distort_points
from kornia.geometry.camera import distort_points_kannala_brandt

from endo3d.core import ShapeError
from endo3d.geometry import Camera, pixel_grid, project, unproject

DTYPES = [torch.float32, torch.float64]
MODELS = ["pinhole", "opencv", "fisheye"]
ROUND_TRIP_PX = {torch.float32: 1e-3, torch.float64: 1e-6}
OPENCV_DIST = (-0.3, 0.1, 1e-3, -1e-3, -0.02)
FISHEYE_DIST = (0.05, -0.01, 0.002, -0.0005)

# Cameras whose whole image is reached by rays (the opencv one at fx = 500 stays
# inside the fold of OPENCV_DIST; see test_opencv_fold_of_example_camera).
CAMERAS = {
    "pinhole": Camera("pinhole", 640, 512, [[400.0, 1.5, 319.5], [0.0, 410.0, 255.5], [0.0, 0.0, 1.0]]),
    "opencv": Camera("opencv", 640, 512, [[500.0, 0.0, 321.0], [0.0, 505.0, 254.0], [0.0, 0.0, 1.0]], OPENCV_DIST),
    "fisheye": Camera.from_fov("fisheye", 640, 512, 160.0, FISHEYE_DIST),
}


def _random_pixels(shape: tuple[int, ...], camera: Camera, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([camera.width - 1.0, camera.height - 1.0], dtype=torch.float64)
    return (torch.rand(*shape, 2, generator=g, dtype=torch.float64) * size).to(dtype)


def _random_points(n: int, seed: int = 0, max_tan: float = 0.6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = 5.0 + 45.0 * torch.rand(n, generator=g, dtype=torch.float64)
    xy = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1) * max_tan * z[:, None]
    return torch.cat([xy, z[:, None]], dim=-1)


def test_pixel_grid() -> None:
    grid = pixel_grid(3, 4, dtype=torch.float64)
    assert grid.shape == (3, 4, 2) and grid.dtype == torch.float64
    assert grid[2, 1].tolist() == [1.0, 2.0]
    assert grid[..., 0].max() == 3 and grid[..., 1].max() == 2


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
@pytest.mark.parametrize("n", [0, 1, 50])
def test_round_trip_pixels(model: str, dtype: torch.dtype, batch: tuple[int, ...], n: int) -> None:
    cam = CAMERAS[model]
    K, dist = cam.K_tensor(dtype), cam.dist_tensor(dtype)
    uv = _random_pixels((*batch, n), cam, dtype)
    rays = unproject(uv, K, dist, model)
    assert rays.shape == (*batch, n, 3) and rays.dtype == dtype
    uv2, valid = project(rays, K, dist, model)
    assert uv2.shape == (*batch, n, 2) and valid.shape == (*batch, n) and valid.dtype == torch.bool
    if n:
        assert torch.allclose(torch.linalg.vector_norm(rays, dim=-1), torch.ones((), dtype=dtype), atol=1e-6)
        assert bool(valid.all())
        assert float((uv2 - uv).abs().max()) < ROUND_TRIP_PX[dtype]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_points(model: str, dtype: torch.dtype) -> None:
    cam = CAMERAS[model]
    points = _random_points(200).to(dtype)
    uv, valid = cam.project(points)
    assert bool(valid.all())
    rays = cam.unproject(uv)
    expected = points / torch.linalg.vector_norm(points, dim=-1, keepdim=True)
    assert torch.allclose(rays, expected, atol=1e-5 if dtype == torch.float32 else 1e-11)


@pytest.mark.parametrize("model", MODELS)
def test_batched_intrinsics_match_per_item(model: str) -> None:
    cams = [CAMERAS[model], CAMERAS[model].scaled(480, 300)]
    K = torch.stack([c.K_tensor(torch.float64) for c in cams])
    dist = torch.stack([c.dist_tensor(torch.float64) for c in cams])
    points = _random_points(12).reshape(2, 2, 3, 3)
    uv, valid = project(points, K, dist, model)
    rays = unproject(uv, K, dist, model)
    for b, cam in enumerate(cams):
        uv_b, valid_b = cam.project(points[b])
        assert torch.allclose(uv[b], uv_b, atol=1e-12) and torch.equal(valid[b], valid_b)
        assert torch.allclose(rays[b], cam.unproject(uv_b), atol=1e-12)
    # A batched K with a shared dist gives the same.
    assert torch.allclose(project(points, K, dist[0], model)[0][0], uv[0], atol=1e-12)


@pytest.mark.parametrize("num_coeffs", [4, 5])
def test_opencv_matches_kornia(num_coeffs: int) -> None:
    K = torch.tensor([[420.0, 0.0, 300.0], [0.0, 410.0, 260.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    dist = torch.tensor([-0.25, 0.08, 2e-3, -1.5e-3, -0.015][:num_coeffs], dtype=torch.float64)
    points = _random_points(300, seed=1, max_tan=0.8)
    undistorted = (points / points[:, 2:]) @ K.T
    expected = distort_points(undistorted[None, :, :2], K[None], dist[None])[0]
    uv, valid = project(points, K, dist, "opencv")
    assert bool(valid.all())
    assert torch.allclose(uv, expected, atol=1e-9)


def test_fisheye_matches_kornia() -> None:
    fx, fy, cx, cy = 230.0, 232.0, 320.0, 250.0
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    dist = torch.tensor(FISHEYE_DIST, dtype=torch.float64)
    points = _random_points(300, seed=2, max_tan=2.0)
    params = torch.tensor([fx, fy, cx, cy, *FISHEYE_DIST], dtype=torch.float64)
    expected = distort_points_kannala_brandt(points[:, :2] / points[:, 2:], params)
    uv, valid = project(points, K, dist, "fisheye")
    assert bool(valid.all())
    assert torch.allclose(uv, expected, atol=1e-9)


def test_fisheye_without_distortion_is_equidistant() -> None:
    fx, fy, cx, cy = 200.0, 210.0, 319.5, 255.5
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    direction = torch.randn(500, 3, generator=g, dtype=torch.float64)
    points = direction * (1 + 20 * torch.rand(500, 1, generator=g, dtype=torch.float64))
    uv, valid = project(points, K, torch.zeros(4, dtype=torch.float64), "fisheye")
    theta = torch.acos(direction[:, 2] / direction.norm(dim=-1))
    phi = torch.atan2(direction[:, 1], direction[:, 0])
    assert bool(valid.all())  # random directions, some behind the camera, none exactly on -z
    assert torch.allclose(uv[:, 0], cx + fx * theta * torch.cos(phi), atol=1e-9)
    assert torch.allclose(uv[:, 1], cy + fy * theta * torch.sin(phi), atol=1e-9)


def test_validity() -> None:
    K = CAMERAS["pinhole"].K_tensor(torch.float64)
    points = torch.tensor([[0.0, 0.0, 1.0], [1.0, 2.0, 0.0], [1.0, 2.0, -3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    uv, valid = project(points, K, None, "pinhole")
    assert valid.tolist() == [True, False, False, False]
    assert bool(torch.isfinite(uv).all())
    fisheye = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, -1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 0.0]],
                           dtype=torch.float64)
    uv, valid = project(fisheye, K, torch.zeros(4, dtype=torch.float64), "fisheye")
    assert valid.tolist() == [True, True, True, False, False]
    assert bool(torch.isfinite(uv).all())


def test_full_skew_intrinsics() -> None:
    K = torch.tensor([[400.0, 3.0, 320.0], [0.0, 380.0, 240.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    points = _random_points(20, seed=4)
    uv, _ = project(points, K, torch.zeros(0, dtype=torch.float64), "pinhole")
    assert torch.allclose(uv, ((points / points[:, 2:]) @ K.T)[:, :2], atol=1e-10)
    rays = unproject(uv, K, None, "pinhole")
    assert torch.allclose(rays, points / points.norm(dim=-1, keepdim=True), atol=1e-12)


def test_fisheye_gradient_on_axis() -> None:
    K = CAMERAS["fisheye"].K_tensor(torch.float64)
    dist = CAMERAS["fisheye"].dist_tensor(torch.float64)
    points = torch.tensor([[0.0, 0.0, 8.0]], dtype=torch.float64, requires_grad=True)
    uv, _ = project(points, K, dist, "fisheye")
    (du,) = torch.autograd.grad(uv[0, 0], points)
    # On the axis d theta_d / dx = 1 / z, so du/dx = fx / z, and u does not change along y or z.
    assert torch.allclose(du, torch.tensor([[K[0, 0] / 8.0, 0.0, 0.0]], dtype=torch.float64), atol=1e-12)
    centre = K[:2, 2].clone().requires_grad_(True)
    ray = unproject(centre, K, dist, "fisheye")
    (dray,) = torch.autograd.grad(ray[0], centre)
    assert torch.allclose(ray.detach(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(dray, torch.tensor([1 / K[0, 0], 0.0], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("model", MODELS)
def test_gradcheck_project(model: str) -> None:
    cam = CAMERAS[model]
    K = cam.K_tensor(torch.float64).requires_grad_(True)
    points = _random_points(4, seed=5)
    if model == "fisheye":
        points[0, :2] = 0.0  # on the optical axis
    points.requires_grad_(True)
    if model == "pinhole":
        assert torch.autograd.gradcheck(lambda p, k: project(p, k, None, model)[0], (points, K))
    else:
        dist = cam.dist_tensor(torch.float64).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda p, k, d: project(p, k, d, model)[0], (points, K, dist))


@pytest.mark.parametrize("model", MODELS)
def test_gradcheck_unproject(model: str) -> None:
    cam = CAMERAS[model]
    K = cam.K_tensor(torch.float64).requires_grad_(True)
    uv = _random_pixels((4,), cam, torch.float64, seed=6)
    if model == "fisheye":
        uv[0] = K[:2, 2].detach()  # the principal point
    uv.requires_grad_(True)
    if model == "pinhole":
        assert torch.autograd.gradcheck(lambda x, k: unproject(x, k, None, model), (uv, K))
    else:
        dist = cam.dist_tensor(torch.float64).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x, k, d: unproject(x, k, d, model), (uv, K, dist))


@pytest.mark.parametrize("dtype", DTYPES)
def test_opencv_fold_of_example_camera(dtype: torch.dtype) -> None:
    # k1 = -0.3 folds the image plane back at r_d = max_r r (1 + k1 r^2 + k2 r^4 + k3 r^6) ~ 0.906: the
    # corners of a 640x512 image at fx = 400 (r_d up to 1.02) are reached by no ray.
    cam = Camera("opencv", 640, 512, [[400.0, 0.0, 319.5], [0.0, 400.0, 255.5], [0.0, 0.0, 1.0]], OPENCV_DIST)
    k1, k2, _, _, k3 = OPENCV_DIST
    r = np.linspace(0.0, 3.0, 300001)
    fold = float(np.max(r * (1 + k1 * r**2 + k2 * r**4 + k3 * r**6)))
    uv = pixel_grid(512, 640, dtype=dtype)
    radius = torch.linalg.vector_norm((uv - uv.new_tensor([319.5, 255.5])) / 400.0, dim=-1)
    rays = cam.unproject(uv)
    reached = torch.isfinite(rays).all(dim=-1)
    assert bool(reached[radius < 0.97 * fold].all())
    assert not bool(reached[radius > 1.03 * fold].any())
    uv2, valid = cam.project(rays[reached])
    assert bool(valid.all())
    assert float((uv2 - uv[reached]).abs().max()) < ROUND_TRIP_PX[dtype]


@pytest.mark.parametrize("model", MODELS)
def test_scaled_keeps_rays(model: str) -> None:
    cam = CAMERAS[model]
    small = cam.scaled(480, 256)
    sx, sy = 480 / 640, 256 / 512
    points = _random_points(50, seed=7)
    uv, _ = cam.project(points)
    uv_small, _ = small.project(points)
    assert torch.allclose(uv_small[:, 0], (uv[:, 0] + 0.5) * sx - 0.5, atol=1e-9)
    assert torch.allclose(uv_small[:, 1], (uv[:, 1] + 0.5) * sy - 0.5, atol=1e-9)


@pytest.mark.parametrize("model, hfov", [("pinhole", 90.0), ("pinhole", 70.0), ("fisheye", 160.0)])
def test_from_fov_edge_ray(model: str, hfov: float) -> None:
    cam = Camera.from_fov(model, 320, 240, hfov, (0.0,) * (4 if model == "fisheye" else 0))
    edges = torch.tensor([[-0.5, cam.K[1, 2]], [cam.width - 0.5, cam.K[1, 2]]], dtype=torch.float64)
    rays = cam.unproject(edges)
    angles = torch.rad2deg(torch.acos(rays[:, 2]))
    assert torch.allclose(angles, torch.tensor(hfov / 2, dtype=torch.float64), atol=1e-9)


def test_errors() -> None:
    K = torch.eye(3)
    points = torch.ones(5, 3)
    with pytest.raises(ValueError, match="unknown camera model"):
        project(points, K, None, "kannala")
    with pytest.raises(ValueError, match="needs 4 or 5 distortion coefficients, got 3"):
        project(points, K, torch.zeros(3), "opencv")
    with pytest.raises(ValueError, match="needs 4 distortion coefficients, got 0"):
        unproject(torch.ones(5, 2), K, None, "fisheye")
    with pytest.raises(ShapeError, match="points"):
        project(torch.ones(5, 2), K, None, "pinhole")
    with pytest.raises(ShapeError, match="uv"):
        unproject(torch.ones(5, 3), K, None, "pinhole")
    with pytest.raises(ShapeError, match="K"):
        project(points, torch.eye(4), None, "pinhole")
    with pytest.raises(ShapeError, match="points"):
        project(torch.ones(3, 5, 3), torch.eye(3).expand(2, 3, 3), None, "pinhole")
    with pytest.raises(ShapeError, match="dist"):
        project(torch.ones(2, 5, 3), torch.eye(3).expand(2, 3, 3), torch.zeros(3, 4), "fisheye")
    with pytest.raises(ValueError, match="invalid camera: unknown camera model"):
        Camera("kb", 4, 4, np.eye(3)).rays()


def test_camera_tensors_and_methods() -> None:
    cam = CAMERAS["opencv"]
    K = cam.K_tensor(torch.float64)
    assert K.shape == (3, 3) and K.dtype == torch.float64 and np.array_equal(K.numpy(), cam.K)
    assert cam.dist_tensor().shape == (5,) and cam.dist_tensor().dtype == torch.float32
    assert CAMERAS["pinhole"].dist_tensor().shape == (0,)
    points = _random_points(10, seed=8).float()
    uv, valid = cam.project(points)
    uv_f, valid_f = project(points, cam.K_tensor(), cam.dist_tensor(), "opencv")
    assert torch.equal(uv, uv_f) and torch.equal(valid, valid_f)
    assert torch.equal(cam.unproject(uv), unproject(uv, cam.K_tensor(), cam.dist_tensor(), "opencv"))


@pytest.mark.parametrize("model", MODELS)
def test_rays(model: str) -> None:
    cam = CAMERAS[model].scaled(64, 48)
    rays = cam.rays()
    assert rays.shape == (48, 64, 3) and rays.dtype == torch.float32
    assert torch.allclose(torch.linalg.vector_norm(rays, dim=-1), torch.ones(()), atol=1e-6)
    expected = cam.unproject(torch.tensor([[10.0, 7.0]], dtype=torch.float64))[0]
    assert torch.allclose(cam.rays(torch.float64)[7, 10], expected, atol=1e-12)
    rays.fill_(0.0)  # writing into a result must not touch the cache
    assert torch.allclose(cam.rays()[7, 10], expected.float())


def test_rays_follow_in_place_change_of_K() -> None:
    cam = Camera("pinhole", 8, 6, np.array([[10.0, 0.0, 3.5], [0.0, 10.0, 2.5], [0.0, 0.0, 1.0]]))
    before = cam.rays(torch.float64)[0, 0].clone()
    cam.K[0, 0] = 20.0
    after = cam.rays(torch.float64)[0, 0]
    assert not torch.allclose(before, after)
    assert torch.allclose(after, cam.unproject(torch.zeros(1, 2, dtype=torch.float64))[0])


def test_json_round_trip_and_problems() -> None:
    cam = CAMERAS["fisheye"]
    back = Camera.from_json(cam.to_json(), cam.width, cam.height)
    assert back.model == cam.model and back.dist == cam.dist and np.array_equal(back.K, cam.K)
    assert cam.problems() == []
    bad = Camera("opencv", 0, 4, np.eye(3), (0.1, 0.2, 0.3))
    assert bad.problems() == [
        "opencv camera needs 4 or 5 distortion coefficients, got 3",
        "image size 0x4 is not positive",
    ]
