"""Intrinsic camera models: pinhole, OpenCV radial-tangential, fisheye.

Conventions (CONVENTIONS.md): OpenCV camera frame (x right, y down, z
forward), lengths in mm, ``K`` in pixels with the centre of pixel (column u,
row v) on the ray through ``K^-1 [u, v, 1]``.

Models and their ``dist`` coefficients:

- ``pinhole``: no coefficients.
- ``opencv``: ``k1 k2 p1 p2 [k3]`` (Brown-Conrady radial + tangential).
- ``fisheye``: ``k1 k2 k3 k4`` (Kannala-Brandt, as OpenCV's fisheye module).

:func:`project` maps camera-frame points to pixels, :func:`unproject` maps
pixels to unit rays (inverting the distortion by Newton), both batched,
float32/float64 and differentiable; :class:`Camera` wraps them with its own
``K`` and ``dist`` and caches the rays of all pixels (:meth:`Camera.rays`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from endo3d.core.check import ShapeError, check_shape

CameraModel = Literal["pinhole", "opencv", "fisheye"]
DIST_LENGTHS: dict[str, tuple[int, ...]] = {"pinhole": (0,), "opencv": (4, 5), "fisheye": (4,)}

# Newton inversion of the distortion: iteration cap, and per dtype the step
# size below which iterating stops and the residual (normalised image plane,
# relative to 1 + |target|) above which a pixel counts as having no ray.
_NEWTON_MAX_ITER = 20
_NEWTON_TOL = {torch.float32: (1e-6, 1e-6), torch.float64: (1e-14, 1e-12)}


@dataclass(frozen=True, eq=False)
class Camera:
    """An intrinsic camera: model, image size in pixels, ``K`` and distortion.

    Attributes:
        model: ``"pinhole"``, ``"opencv"`` or ``"fisheye"``.
        width: image width in pixels.
        height: image height in pixels.
        K: 3x3 intrinsic matrix in pixels, float64.
        dist: distortion coefficients of the model (see module docstring).
    """

    model: str
    width: int
    height: int
    K: np.ndarray
    dist: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "K", np.asarray(self.K, dtype=np.float64).reshape(3, 3))
        object.__setattr__(self, "dist", tuple(float(d) for d in self.dist))

    @classmethod
    def from_fov(
        cls, model: str, width: int, height: int, hfov_deg: float, dist: tuple[float, ...] = ()
    ) -> "Camera":
        """A camera with square pixels, principal point at the image centre.

        The horizontal field of view ``hfov_deg`` spans the image width: for
        pinhole and OpenCV models ``fx = (W / 2) / tan(hfov / 2)``; for the
        fisheye model (equidistant up to its distortion)
        ``fx = (W / 2) / (hfov / 2)`` with the half angle in radians. The
        centre is ``((W - 1) / 2, (H - 1) / 2)`` in OpenCV pixel coordinates.
        """
        half = math.radians(hfov_deg) / 2.0
        f = (width / 2.0) / (half if model == "fisheye" else math.tan(half))
        K = np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
        return cls(model, width, height, K, dist)

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera at another resolution.

        Pixel centres map as ``u' = (u + 0.5) * W' / W - 0.5``, so
        ``fx' = fx * W' / W`` and ``cx' = (cx + 0.5) * W' / W - 0.5``.
        """
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, :] *= sx
        K[1, :] *= sy
        K[0, 2] = (self.K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (self.K[1, 2] + 0.5) * sy - 0.5
        return Camera(self.model, width, height, K, self.dist)

    def problems(self) -> list[str]:
        """What is wrong with this camera, as short phrases; empty when valid."""
        out = []
        model_problem = _model_problem(self.model, len(self.dist))
        if model_problem is not None:
            out.append(model_problem)
        if self.width <= 0 or self.height <= 0:
            out.append(f"image size {self.width}x{self.height} is not positive")
        K = self.K
        if not np.all(np.isfinite(K)) or not all(math.isfinite(d) for d in self.dist):
            out.append("K or dist is not finite")
        elif K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
            out.append("K is not upper-triangular with K[2, 2] = 1")
        elif K[0, 0] <= 0 or K[1, 1] <= 0:
            out.append("K has a non-positive focal length")
        return out

    def to_json(self) -> dict[str, Any]:
        """The ``camera`` block of ``meta.json`` (size is stored beside it)."""
        return {"model": self.model, "K": self.K.tolist(), "dist": list(self.dist)}

    @classmethod
    def from_json(cls, block: dict[str, Any], width: int, height: int) -> "Camera":
        """Inverse of :meth:`to_json`; raises ``KeyError``/``ValueError`` on bad blocks."""
        return cls(str(block.get("model", "pinhole")), int(width), int(height),
                   np.asarray(block["K"], dtype=np.float64), tuple(block.get("dist", ())))

    def K_tensor(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """``K`` as a ``(3, 3)`` tensor in pixels."""
        return torch.tensor(self.K, dtype=dtype, device=device)

    def dist_tensor(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The distortion coefficients as a ``(D,)`` tensor; ``(0,)`` for pinhole."""
        return torch.tensor(self.dist, dtype=dtype, device=device)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`project` with this camera; ``K`` and ``dist`` take the dtype and device of ``points``.

        Raises:
            ValueError: when the camera has :meth:`problems`.
        """
        self._raise_problems()
        return project(points, self.K_tensor(points.dtype, points.device),
                       self.dist_tensor(points.dtype, points.device), self.model)

    def unproject(self, uv: torch.Tensor) -> torch.Tensor:
        """:func:`unproject` with this camera; ``K`` and ``dist`` take the dtype and device of ``uv``.

        Raises:
            ValueError: when the camera has :meth:`problems`.
        """
        self._raise_problems()
        return unproject(uv, self.K_tensor(uv.dtype, uv.device),
                         self.dist_tensor(uv.dtype, uv.device), self.model)

    def rays(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """Unit ray directions through every pixel centre, camera frame.

        Computed once in float64 and cached on the instance (recomputed only
        if ``K`` is changed in place); each call returns a fresh copy, so
        writing into the result never changes the cache.

        Returns:
            ``(H, W, 3)`` tensor of ``dtype`` on ``device``; ``[v, u]`` is the
            ray of pixel (column u, row v). Pixels that no ray reaches (beyond
            the fold of a strong distortion) are NaN, see :func:`unproject`.

        Raises:
            ValueError: when the camera has :meth:`problems`.
        """
        key = (self.model, self.width, self.height, self.K.tobytes(), self.dist)
        cached = self.__dict__.get("_rays_cache")
        if cached is None or cached[0] != key:
            self._raise_problems()
            uv = pixel_grid(self.height, self.width, dtype=torch.float64)
            directions = unproject(uv, self.K_tensor(torch.float64), self.dist_tensor(torch.float64), self.model)
            cached = (key, directions.numpy())
            object.__setattr__(self, "_rays_cache", cached)
        return torch.tensor(cached[1], dtype=dtype, device=device)

    def _raise_problems(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"invalid camera: {'; '.join(problems)}")


def _model_problem(model: str, num_dist: int) -> str | None:
    """What is wrong with a model name and a number of coefficients, or None."""
    if model not in DIST_LENGTHS:
        return f"unknown camera model {model!r} (pinhole, opencv or fisheye)"
    if num_dist not in DIST_LENGTHS[model]:
        return (
            f"{model} camera needs {' or '.join(map(str, DIST_LENGTHS[model]))} "
            f"distortion coefficients, got {num_dist}"
        )
    return None


def pixel_grid(
    height: int, width: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Pixel-centre coordinates of an image.

    Args:
        height: image height H in pixels.
        width: image width W in pixels.
        dtype: floating dtype of the result.
        device: device of the result.

    Returns:
        ``(H, W, 2)`` tensor; ``[v, u] = (u, v)`` with u = column in
        ``0..W-1`` and v = row in ``0..H-1`` (OpenCV pixel centres).

    Example:
        >>> pixel_grid(2, 3)[1, 2]
        tensor([2., 1.])
    """
    u = torch.arange(width, dtype=dtype, device=device)
    v = torch.arange(height, dtype=dtype, device=device)
    return torch.stack([u[None, :].expand(height, width), v[:, None].expand(height, width)], dim=-1)


def _expand(p: torch.Tensor, lead: int) -> torch.Tensor:
    """A per-camera value of shape ``()`` or ``(B,)``, broadcastable against ``lead`` point dimensions."""
    return p if p.ndim == 0 else p.reshape(p.shape[0], *([1] * (lead - 1)))


def _intrinsics(
    x: torch.Tensor, last: int, name: str, K: torch.Tensor, dist: torch.Tensor | None, model: str
) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """Check the inputs of project/unproject; return the top two rows of K and the coefficients.

    Each returned value broadcasts against ``x[..., 0]``.
    """
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {x.dtype}")
    check_shape(x, f"... {last}", name)
    if dist is None:
        dist = K.new_zeros(0)
    if K.ndim == 2:
        check_shape(K, "3 3", "K")
    else:
        check_shape(K, "B 3 3", "K")
    if dist.ndim not in (1, 2):
        raise ShapeError("dist", dist.shape, "D or B D")
    problem = _model_problem(model, dist.shape[-1])
    if problem is not None:
        raise ValueError(problem)
    batch = K.shape[0] if K.ndim == 3 else None
    if dist.ndim == 2:
        if batch is not None and dist.shape[0] != batch:
            raise ShapeError("dist", dist.shape, f"{batch} D")
        batch = dist.shape[0]
    if batch is not None and (x.ndim < 2 or x.shape[0] != batch):
        raise ShapeError(name, x.shape, f"{batch} ... {last}")
    lead = x.ndim - 1
    k = [[_expand(K[..., i, j], lead) for j in range(3)] for i in range(2)]
    coeffs = [_expand(dist[..., i], lead) for i in range(dist.shape[-1])]
    return k, coeffs


def _brown_conrady(
    x: torch.Tensor, y: torch.Tensor, coeffs: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV radial-tangential distortion of normalised coordinates and its 2x2 Jacobian.

    Returns ``(xd, yd, dxd/dx, dxd/dy, dyd/dx, dyd/dy)``.
    """
    k1, k2, p1, p2 = coeffs[:4]
    k3 = coeffs[4] if len(coeffs) == 5 else torch.zeros_like(k1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    dradial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d r2
    xy = x * y
    xd = x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy
    off = 2 * xy * dradial + 2 * p1 * x + 2 * p2 * y
    return (xd, yd, radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x, off,
            off, radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x)


def _kb_poly(theta: torch.Tensor, coeffs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Kannala-Brandt ``1 + k1 t^2 + .. + k4 t^8`` and the derivative of ``t * poly`` w.r.t. ``t``."""
    k1, k2, k3, k4 = coeffs
    t2 = theta * theta
    poly = 1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))
    dpoly = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
    return poly, dpoly


def project(
    points: torch.Tensor, K: torch.Tensor, dist: torch.Tensor | None, model: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project camera-frame points to pixels.

    ``[u, v, 1]^T = K [x', y', 1]^T`` with the full top two rows of ``K``
    (skew allowed), where ``(x', y')`` is the distorted normalised point:

    - ``pinhole``: ``(x/z, y/z)``;
    - ``opencv``: OpenCV's radial (k1, k2, k3) and tangential (p1, p2) model
      applied to ``(x/z, y/z)``;
    - ``fisheye``: OpenCV's Kannala-Brandt model, ``theta = atan2(r, z)``,
      ``theta_d = theta (1 + k1 theta^2 + .. + k4 theta^8)``,
      ``(x', y') = theta_d / r (x, y)``; smooth on the optical axis.

    Differentiable w.r.t. ``points``, ``K`` and ``dist``. Where a point is not
    valid, ``uv`` is finite but meaningless.

    Args:
        points: ``(..., 3)`` camera-frame points in mm (OpenCV frame); with a
            batched ``K`` or ``dist``, ``(B, ..., 3)``.
        K: ``(3, 3)`` or ``(B, 3, 3)`` intrinsics in pixels.
        dist: ``(D,)`` or ``(B, D)`` coefficients of ``model``; ``None`` or
            ``(0,)`` for pinhole.
        model: ``"pinhole"``, ``"opencv"`` or ``"fisheye"``.

    Returns:
        ``uv``: ``(..., 2)`` pixel coordinates (OpenCV pixel centres), and
        ``valid``: ``(...)`` bool, ``z > 0`` (pinhole, opencv) or angle from
        the optical axis below pi (fisheye), and a finite result.

    Raises:
        ShapeError: on a wrong shape; ValueError: on an unknown model or a
        wrong number of coefficients.
    """
    k, coeffs = _intrinsics(points, 3, "points", K, dist, model)
    x, y, z = points.unbind(-1)
    if model == "fisheye":
        r2 = x * x + y * y
        off_axis = r2 > 0
        r = torch.sqrt(torch.where(off_axis, r2, torch.ones_like(r2)))
        theta = torch.atan2(r, z)
        valid = torch.where(off_axis, theta < math.pi, z > 0)
        # theta / r, with its limit 1 / z on the axis (zero derivative in r there).
        z_safe = torch.where(z != 0, z, torch.ones_like(z))
        ratio = torch.where(off_axis, theta / r, 1 / z_safe)
        theta = torch.where(off_axis, theta, torch.zeros_like(theta))
        scale = ratio * _kb_poly(theta, coeffs)[0]
        xn, yn = scale * x, scale * y
    else:
        valid = z > 0
        z_safe = torch.where(valid, z, torch.ones_like(z))
        xn, yn = x / z_safe, y / z_safe
        if model == "opencv":
            xn, yn = _brown_conrady(xn, yn, coeffs)[:2]
    uv = torch.stack([k[0][0] * xn + k[0][1] * yn + k[0][2], k[1][0] * xn + k[1][1] * yn + k[1][2]], dim=-1)
    return uv, valid & torch.isfinite(uv).all(dim=-1)


def _newton_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    return _NEWTON_TOL.get(dtype, _NEWTON_TOL[torch.float32])


def _undistort_opencv(
    xd: torch.Tensor, yd: torch.Tensor, coeffs: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert :func:`_brown_conrady` by Newton; NaN where it does not converge.

    The iterations run without autograd; one final Newton step with autograd
    gives the implicit-function gradient at the solution.
    """
    step_tol, res_tol = _newton_tolerances(xd.dtype)
    fixed = [c.detach() for c in coeffs]
    x, y = xd.detach().clone(), yd.detach().clone()
    with torch.no_grad():
        for _ in range(_NEWTON_MAX_ITER):
            fx, fy, a, b, c, d = _brown_conrady(x, y, fixed)
            ex, ey = fx - xd, fy - yd
            det = a * d - b * c
            det = torch.where(det != 0, det, torch.ones_like(det))
            sx, sy = (d * ex - b * ey) / det, (a * ey - c * ex) / det
            x, y = x - sx, y - sy
            if x.numel() == 0 or torch.maximum(sx.abs(), sy.abs()).max() <= step_tol:
                break
    fx, fy, a, b, c, d = _brown_conrady(x, y, coeffs)
    ex, ey = fx - xd, fy - yd
    det = a * d - b * c
    # The physical root keeps the point on the side of the distorted one, before the fold (det > 0).
    tol = res_tol * (1 + torch.maximum(xd.abs(), yd.abs()))
    converged = (torch.maximum(ex.abs(), ey.abs()) <= tol) & (det > 0) & (x * xd + y * yd >= 0)
    det = torch.where(converged, det, torch.ones_like(det))
    x = x - (d * ex - b * ey) / det
    y = y - (a * ey - c * ex) / det
    nan = torch.full_like(x, math.nan)
    return torch.where(converged, x, nan), torch.where(converged, y, nan)


def _undistort_fisheye(theta_d: torch.Tensor, coeffs: list[torch.Tensor]) -> torch.Tensor:
    """Solve ``theta * poly(theta) = theta_d`` by 1-D Newton; NaN where it fails or theta is not in [0, pi)."""
    step_tol, res_tol = _newton_tolerances(theta_d.dtype)
    fixed = [c.detach() for c in coeffs]
    theta = theta_d.detach().clone()
    with torch.no_grad():
        for _ in range(_NEWTON_MAX_ITER):
            poly, dpoly = _kb_poly(theta, fixed)
            dpoly = torch.where(dpoly != 0, dpoly, torch.ones_like(dpoly))
            step = (theta * poly - theta_d) / dpoly
            theta = theta - step
            if theta.numel() == 0 or step.abs().max() <= step_tol:
                break
    poly, dpoly = _kb_poly(theta, coeffs)
    residual = theta * poly - theta_d
    tol = res_tol * (1 + theta_d)
    converged = (residual.abs() <= tol) & (dpoly > 0) & (theta >= 0) & (theta < math.pi)
    dpoly = torch.where(converged, dpoly, torch.ones_like(dpoly))
    theta = theta - residual / dpoly
    return torch.where(converged, theta, torch.full_like(theta, math.nan))


def unproject(uv: torch.Tensor, K: torch.Tensor, dist: torch.Tensor | None, model: str) -> torch.Tensor:
    """Pixels to unit ray directions in the camera frame; inverse of :func:`project`.

    The distortion is inverted by Newton iterations (an analytic 2x2 Jacobian
    for ``opencv``, 1-D on theta for ``fisheye``), at most 20, stopping when
    every step is below a dtype-dependent tolerance. The result is
    differentiable w.r.t. ``uv``, ``K`` and ``dist`` (implicit-function
    gradient through one final Newton step). A pixel that no ray reaches
    (beyond the fold of a strong distortion, where Newton cannot converge)
    gets a NaN ray.

    Args:
        uv: ``(..., 2)`` pixel coordinates (OpenCV pixel centres); with a
            batched ``K`` or ``dist``, ``(B, ..., 2)``.
        K: ``(3, 3)`` or ``(B, 3, 3)`` intrinsics in pixels.
        dist: ``(D,)`` or ``(B, D)`` coefficients of ``model``; ``None`` or
            ``(0,)`` for pinhole.
        model: ``"pinhole"``, ``"opencv"`` or ``"fisheye"``.

    Returns:
        ``(..., 3)`` unit-norm directions (OpenCV camera frame). For the
        fisheye model a ray beyond 90 degrees from the axis has ``z <= 0``.

    Raises:
        ShapeError: on a wrong shape; ValueError: on an unknown model or a
        wrong number of coefficients.
    """
    k, coeffs = _intrinsics(uv, 2, "uv", K, dist, model)
    du, dv = uv[..., 0] - k[0][2], uv[..., 1] - k[1][2]
    det = k[0][0] * k[1][1] - k[0][1] * k[1][0]
    xd = (k[1][1] * du - k[0][1] * dv) / det
    yd = (k[0][0] * dv - k[1][0] * du) / det
    if model == "fisheye":
        q = xd * xd + yd * yd
        off_axis = q > 0
        theta_d = torch.where(off_axis, torch.sqrt(torch.where(off_axis, q, torch.ones_like(q))), torch.zeros_like(q))
        theta = _undistort_fisheye(theta_d, coeffs)
        # sin(theta) / theta_d = sinc(theta) / poly(theta), smooth at theta = 0.
        s = torch.sinc(theta / math.pi) / _kb_poly(theta, coeffs)[0]
        rays = torch.stack([s * xd, s * yd, torch.cos(theta)], dim=-1)
    else:
        x, y = _undistort_opencv(xd, yd, coeffs) if model == "opencv" else (xd, yd)
        rays = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    return rays / torch.linalg.vector_norm(rays, dim=-1, keepdim=True)
