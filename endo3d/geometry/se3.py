"""Rigid transforms: 4x4 poses, rotations, interpolation and checks.

Conventions (CONVENTIONS.md): poses are ``c2w`` 4x4 camera-to-world,
right-handed, in mm, camera frame OpenCV (x right, y down, z forward).
Everything is torch in, torch out, batched over leading dimensions
``(..., 4, 4)``, float32 or float64, differentiable. Quaternions are
``(w, x, y, z)``, real part first. Axis-angle vectors are the unit axis times
the angle in radians.
"""

from __future__ import annotations

import bisect

import math

import torch
from kornia.geometry import conversions

from endo3d.core.check import ShapeError, check_shape


def pose_from_rt(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A 4x4 pose from a rotation and a translation.

    Args:
        R: ``(..., 3, 3)`` rotation.
        t: ``(..., 3)`` translation in mm; batch dimensions broadcast with ``R``.

    Returns:
        ``(..., 4, 4)`` pose ``[[R, t], [0, 0, 0, 1]]``.
    """
    check_shape(R, "... 3 3", "R")
    check_shape(t, "... 3", "t")
    batch = torch.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    top = torch.cat([R.expand(*batch, 3, 3), t.expand(*batch, 3)[..., None]], dim=-1)
    bottom = torch.zeros(*batch, 1, 4, dtype=top.dtype, device=top.device)
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], dim=-2)


def invert_pose(T: torch.Tensor) -> torch.Tensor:
    """Inverse of a rigid transform in closed form, ``[[R^T, -R^T t], [0, 1]]``.

    Args:
        T: ``(..., 4, 4)`` rigid transform (e.g. ``c2w``).

    Returns:
        ``(..., 4, 4)`` inverse (e.g. ``w2c``).
    """
    check_shape(T, "... 4 4", "T")
    Rt = T[..., :3, :3].transpose(-1, -2)
    return pose_from_rt(Rt, -(Rt @ T[..., :3, 3:])[..., 0])


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply a rigid transform to points, ``R p + t``.

    Args:
        T: ``(4, 4)`` transform, or ``(B, 4, 4)`` with one transform per batch item.
        points: ``(..., 3)`` points in mm; with a batched ``T``, ``(B, ..., 3)``.

    Returns:
        Transformed points, the shape of ``points``.
    """
    check_shape(points, "... 3", "points")
    if T.ndim == 2:
        check_shape(T, "4 4", "T")
        return points @ T[:3, :3].transpose(0, 1) + T[:3, 3]
    sizes = check_shape(T, "B 4 4", "T")
    if points.ndim < 2 or points.shape[0] != sizes["B"]:
        raise ShapeError("points", points.shape, f"{sizes['B']} ... 3")
    flat = points.reshape(sizes["B"], math.prod(points.shape[1:-1]), 3)
    out = flat @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    return out.reshape(points.shape)


def compose(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The transform ``A @ B`` (apply ``B`` first); batch dimensions broadcast.

    Args:
        A: ``(..., 4, 4)`` transform.
        B: ``(..., 4, 4)`` transform.

    Returns:
        ``(..., 4, 4)`` composition.
    """
    check_shape(A, "... 4 4", "A")
    check_shape(B, "... 4 4", "B")
    return A @ B


def relative_pose(c2w_i: torch.Tensor, c2w_j: torch.Tensor) -> torch.Tensor:
    """The transform from camera-i coordinates to camera-j coordinates, ``inverse(c2w_j) @ c2w_i``.

    Args:
        c2w_i: ``(..., 4, 4)`` pose of camera i.
        c2w_j: ``(..., 4, 4)`` pose of camera j.

    Returns:
        ``(..., 4, 4)`` ``T_j_from_i``: ``X_j = T_j_from_i X_i``.
    """
    return compose(invert_pose(c2w_j), c2w_i)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from axis-angle vectors (Rodrigues).

    Args:
        axis_angle: ``(..., 3)`` unit axis times angle in radians.

    Returns:
        ``(..., 3, 3)`` rotation; ``+angle`` about ``+z`` maps ``x`` to ``y``.
    """
    check_shape(axis_angle, "... 3", "axis_angle")
    return conversions.axis_angle_to_rotation_matrix(axis_angle)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors of rotation matrices; angle in ``[0, pi]``.

    Args:
        R: ``(..., 3, 3)`` rotation.

    Returns:
        ``(..., 3)`` unit axis times angle in radians.
    """
    check_shape(R, "... 3 3", "R")
    return conversions.rotation_matrix_to_axis_angle(R)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from quaternions ``(w, x, y, z)``; ``q`` is normalised first.

    Args:
        q: ``(..., 4)`` quaternion, real part first.

    Returns:
        ``(..., 3, 3)`` rotation.
    """
    check_shape(q, "... 4", "q")
    return conversions.quaternion_to_rotation_matrix(q)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(w, x, y, z)`` of rotation matrices, with ``w >= 0``.

    Args:
        R: ``(..., 3, 3)`` rotation.

    Returns:
        ``(..., 4)`` unit quaternion, real part first, sign chosen so ``w >= 0``.
    """
    check_shape(R, "... 3 3", "R")
    q = conversions.rotation_matrix_to_quaternion(R)
    return torch.where(q[..., :1] < 0, -q, q)


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """A camera at ``eye`` looking at ``target``, OpenCV axes, as ``c2w``.

    ``z = normalize(target - eye)``, ``x = normalize(cross(z, up))``,
    ``y = cross(z, x)``: the image's 'up' (``-y``) points along the world
    ``up`` projected onto the image plane.

    Args:
        eye: ``(..., 3)`` camera centre in world mm.
        target: ``(..., 3)`` world point the optical axis goes through.
        up: ``(..., 3)`` world direction that appears as 'up' in the image.
        Batch dimensions broadcast.

    Returns:
        ``(..., 4, 4)`` ``c2w``.

    Raises:
        ValueError: when ``eye == target`` or ``up`` is parallel to the view direction.
    """
    for name, x in (("eye", eye), ("target", target), ("up", up)):
        check_shape(x, "... 3", name)
    eye, target, up = torch.broadcast_tensors(eye, target, up)
    forward = target - eye
    dist = torch.linalg.vector_norm(forward, dim=-1, keepdim=True)
    if bool((dist <= 0).any()):
        raise ValueError("look_at: eye and target coincide")
    z = forward / dist
    side = torch.linalg.cross(z, up)
    side_norm = torch.linalg.vector_norm(side, dim=-1, keepdim=True)
    up_norm = torch.linalg.vector_norm(up, dim=-1, keepdim=True)
    if bool((side_norm <= 1e-6 * up_norm).any()):
        raise ValueError("look_at: up is zero or parallel to the viewing direction")
    x = side / side_norm
    y = torch.linalg.cross(z, x)
    return pose_from_rt(torch.stack([x, y, z], dim=-1), eye)


def interpolate_pose(T0: torch.Tensor, T1: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Interpolate rigid transforms: slerp on rotation, lerp on translation.

    The rotation is ``R0 exp(alpha log(R0^T R1))``, the shorter arc; the
    translation ``(1 - alpha) t0 + alpha t1``. ``alpha = 0`` gives ``T0``,
    ``alpha = 1`` gives ``T1``.

    Args:
        T0: ``(..., 4, 4)`` transform at ``alpha = 0``.
        T1: ``(..., 4, 4)`` transform at ``alpha = 1``.
        alpha: a float or a tensor broadcastable to the batch shape ``(...)``.

    Returns:
        ``(..., 4, 4)`` interpolated transform.
    """
    check_shape(T0, "... 4 4", "T0")
    check_shape(T1, "... 4 4", "T1")
    a = torch.as_tensor(alpha, dtype=T0.dtype, device=T0.device)
    R0, R1 = T0[..., :3, :3], T1[..., :3, :3]
    rel = matrix_to_axis_angle(R0.transpose(-1, -2) @ R1)
    R = R0 @ axis_angle_to_matrix(a[..., None] * rel)
    t = (1 - a[..., None]) * T0[..., :3, 3] + a[..., None] * T1[..., :3, 3]
    return pose_from_rt(R, t)


def pose_problems(T: torch.Tensor, atol: float = 1e-4) -> str | None:
    """What is wrong with a (batch of) rigid transform(s), as a phrase, or None.

    Checks, in order: shape ``(..., 4, 4)``, finite values, last row
    ``(0, 0, 0, 1)``, orthonormal rotation, ``det(R) = +1``; all within
    ``atol``. The phrase reads after the name of the pose, e.g.
    ``f"frame 3: c2w {pose_problems(T)}"``.

    Args:
        T: ``(..., 4, 4)`` transform(s).
        atol: absolute tolerance of the checks.

    Returns:
        ``None`` when every transform is valid, else the first problem found.
    """
    if T.ndim < 2 or tuple(T.shape[-2:]) != (4, 4):
        return f"has shape {tuple(T.shape)}, expected (..., 4, 4)"
    if T.numel() == 0:
        return None
    if not bool(torch.isfinite(T).all()):
        return "has non-finite values"
    last = T[..., 3, :] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=T.dtype, device=T.device)
    if float(last.abs().max()) > atol:
        return "has a last row that is not (0, 0, 0, 1)"
    R = T[..., :3, :3]
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    err = float((R.transpose(-1, -2) @ R - eye).abs().max())
    if err > atol:
        return f"has a rotation that is not orthonormal (max |R^T R - I| = {err:.3g})"
    det = (torch.linalg.cross(R[..., :, 0], R[..., :, 1]) * R[..., :, 2]).sum(-1)
    if bool((det < 0).any()):
        return "has a reflection, not a rotation (det R = -1)"
    return None


def is_valid_pose(T: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether every transform in ``T`` is a finite rigid transform; see :func:`pose_problems`."""
    return pose_problems(T, atol) is None


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """``(..., 6)`` (axis-angle in radians, translation) -> ``(..., 4, 4)`` rigid transform ``[R(w) | t]``.

    A first-order parametrisation of small corrections (translation not
    coupled to rotation), differentiable everywhere.
    """
    check_shape(xi, "... 6", "xi")
    return pose_from_rt(axis_angle_to_matrix(xi[..., :3]), xi[..., 3:])


def carry_corrections(c2w: torch.Tensor, anchors: list[int], corrected: torch.Tensor) -> torch.Tensor:
    """Poses of all frames after the ``anchors`` were corrected; the others move rigidly with a neighbour.

    Frame ``i`` not in ``anchors`` keeps its motion relative to the nearest
    earlier anchor ``j`` (the first anchor for frames before it):
    ``c2w'_i = c2w'_j c2w_j^-1 c2w_i``.

    Args:
        c2w: ``(N, 4, 4)`` poses before the correction.
        anchors: positions (ascending) that were corrected.
        corrected: ``(len(anchors), 4, 4)`` their corrected poses.
    """
    out = c2w.clone()
    for i in range(len(c2w)):
        k = anchor_of(i, anchors)
        j = anchors[k]
        out[i] = corrected[k] if i == j else corrected[k] @ invert_pose(c2w[j]) @ c2w[i]
    return out


def anchor_of(i: int, anchors: list[int]) -> int:
    """Position in ``anchors`` (ascending) of the last anchor at or before frame ``i`` (0 before the first):
    the frame whose correction frame ``i`` follows in :func:`carry_corrections`."""
    return max(bisect.bisect_right(anchors, i) - 1, 0)

