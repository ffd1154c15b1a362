"""Real spherical harmonics for view-dependent colour, as 3DGS (and gsplat) use them.

A Gaussian's colour seen along the unit direction ``d`` (from the camera
centre to the Gaussian, world frame) is::

    colour(d) = max(sum_k c_k Y_k(d) + 0.5, 0)          k = 0 .. (D + 1)^2 - 1

with ``c_k`` the ``(3,)`` RGB coefficients and ``Y_k`` the real spherical
harmonics of degree ``l`` and order ``m`` at index ``k = l^2 + l + m``.
:func:`eval_sh` returns the sum; the caller adds 0.5 and clamps.

``Y_k`` are the real harmonics *with* the Condon-Shortley phase, the sign
convention of 3DGS: ``Y_lm = sqrt(2) Im Y_l^|m|`` for ``m < 0``, ``Y_l^0``
for ``m = 0``, ``sqrt(2) Re Y_l^m`` for ``m > 0``, ``Y_l^m`` the complex
harmonics with the ``(-1)^m`` factor. In Cartesian form, for ``d = (x, y, z)``::

    l = 0:  C0
    l = 1:  -C1 y,  C1 z,  -C1 x
    l = 2:  C2[0] xy,  C2[1] yz,  C2[2] (2z^2 - x^2 - y^2),  C2[3] xz,  C2[4] (x^2 - y^2)
    l = 3:  C3[0] y (3x^2 - y^2),  C3[1] xyz,  C3[2] y (4z^2 - x^2 - y^2),
            C3[3] z (2z^2 - 3x^2 - 3y^2),  C3[4] x (4z^2 - x^2 - y^2),
            C3[5] z (x^2 - y^2),  C3[6] x (x^2 - 3y^2)

With only the degree-0 term the colour does not depend on the view:
``rgb = C0 c_0 + 0.5`` (:func:`sh0_to_rgb`, :func:`rgb_to_sh0`).
"""

from __future__ import annotations

import torch

from endo3d.core import check_shape

__all__ = ["C0", "MAX_SH_DEGREE", "eval_sh", "num_sh_bases", "rgb_to_sh0", "sh0_to_rgb", "sh_basis"]

#: ``Y_00 = 1 / (2 sqrt(pi))``.
C0 = 0.28209479177387814
#: ``sqrt(3 / (4 pi))``.
C1 = 0.4886025119029199
#: Degree-2 factors: ``sqrt(15/pi)/2`` (twice, with signs), ``sqrt(5/pi)/4``, ``sqrt(15/pi)/4``.
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
#: Degree-3 factors: ``sqrt(35/(2 pi))/4``, ``sqrt(105/pi)/2``, ``sqrt(21/(2 pi))/4``, ``sqrt(7/pi)/4``,
#: ``sqrt(21/(2 pi))/4``, ``sqrt(105/pi)/4``, ``sqrt(35/(2 pi))/4``, with the Condon-Shortley signs.
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

#: Highest degree implemented (that of 3DGS).
MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """Number of coefficients per colour channel up to ``degree``: ``(degree + 1)^2``.

    Example:
        >>> [num_sh_bases(d) for d in range(4)]
        [1, 4, 9, 16]
    """
    _check_degree(degree)
    return (degree + 1) ** 2


def _check_degree(degree: int) -> None:
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in [0, {MAX_SH_DEGREE}], got {degree}")


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """The real harmonics ``Y_k(d)``, ``k < (degree + 1)^2``, in 3DGS order and signs.

    Args:
        degree: 0 .. 3.
        dirs: :math:`(..., 3)` unit directions (not normalised here).

    Returns:
        :math:`(..., (degree + 1)^2)`.
    """
    check_shape(dirs, "... 3", "dirs")
    _check_degree(degree)
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [C2[0] * x * y, C2[1] * y * z, C2[2] * (2 * zz - xx - yy), C2[3] * x * z, C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * x * y * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """``sum_k coeffs[..., k, :] Y_k(dirs)`` over the bases up to ``degree``.

    ``coeffs`` may hold more bases than ``degree`` needs (a model of degree
    3 drawn at a lower active degree while training): only the first
    ``(degree + 1)^2`` are used. Add 0.5 and clamp at 0 for the colour.

    Args:
        degree: 0 .. 3.
        coeffs: :math:`(..., K, 3)`, ``K >= (degree + 1)^2``.
        dirs: :math:`(..., 3)` unit viewing directions (camera to Gaussian, world frame).

    Returns:
        :math:`(..., 3)`.

    Example:
        >>> rgb = torch.tensor([[0.2, 0.5, 0.9]])
        >>> sh = rgb_to_sh0(rgb)[:, None, :]
        >>> eval_sh(0, sh, torch.tensor([[0.0, 0.0, 1.0]])) + 0.5
        tensor([[0.2000, 0.5000, 0.9000]])
    """
    count = num_sh_bases(degree)
    check_shape(coeffs, "... K 3", "coeffs")
    if coeffs.shape[-2] < count:
        raise ValueError(f"degree {degree} needs {count} SH coefficients, coeffs has {coeffs.shape[-2]}")
    basis = sh_basis(degree, dirs)
    return (basis.unsqueeze(-1) * coeffs[..., :count, :]).sum(-2)


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """Degree-0 coefficient giving the view-independent colour ``rgb``: ``(rgb - 0.5) / C0`` (any shape)."""
    return (rgb - 0.5) / C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """Colour of a degree-0 coefficient, before clamping: ``C0 sh0 + 0.5`` (any shape)."""
    return sh0 * C0 + 0.5

