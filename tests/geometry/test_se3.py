"""Tests of endo3d.geometry.se3: rigid transforms, rotation conversions, look_at, checks."""

from __future__ import annotations

import math

import pytest
import torch

from endo3d.core import ShapeError
from endo3d.geometry import (
    Camera,
    axis_angle_to_matrix,
    compose,
    interpolate_pose,
    invert_pose,
    is_valid_pose,
    look_at,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    pose_from_rt,
    pose_problems,
    quaternion_to_matrix,
    relative_pose,
    transform_points,
)

DTYPES = [torch.float32, torch.float64]


def _random_axis_angle(*shape: int, seed: int = 0, max_angle: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(*shape, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    return axis * (max_angle * torch.rand(*shape, 1, generator=g, dtype=torch.float64))


def _random_pose(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    t = 50 * torch.randn(*shape, 3, generator=g, dtype=torch.float64)
    return pose_from_rt(axis_angle_to_matrix(_random_axis_angle(*shape, seed=seed)), t)


def _rot_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
def test_invert_round_trip(dtype: torch.dtype, batch: tuple[int, ...]) -> None:
    T = _random_pose(*batch).to(dtype)
    inv = invert_pose(T)
    assert inv.shape == (*batch, 4, 4) and inv.dtype == dtype
    eye = torch.eye(4, dtype=dtype).expand(*batch, 4, 4)
    atol = 1e-4 if dtype == torch.float32 else 1e-12
    assert torch.allclose(compose(T, inv), eye, atol=atol)
    assert torch.allclose(inv, torch.linalg.inv(T), atol=atol)


def test_transform_points_matches_homogeneous_product() -> None:
    T = _random_pose(seed=1)
    points = torch.randn(4, 5, 3, dtype=torch.float64)
    homogeneous = torch.cat([points, torch.ones(4, 5, 1, dtype=torch.float64)], dim=-1)
    expected = (homogeneous @ T.T)[..., :3]
    assert torch.allclose(transform_points(T, points), expected, atol=1e-12)
    batched = _random_pose(2, seed=2)
    points = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    out = transform_points(batched, points)
    assert out.shape == points.shape
    for b in range(2):
        assert torch.allclose(out[b], transform_points(batched[b], points[b]), atol=1e-12)
    assert transform_points(T, torch.zeros(0, 3, dtype=torch.float64)).shape == (0, 3)
    assert transform_points(batched, torch.randn(2, 3, dtype=torch.float64)).shape == (2, 3)
    with pytest.raises(ShapeError, match="points"):
        transform_points(batched, torch.randn(3, 4, 3, dtype=torch.float64))
    with pytest.raises(ShapeError, match="T"):
        transform_points(torch.eye(3, dtype=torch.float64), points)


def test_relative_pose_maps_camera_i_to_camera_j() -> None:
    c2w_i, c2w_j = _random_pose(3, seed=3), _random_pose(3, seed=4)
    world = torch.randn(3, 10, 3, dtype=torch.float64)
    x_i = transform_points(invert_pose(c2w_i), world)
    x_j = transform_points(invert_pose(c2w_j), world)
    assert torch.allclose(transform_points(relative_pose(c2w_i, c2w_j), x_i), x_j, atol=1e-10)


def test_pose_from_rt_broadcasts() -> None:
    R = axis_angle_to_matrix(_random_axis_angle(2, seed=5))
    t = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    T = pose_from_rt(R, t)
    assert T.shape == (2, 4, 4)
    assert torch.equal(T[:, :3, :3], R) and torch.equal(T[:, :3, 3], t.expand(2, 3))
    assert torch.equal(T[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64).expand(2, 4))


def test_look_at() -> None:
    eye = torch.tensor([[10.0, -20.0, 5.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 3.0, 40.0], [100.0, 0.0, 0.0]], dtype=torch.float64)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    c2w = look_at(eye, target, up)
    assert c2w.shape == (2, 4, 4) and is_valid_pose(c2w, atol=1e-12)
    assert torch.allclose(torch.linalg.det(c2w[:, :3, :3]), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(c2w[:, :3, 3], eye)
    cam = Camera.from_fov("pinhole", 64, 48, 60.0)
    w2c = invert_pose(c2w)
    uv, valid = cam.project(transform_points(w2c, target[:, None])[:, 0])
    assert bool(valid.all())
    assert torch.allclose(uv, torch.tensor(cam.K[:2, 2]).expand(2, 2), atol=1e-9)
    # A point above the target (along world up) appears straight above the image centre.
    uv_up, _ = cam.project(transform_points(w2c, (target + 10 * up)[:, None])[:, 0])
    assert bool((uv_up[:, 1] < uv[:, 1] - 1).all())
    assert torch.allclose(uv_up[:, 0], uv[:, 0], atol=1e-9)
    # Looking along +x with up = +z, camera y (image down) is world -z and x is world -y.
    assert torch.allclose(c2w[1, :3, :3], torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="parallel"):
        look_at(eye[1], target[1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="coincide"):
        look_at(eye[0], eye[0], up)


@pytest.mark.parametrize("dtype", DTYPES)
def test_axis_angle_round_trip(dtype: torch.dtype) -> None:
    aa = _random_axis_angle(2, 5, seed=6).to(dtype)
    R = axis_angle_to_matrix(aa)
    assert R.shape == (2, 5, 3, 3) and R.dtype == dtype
    assert is_valid_pose(pose_from_rt(R, torch.zeros(3, dtype=dtype)), atol=1e-5)
    atol = 1e-4 if dtype == torch.float32 else 1e-9
    assert torch.allclose(matrix_to_axis_angle(R), aa, atol=atol)
    quarter = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    assert torch.allclose(quarter, _rot_z(math.pi / 2), atol=1e-12)
    assert torch.allclose(quarter @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
                          torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quaternion_round_trip(dtype: torch.dtype) -> None:
    R = axis_angle_to_matrix(_random_axis_angle(7, seed=7)).to(dtype)
    q = matrix_to_quaternion(R)
    assert q.shape == (7, 4) and bool((q[:, 0] >= 0).all())
    assert torch.allclose(q.norm(dim=-1), torch.ones((), dtype=dtype), atol=1e-5)
    assert torch.allclose(quaternion_to_matrix(q), R, atol=1e-5 if dtype == torch.float32 else 1e-12)
    half = math.sqrt(0.5)
    known = torch.tensor([half, 0.0, 0.0, half], dtype=torch.float64)  # 90 degrees about +z, wxyz
    assert torch.allclose(quaternion_to_matrix(known), _rot_z(math.pi / 2), atol=1e-12)
    assert torch.allclose(matrix_to_quaternion(_rot_z(math.pi / 2)), known, atol=1e-12)


def test_interpolate_pose() -> None:
    T0, T1 = _random_pose(4, seed=8), _random_pose(4, seed=9)
    assert torch.allclose(interpolate_pose(T0, T1, 0.0), T0, atol=1e-9)
    assert torch.allclose(interpolate_pose(T0, T1, 1.0), T1, atol=1e-9)
    a = pose_from_rt(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64))
    b = pose_from_rt(_rot_z(math.pi / 2), torch.tensor([10.0, -4.0, 2.0], dtype=torch.float64))
    mid = interpolate_pose(a, b, 0.5)
    assert torch.allclose(mid[:3, :3], _rot_z(math.pi / 4), atol=1e-12)
    assert torch.allclose(mid[:3, 3], torch.tensor([5.0, -2.0, 1.0], dtype=torch.float64), atol=1e-12)
    alphas = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    batch = interpolate_pose(a.expand(4, 4, 4), b.expand(4, 4, 4), alphas)
    for i, alpha in enumerate(alphas.tolist()):
        assert torch.allclose(batch[i, :3, :3], _rot_z(alpha * math.pi / 2), atol=1e-12)
    assert is_valid_pose(interpolate_pose(T0, T1, 0.3))


def test_is_valid_pose_and_problems() -> None:
    T = _random_pose(3, seed=10)
    assert is_valid_pose(T) and pose_problems(T) is None
    assert is_valid_pose(T.float())
    nan = T.clone()
    nan[1, 0, 3] = float("nan")
    assert not is_valid_pose(nan) and pose_problems(nan) == "has non-finite values"
    scaled = T.clone()
    scaled[0, :3, :3] *= 1.01
    assert not is_valid_pose(scaled) and "not orthonormal" in pose_problems(scaled)
    reflection = T.clone()
    reflection[2, :3, 0] *= -1
    assert not is_valid_pose(reflection) and "reflection" in pose_problems(reflection)
    last_row = T.clone()
    last_row[0, 3, 0] = 0.5
    assert not is_valid_pose(last_row) and "last row" in pose_problems(last_row)
    assert "shape" in pose_problems(torch.eye(3))
    assert pose_problems(torch.zeros(0, 4, 4)) is None


def test_gradcheck() -> None:
    T = _random_pose(2, seed=11).requires_grad_(True)
    points = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(transform_points, (T, points))
    assert torch.autograd.gradcheck(invert_pose, (T,))
    T1 = _random_pose(2, seed=12)
    assert torch.autograd.gradcheck(lambda a, b: interpolate_pose(a, b, 0.3), (T, T1))
    eye = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([4.0, 0.0, 20.0], dtype=torch.float64, requires_grad=True)
    up = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda e, t: look_at(e, t, up), (eye, target))
