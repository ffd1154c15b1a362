"""EWA projection of 3D Gaussians into a pinhole camera, as gsplat 1.5.3 does it.

Each Gaussian has a world-frame mean ``mu`` (mm), a rotation ``R(q)`` from a
quaternion ``q = (w, x, y, z)`` (normalised here) and linear standard
deviations ``s`` (mm), so its world covariance is
``Sigma = R diag(s)^2 R^T``. With the world-to-camera ``viewmat = [Rv | tv]``
(OpenCV frame, CONVENTIONS.md) the camera-frame mean is
``t = Rv mu + tv`` and covariance ``Sigma_c = Rv Sigma Rv^T``.

The projection is the local affine (EWA) approximation of the perspective map
at the mean::

    mean2d = (fx tx / tz + cx, fy ty / tz + cy)          (pixels, our K convention)
    J      = [[fx / tz, 0, -fx tx' / tz^2],
              [0, fy / tz, -fy ty' / tz^2]]
    cov2d  = J Sigma_c J^T + eps2d I                     (pixels^2)
    conic  = cov2d^-1, stored as (A, B, C) for [[A, B], [B, C]]

where, as in gsplat, the Jacobian sees ``tx' = tz clamp(tx / tz, -lim_x-,
lim_x+)``: the tangents from the principal point to the image edges plus 0.3
of the half field of view's tangent ``W / (2 fx)`` (edges and principal point
in gsplat's pixel frame, whose pixel centres sit at +0.5), so Gaussians far
outside the view do not get huge footprints; likewise ``ty'``. ``eps2d`` is a
low-pass blur of about a third of a pixel's variance.

A Gaussian is culled (radius 0, not drawn) when ``tz`` is outside
``[near, far]``, ``det(cov2d) <= 0``, its opacity is below 1/255, or its
footprint box lies entirely off the image. The footprint is gsplat 1.5.3's
opacity-aware box (arXiv 2402.00525, B.2): with
``e = min(3.33, sqrt(2 ln(255 o)))`` the half sizes are
``r_x = ceil(e sqrt(cov2d_xx))``, ``r_y = ceil(e sqrt(cov2d_yy))`` pixels.
Outside that box ``o exp(-sigma) < 1/255`` (``sigma = 1/2 d^T conic d`` at
pixel offset ``d``, :mod:`endo3d.gs.rasterize`), so no pixel outside it is
drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
"""Smallest opacity a Gaussian may add at a pixel; below it the pair is skipped (gsplat's ALPHA_THRESHOLD)."""

_MAX_EXTENT = 3.33
"""Largest footprint half size in 2D standard deviations (gsplat 1.5.3); binds only for opacities above 256 / 255."""

_FOV_MARGIN = 0.3
"""The Jacobian clamps tx / tz, ty / tz at the image edges plus this fraction of the half field of view."""


@dataclass(frozen=True)
class Projection:
    """Gaussians projected into one camera; entries of culled Gaussians are 0.

    Attributes:
        means2d: ``(N, 2)`` projected centres in pixels (our K convention), differentiable.
        conics: ``(N, 3)`` inverse 2D covariance ``(A, B, C)`` in 1 / pixels^2, differentiable.
        depths: ``(N,)`` camera-frame z in mm, differentiable.
        radii: ``(N, 2)`` int32 footprint half sizes ``(r_x, r_y)`` in pixels; ``(0, 0)`` = culled.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor

    @property
    def visible(self) -> Tensor:
        """``(N,)`` bool: drawn (not culled)."""
        return self.radii[:, 0] > 0


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices of quaternions ``(N, 4)`` ``(w, x, y, z)``, normalised first, as ``(3, 3, N)``."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).T
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]).reshape(3, 3, -1)


def project_gaussians(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmat: Tensor, K: Tensor,
    width: int, height: int, *, near: float, far: float, eps2d: float,
) -> Projection:
    """Project N Gaussians (module docstring); plain differentiable torch, any device.

    Args:
        means: ``(N, 3)`` world-frame centres in mm.
        quats: ``(N, 4)`` rotations ``(w, x, y, z)``, any non-zero norm.
        scales: ``(N, 3)`` standard deviations in mm.
        opacities: ``(N,)`` in (0, 1); only used for culling and the footprint size.
        viewmat: ``(4, 4)`` world-to-camera, OpenCV frame.
        K: ``(3, 3)`` intrinsics, our pixel-centre convention.
        width, height: image size in pixels.
        near, far: depth range in mm outside of which Gaussians are culled.
        eps2d: blur added to the diagonal of the 2D covariance, pixels^2.

    Inputs are assumed checked by the caller (:func:`endo3d.gs.rasterize.rasterize`).
    """
    # component-first (3, N) layout: elementwise ops and plain matmuls, no batched 3x3 products
    rot_c = viewmat[:3, :3]
    t = rot_c @ means.T + viewmat[:3, 3, None]  # (3, N)
    n = means.shape[0]
    m = (rot_c @ quat_to_rotmat(quats).reshape(3, 3 * n)).reshape(3, 3, n) * scales.T  # M = Rv R diag(s)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    tz = t[2]
    in_depth = (tz >= near) & (tz <= far)
    tz = torch.where(in_depth, tz, torch.ones_like(tz))  # culled ones: keep the maths finite
    # gsplat's limits, written with its principal point cx + 0.5 (pixel edges at 0 and width)
    lim_x_pos = (width - (cx + 0.5)) / fx + _FOV_MARGIN * 0.5 * width / fx
    lim_x_neg = (cx + 0.5) / fx + _FOV_MARGIN * 0.5 * width / fx
    lim_y_pos = (height - (cy + 0.5)) / fy + _FOV_MARGIN * 0.5 * height / fy
    lim_y_neg = (cy + 0.5) / fy + _FOV_MARGIN * 0.5 * height / fy
    tx = tz * torch.clamp(t[0] / tz, -lim_x_neg, lim_x_pos)
    ty = tz * torch.clamp(t[1] / tz, -lim_y_neg, lim_y_pos)
    # rows of J M with J = [[fx / tz, 0, -fx tx / tz^2], [0, fy / tz, -fy ty / tz^2]]; cov2d = (J M)(J M)^T
    jm_x = fx / tz * m[0] - fx * tx / tz**2 * m[2]
    jm_y = fy / tz * m[1] - fy * ty / tz**2 * m[2]
    a = (jm_x * jm_x).sum(0) + eps2d
    b = (jm_x * jm_y).sum(0)
    c = (jm_y * jm_y).sum(0) + eps2d
    det = a * c - b * b
    positive = det > 0
    det = torch.where(positive, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([fx * t[0] / tz + cx, fy * t[1] / tz + cy], dim=-1)

    with torch.no_grad():
        bright = opacities >= ALPHA_MIN
        extent = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(_MAX_EXTENT)
        rx = torch.ceil(extent * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extent * torch.sqrt(c.clamp_min(0)))
        mx, my = means2d[:, 0] + 0.5, means2d[:, 1] + 0.5  # in gsplat's pixel frame
        on_screen = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        visible = in_depth & positive & bright & ((rx > 0) | (ry > 0)) & on_screen
        visible &= torch.isfinite(means2d).all(-1) & torch.isfinite(conics).all(-1)
        radii = torch.stack([rx, ry], dim=-1).where(visible[:, None], 0).to(torch.int32)

    keep = visible[:, None]
    return Projection(
        means2d=means2d.where(keep, 0), conics=conics.where(keep, 0), depths=t[2].where(visible, 0), radii=radii,
    )


def footprint_pixels(means2d: Tensor, radii: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inclusive pixel ranges ``u0, u1, v0, v1`` ``(N,)`` int64 of each Gaussian's footprint box.

    Pixel ``(u, v)`` is in the box when ``|u - mean2d_x| < r_x + 1/2`` and
    ``|v - mean2d_y| < r_y + 1/2``: its unit square overlaps gsplat's open box
    ``mean2d +- r`` (gsplat draws every pixel of each 16x16 tile such a box
    overlaps, a superset). Not clipped to the image.
    """
    r = radii.to(means2d.dtype) + 0.5
    lo = torch.floor(means2d - r).long() + 1
    hi = torch.ceil(means2d + r).long() - 1
    return lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]
