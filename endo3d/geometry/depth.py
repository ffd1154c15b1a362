"""Depth maps: back-projection to points, normals, reprojection, image sampling.

Conventions (CONVENTIONS.md): depth is z-depth in mm, 0 = invalid; points
and normals are in the OpenCV camera frame; normals point towards the camera;
pixel (column u, row v) is the ray through ``K^-1 [u, v, 1]`` (pixel
centres). Maps are channel-first ``(B, C, H, W)``.
"""

from __future__ import annotations

import torch

from endo3d.core.check import ShapeError, check_shape
from endo3d.geometry.camera import Camera
from endo3d.geometry.se3 import transform_points


def _check_depth(depth: torch.Tensor, camera: Camera, name: str = "depth") -> dict[str, int]:
    sizes = check_shape(depth, "B 1 H W", name)
    if (sizes["H"], sizes["W"]) != (camera.height, camera.width):
        raise ShapeError(name, depth.shape, f"B 1 {camera.height} {camera.width}")
    return sizes


def _points_and_mask(depth: torch.Tensor, rays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``(B, 3, H, W)`` and their validity ``(B, 1, H, W)``; rays ``(H, W, 3)`` or ``(B, H, W, 3)``."""
    d = rays.movedim(-1, -3)
    dz = d[..., 2:3, :, :]
    ray_ok = (dz > 0) & torch.isfinite(d).all(dim=-3, keepdim=True)
    per_depth = torch.where(ray_ok, d / torch.where(ray_ok, dz, torch.ones_like(dz)), torch.zeros_like(d))
    mask = (depth > 0) & ray_ok
    return torch.where(mask, depth * per_depth, torch.zeros_like(per_depth)), mask


def depth_to_points_from_rays(depth: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
    """Back-project a z-depth map along given rays: ``X = z d / d_z``.

    Args:
        depth: ``(B, 1, H, W)`` z-depth in mm; ``<= 0`` is invalid.
        rays: ``(H, W, 3)`` or ``(B, H, W, 3)`` ray directions, camera frame
            (any length; e.g. :meth:`Camera.rays`).

    Returns:
        ``(B, 3, H, W)`` camera-frame points in mm; 0 where the depth is
        ``<= 0`` or the ray has ``d_z <= 0`` or is not finite.
    """
    sizes = check_shape(depth, "B 1 H W", "depth")
    expected = (sizes["H"], sizes["W"], 3)
    if tuple(rays.shape) not in (expected, (sizes["B"], *expected)):
        raise ShapeError("rays", rays.shape, f"{sizes['H']} {sizes['W']} 3 or {sizes['B']} {sizes['H']} {sizes['W']} 3")
    return _points_and_mask(depth, rays.to(depth.dtype))[0]


def depth_to_points(depth: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Back-project a z-depth map through ``camera.rays()``; see :func:`depth_to_points_from_rays`.

    Args:
        depth: ``(B, 1, H, W)`` z-depth in mm, ``H, W`` the camera's size.
        camera: the intrinsic camera.

    Returns:
        ``(B, 3, H, W)`` camera-frame points in mm; 0 where invalid.
    """
    _check_depth(depth, camera)
    return _points_and_mask(depth, camera.rays(depth.dtype, depth.device))[0]


def _pad1(x: torch.Tensor, dim: int, at_end: bool, value: float | bool) -> torch.Tensor:
    """``x`` with one slice of ``value`` appended (``at_end``) or prepended along ``dim``."""
    shape = list(x.shape)
    shape[dim] = 1
    fill = torch.full(shape, value, dtype=x.dtype, device=x.device)
    return torch.cat([x, fill] if at_end else [fill, x], dim=dim)


def _tangent(
    points: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, a difference of ``points`` along ``dim`` that stays on the pixel's surface.

    Of the forward and backward differences whose both ends are valid, the
    one with the smaller depth jump is taken; where both exist and neither
    jump stands out (the larger is at most twice the smaller, or at most the
    lateral step of the smaller), their mean, the central difference, is taken
    instead. Returns the difference and whether one exists.
    """
    n = points.shape[dim]
    diff = points.diff(dim=dim)
    jump = depth.diff(dim=dim).abs()
    pair = mask.narrow(dim, 0, n - 1) & mask.narrow(dim, 1, n - 1)
    fwd, bwd = _pad1(diff, dim, True, 0.0), _pad1(diff, dim, False, 0.0)
    fwd_ok, bwd_ok = _pad1(pair, dim, True, False), _pad1(pair, dim, False, False)
    fwd_jump, bwd_jump = _pad1(jump, dim, True, float("inf")), _pad1(jump, dim, False, float("inf"))
    use_fwd = fwd_ok & (~bwd_ok | (fwd_jump <= bwd_jump))
    one_sided = torch.where(use_fwd, fwd, bwd)
    small, big = torch.minimum(fwd_jump, bwd_jump), torch.maximum(fwd_jump, bwd_jump)
    lateral = torch.linalg.vector_norm(one_sided[:, :2], dim=1, keepdim=True)
    smooth = fwd_ok & bwd_ok & ((big <= 2 * small) | (big <= lateral))
    return torch.where(smooth, (fwd + bwd) / 2, one_sided), fwd_ok | bwd_ok


def depth_to_normals(depth: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Unit surface normals of a z-depth map, camera frame, pointing towards the camera.

    The normal is the cross product of the point map's differences along u
    and v. On each axis the one-sided difference (forward or backward) with
    the smaller depth jump is used, so a pixel next to a depth discontinuity
    takes its tangent from its own surface; where the two jumps are alike
    (a smooth surface) the central difference is used, which is second-order
    accurate on curved surfaces.

    Args:
        depth: ``(B, 1, H, W)`` z-depth in mm, ``H, W`` the camera's size; ``<= 0`` invalid.
        camera: the intrinsic camera.

    Returns:
        ``(B, 3, H, W)`` unit normals with ``n . X <= 0``; 0 where the pixel
        is invalid or has no valid neighbour pair on an axis.
    """
    _check_depth(depth, camera)
    points, mask = _points_and_mask(depth, camera.rays(depth.dtype, depth.device))
    tu, ok_u = _tangent(points, depth, mask, -1)
    tv, ok_v = _tangent(points, depth, mask, -2)
    n = torch.linalg.cross(tu, tv, dim=1)
    norm = torch.linalg.vector_norm(n, dim=1, keepdim=True)
    valid = mask & ok_u & ok_v & (norm > 0)
    n = n / torch.where(valid, norm, torch.ones_like(norm))
    n = torch.where((n * points).sum(dim=1, keepdim=True) > 0, -n, n)
    return torch.where(valid, n, torch.zeros_like(n))


def reproject(
    depth_i: torch.Tensor, camera_i: Camera, T_j_from_i: torch.Tensor, camera_j: Camera | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each pixel of frame i lands in camera j, and its z-depth there.

    Args:
        depth_i: ``(B, 1, H, W)`` z-depth of frame i in mm, ``H, W`` the size of ``camera_i``.
        camera_i: camera of frame i.
        T_j_from_i: ``(B, 4, 4)`` (or ``(4, 4)``) transform from camera-i to
            camera-j coordinates, e.g. ``relative_pose(c2w_i, c2w_j)``.
        camera_j: camera of frame j; ``camera_i`` when None.

    Returns:
        ``uv_j``: ``(B, 2, H, W)`` pixel coordinates in frame j (OpenCV pixel
        centres; may lie outside the image), ``z_j``: ``(B, 1, H, W)``
        z-depth in camera j in mm, and ``valid``: ``(B, 1, H, W)`` bool,
        ``depth_i > 0`` and the projection into camera j valid. ``uv_j`` and
        ``z_j`` are 0 where not valid.
    """
    _check_depth(depth_i, camera_i, "depth_i")
    camera_j = camera_i if camera_j is None else camera_j
    points, mask = _points_and_mask(depth_i, camera_i.rays(depth_i.dtype, depth_i.device))
    points_j = transform_points(T_j_from_i, points.permute(0, 2, 3, 1))
    uv, in_front = camera_j.project(points_j)
    valid = mask & in_front[:, None]
    uv = uv.permute(0, 3, 1, 2)
    uv = torch.where(valid, uv, torch.zeros_like(uv))
    z = torch.where(valid, points_j[..., 2].unsqueeze(1), torch.zeros_like(depth_i))
    return uv, z, valid


def sample_image(image: torch.Tensor, uv: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample an image at pixel coordinates, zeros outside.

    Pixel ``(u, v)`` is the centre of column u, row v (OpenCV): the same as
    ``grid_sample(..., padding_mode="zeros", align_corners=True)`` at
    ``x_n = 2u / (W - 1) - 1``, but computed in pixel units, so integer
    coordinates return the pixel values exactly at any image size.
    Differentiable w.r.t. ``image`` and (bilinear) ``uv``.

    Args:
        image: ``(B, C, H, W)`` image.
        uv: ``(B, 2, H', W')`` pixel coordinates to sample at.
        mode: ``"bilinear"``, or ``"nearest"`` (the pixel with the nearest
            centre, ties to even).

    Returns:
        ``(B, C, H', W')`` samples of ``image``'s dtype; taps outside the
        image count as 0.
    """
    sizes = check_shape(image, "B C H W", "image")
    uv_sizes = check_shape(uv, "B 2 H2 W2", "uv")
    if uv_sizes["B"] != sizes["B"]:
        raise ShapeError("uv", uv.shape, f"{sizes['B']} 2 H' W'")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"unknown sampling mode {mode!r} (bilinear or nearest)")
    batch, channels, height, width = sizes["B"], sizes["C"], sizes["H"], sizes["W"]
    flat = image.reshape(batch, channels, height * width)
    u, v = uv[:, 0].to(image.dtype), uv[:, 1].to(image.dtype)

    def tap(col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        # col, row: float tensors of integral values, already clamped to [-2, size + 1].
        c, r = col.long(), row.long()
        inside = ((c >= 0) & (c < width) & (r >= 0) & (r < height))[:, None]
        index = (r.clamp(0, height - 1) * width + c.clamp(0, width - 1)).reshape(batch, 1, -1)
        values = flat.gather(2, index.expand(batch, channels, -1)).reshape(batch, channels, *c.shape[1:])
        return torch.where(inside, values, torch.zeros_like(values))

    if mode == "nearest":
        return tap(torch.round(u).clamp(-2, width + 1), torch.round(v).clamp(-2, height + 1))
    u0, v0 = torch.floor(u), torch.floor(v)
    fu, fv = (u - u0)[:, None], (v - v0)[:, None]
    u0, v0 = u0.clamp(-2, width), v0.clamp(-2, height)
    top = tap(u0, v0) * (1 - fu) + tap(u0 + 1, v0) * fu
    bottom = tap(u0, v0 + 1) * (1 - fu) + tap(u0 + 1, v0 + 1) * fu
    return top * (1 - fv) + bottom * fv
