"""Metal-rough microfacet BRDF (Disney / glTF style), as in EndoPBR.

For unit vectors ``n`` (normal), ``l`` (to the light), ``v`` (to the viewer)
and ``h = normalize(l + v)``::

    F0   = lerp(specular, albedo, metallic) = (1 - metallic) specular + metallic albedo
    F90  = min(50 F0, 1)
    F(c) = F0 + (F90 - F0) (1 - c)^5                              Schlick
    D    = a^2 / (pi ((n.h)^2 (a^2 - 1) + 1)^2)                   GGX / Trowbridge-Reitz
    G    = 2 (n.l)(n.v) / ((n.v) L(n.l) + (n.l) L(n.v)),          height-correlated Smith
           L(c) = sqrt(a^2 + (1 - a^2) c^2)                       for GGX (Heitz 2014)
    f    = (1 - F(n.l)) (1 - F(n.v)) (1 - metallic) albedo / pi   diffuse
         + F(v.h) D G / (4 (n.l)(n.v))                            specular

with ``a = alpha = max(roughness^2, ALPHA_MIN)``, and ``f = 0`` where
``n.l <= 0`` or ``n.v <= 0``. ``f`` is in 1/sr and symmetric in ``l`` and
``v`` (Helmholtz reciprocity). The specular term is evaluated as
``F D V`` with the visibility ``V = G / (4 (n.l)(n.v)) = 0.5 / ((n.v) L(n.l) +
(n.l) L(n.v))``, which stays finite at grazing angles.

Two choices differ from the plain ``(1 - F(v.h)) albedo / pi + F D G / (4 n.l n.v)``:

- The diffuse lobe is weighted by the Fresnel transmission in and out,
  ``(1 - F(n.l))(1 - F(n.v))``, not by ``1 - F(v.h)``. With ``1 - F(v.h)`` a
  white dielectric reflects more than it receives at grazing views (a
  directional albedo of 1.3 at 80 degrees for roughness 0.2); this weighting
  stays below 1 and is still reciprocal.
- ``F90 = min(50 F0, 1)`` (Filament's rule): every real material has
  ``F0 >= 0.02`` and so ``F90 = 1``, while ``specular = metallic = 0`` gives
  an exactly Lambertian surface, ``f = albedo / pi``.

All colours are linear RGB. Inside, negative cosines are clamped to 0 and
``1 - c`` of the Fresnel term to [0, 1]; at normal incidence (``n.l = n.v =
n.h = 1``) no clamp changes the slope, so gradients there are the smooth ones,
also for directions whose length is perturbed (as ``gradcheck`` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from endo3d.core import check_shape

# The channel-first helpers live with the light model, the lower of the two modules.
from endo3d.render.lights import _dot, _from_cf, _rank, _step, _to_cf

__all__ = [
    "ALPHA_MIN",
    "Material",
    "brdf",
    "fresnel_schlick",
    "ggx_ndf",
    "roughness_to_alpha",
    "smith_g",
    "smith_visibility",
]

#: Smallest GGX alpha: ``alpha = max(roughness^2, ALPHA_MIN)``. It bounds the
#: peak of ``D`` (``1 / (pi alpha^2)`` ~ 3e5 / sr) so float32 stays finite, and
#: it is well below the roughness of wet tissue.
ALPHA_MIN = 1e-3

#: Floor for ``|l + v|^2`` and for the visibility denominator; only reached
#: where the BRDF is masked to 0.
_TINY = 1e-12


@dataclass(frozen=True, eq=False)
class Material:
    """Per-point metal-rough material; fields broadcast against each other.

    Attributes:
        albedo: ``(..., 3)`` linear base colour in [0, 1].
        roughness: ``(..., 1)`` perceptual roughness in [0, 1];
            ``alpha = max(roughness^2, ALPHA_MIN)``.
        specular: ``(..., 1)`` dielectric reflectance at normal incidence
            ``F0`` (water and wet tissue: 0.02 to 0.05).
        metallic: ``(..., 1)`` in [0, 1]; 1 makes ``F0 = albedo`` and removes
            the diffuse term.
    """

    albedo: torch.Tensor
    roughness: torch.Tensor
    specular: torch.Tensor
    metallic: torch.Tensor

    @classmethod
    def create(
        cls,
        albedo: float | Sequence[float] = 0.8,
        roughness: float = 0.5,
        specular: float = 0.04,
        metallic: float = 0.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> "Material":
        """A uniform material (shapes ``(3,)`` and ``(1,)``) from Python numbers.

        Example:
            >>> Material.create((0.7, 0.3, 0.3), roughness=0.4).albedo
            tensor([0.7000, 0.3000, 0.3000])
        """
        rgb = [float(albedo)] * 3 if isinstance(albedo, (int, float)) else [float(c) for c in albedo]
        if len(rgb) != 3:
            raise ValueError(f"albedo needs 1 or 3 values, got {len(rgb)}")
        one = lambda x: torch.tensor([float(x)], dtype=dtype, device=device)  # noqa: E731
        return cls(torch.tensor(rgb, dtype=dtype, device=device), one(roughness), one(specular), one(metallic))

    def check(self) -> None:
        """Raise :class:`~endo3d.core.ShapeError` unless the trailing dims are 3, 1, 1, 1."""
        check_shape(self.albedo, "... 3", "material.albedo")
        check_shape(self.roughness, "... 1", "material.roughness")
        check_shape(self.specular, "... 1", "material.specular")
        check_shape(self.metallic, "... 1", "material.metallic")

    def fields(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(albedo, roughness, specular, metallic)``, the tensors themselves."""
        return self.albedo, self.roughness, self.specular, self.metallic


def _material_cf(material: Material, rank: int) -> Material:
    """The fields in the channel-first layout ``(C, 1.., ...)`` (see ``lights.py``)."""
    return Material(*(_to_cf(field, rank) for field in material.fields()))


def roughness_to_alpha(roughness: torch.Tensor) -> torch.Tensor:
    """GGX ``alpha = max(roughness^2, ALPHA_MIN)``; same shape as ``roughness``.

    Below ``roughness = sqrt(ALPHA_MIN)`` ~ 0.032 the value is constant and its
    gradient is 0.
    """
    return roughness.square().clamp_min(ALPHA_MIN)


def _schlick_weight(cos: torch.Tensor) -> torch.Tensor:
    """``(1 - cos)^5`` with ``cos`` clamped to [0, 1]."""
    m = (1 - cos).clamp(0, 1)
    m2 = m * m
    return m2 * m2 * m


def fresnel_schlick(cos: torch.Tensor, f0: torch.Tensor, f90: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Schlick's Fresnel ``F = F0 + (F90 - F0)(1 - cos)^5``.

    Args:
        cos: ``(..., 1)`` cosine of the incidence angle (``v.h`` for a
            microfacet, ``n.l`` or ``n.v`` for the macro surface); ``1 - cos``
            is clamped to [0, 1].
        f0: ``(..., C)`` reflectance at normal incidence.
        f90: reflectance at grazing incidence, 1 for the physical Schlick
            curve (:func:`brdf` uses ``min(50 F0, 1)``).

    Returns:
        ``(..., C)``: ``F0`` at ``cos = 1``, ``F90`` at ``cos = 0``.
    """
    return torch.addcmul(f0, f90 - f0, _schlick_weight(cos))


def _f90(f0: torch.Tensor) -> torch.Tensor:
    """Grazing reflectance ``min(50 F0, 1)``: 1 for any real material (``F0 >= 0.02``), 0 for ``F0 = 0``."""
    return (50 * f0).clamp_max(1)


def _ggx_k(sin2_h: torch.Tensor, a2: torch.Tensor, one_minus_a2: torch.Tensor) -> torch.Tensor:
    """``k = (n.h)^2 (a^2 - 1) + 1 = a^2 + (1 - a^2) sin^2(theta_h)``, at least ``a^2`` for ``sin^2 >= 0``."""
    return torch.addcmul(a2, one_minus_a2, sin2_h)


def ggx_ndf(n_dot_h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """GGX (Trowbridge-Reitz) normal distribution ``D(h)`` in 1/sr.

    ``D = alpha^2 / (pi ((n.h)^2 (alpha^2 - 1) + 1)^2)``; it is normalised:
    ``integral of D(h) (n.h) d omega_h`` over the hemisphere is 1.

    Args:
        n_dot_h: ``(..., 1)`` cosine of the microfacet normal, in [0, 1]
            (``1 - (n.h)^2`` is clamped at 0).
        alpha: ``(..., 1)`` GGX width (``roughness_to_alpha``), > 0.
    """
    a2 = alpha.square()
    k = _ggx_k(((1 - n_dot_h) * (1 + n_dot_h)).clamp_min(0), a2, 1 - a2)
    return a2 / (math.pi * k * k)


def _lambda_sqrt(cos: torch.Tensor, a2: torch.Tensor, one_minus_a2: torch.Tensor) -> torch.Tensor:
    """``L(c) = sqrt(a^2 + (1 - a^2) c^2)`` for a cosine already clamped at 0."""
    return torch.addcmul(a2, one_minus_a2, cos * cos).sqrt()


def _half_visibility_inverse(
    nl: torch.Tensor, nv: torch.Tensor, lam_l: torch.Tensor, lam_v: torch.Tensor
) -> torch.Tensor:
    """``0.5 / V = (n.v) L(n.l) + (n.l) L(n.v)`` from clamped cosines, floored at 1e-12."""
    return torch.addcmul(nv * lam_l, nl, lam_v).clamp_min(_TINY)


def smith_visibility(n_dot_l: torch.Tensor, n_dot_v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Height-correlated Smith visibility ``V = G / (4 (n.l)(n.v))`` for GGX.

    ``V = 0.5 / ((n.v) sqrt(a^2 + (1 - a^2)(n.l)^2) + (n.l) sqrt(a^2 + (1 - a^2)(n.v)^2))``;
    finite at grazing angles (``1 / (2 alpha n.v)`` at ``n.l = 0``).

    Args:
        n_dot_l, n_dot_v: ``(..., 1)`` cosines; negative ones count as 0.
        alpha: ``(..., 1)`` GGX width, > 0.
    """
    nl, nv, a2 = n_dot_l.clamp_min(0), n_dot_v.clamp_min(0), alpha.square()
    lam_l, lam_v = _lambda_sqrt(nl, a2, 1 - a2), _lambda_sqrt(nv, a2, 1 - a2)
    return 0.5 / _half_visibility_inverse(nl, nv, lam_l, lam_v)


def smith_g(n_dot_l: torch.Tensor, n_dot_v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Height-correlated Smith masking-shadowing ``G2 = 1 / (1 + Lambda(l) + Lambda(v))`` for GGX.

    ``Lambda(c) = (sqrt(1 + alpha^2 tan^2) - 1) / 2``, written without
    tangents as ``G = 2 (n.l)(n.v) / ((n.v) L(n.l) + (n.l) L(n.v))`` with
    ``L(c) = sqrt(a^2 + (1 - a^2) c^2)``. In [0, 1]; 1 at normal incidence
    for both directions, 0 at grazing.

    Args:
        n_dot_l, n_dot_v: ``(..., 1)`` cosines; negative ones count as 0.
        alpha: ``(..., 1)`` GGX width, > 0.
    """
    v = smith_visibility(n_dot_l, n_dot_v, alpha)
    return 4 * n_dot_l.clamp_min(0) * n_dot_v.clamp_min(0) * v


class _Lobe(NamedTuple):
    """Light-independent terms of the BRDF at each point, masked by ``[n.v > 0]``; channel first."""

    base: torch.Tensor  # (1 - metallic) albedo, unmasked (for the ambient term)
    diffuse: torch.Tensor  # [n.v > 0] (1 - F(n.v)) (1 - metallic) albedo / pi
    f0: torch.Tensor  # lerp(specular, albedo, metallic)
    one_minus_f0: torch.Tensor
    f90_minus_f0: torch.Tensor
    a2: torch.Tensor  # alpha^2
    one_minus_a2: torch.Tensor
    n_dot_v: torch.Tensor  # clamped at 0
    lam_v: torch.Tensor  # L(n.v)
    spec_scale: torch.Tensor  # [n.v > 0] a^2 / (2 pi)


def _lobe(material: Material, n_dot_v: torch.Tensor) -> _Lobe:
    metallic = material.metallic
    f0 = torch.lerp(material.specular, material.albedo, metallic)
    f90_minus_f0 = _f90(f0) - f0
    one_minus_f0 = 1 - f0
    a2 = roughness_to_alpha(material.roughness).square()
    one_minus_a2 = 1 - a2
    nv = n_dot_v.clamp_min(0)
    front = _step(n_dot_v)
    base = (1 - metallic) * material.albedo
    transmit_v = torch.addcmul(one_minus_f0, f90_minus_f0, _schlick_weight(nv), value=-1)
    return _Lobe(
        base=base,
        diffuse=base * transmit_v * (front / math.pi),
        f0=f0,
        one_minus_f0=one_minus_f0,
        f90_minus_f0=f90_minus_f0,
        a2=a2,
        one_minus_a2=one_minus_a2,
        n_dot_v=nv,
        lam_v=_lambda_sqrt(nv, a2, one_minus_a2),
        spec_scale=a2 * (front / (2 * math.pi)),
    )


def _reflect(
    lobe: _Lobe, normal: torch.Tensor, to_light: torch.Tensor, to_view: torch.Tensor, n_dot_l: torch.Tensor
) -> torch.Tensor:
    """The BRDF in the channel-first layout, without the ``[n.l > 0]`` mask.

    ``normal``, ``to_light``, ``to_view`` are unit ``(3, ...)`` vectors and
    ``n_dot_l`` is ``(1, ...)``. With ``s = l + v``: ``v.h = |s| / 2`` and
    ``sin^2(theta_h) = 1 - (n.h)^2 = |s - n (n.s)|^2 / |s|^2``, from the part
    of ``s`` tangent to the surface. Forming ``1 - (n.h)^2`` from ``n.h``
    would lose it to rounding near the specular peak (float32 errors of 10%
    in ``D`` at ``alpha = ALPHA_MIN``). Then
    ``D V = a^2 / (2 pi k^2 ((n.v) L(n.l) + (n.l) L(n.v)))``. Every term is
    finite for any input; callers zero ``n.l <= 0``.
    """
    nl = n_dot_l.clamp_min(0)
    half = to_light + to_view
    half_sq = _dot(half, half).clamp_min(_TINY)
    tangent = torch.addcmul(half, normal, n_dot_l + lobe.n_dot_v, value=-1)
    fresnel = torch.addcmul(lobe.f0, lobe.f90_minus_f0, _schlick_weight(0.5 * half_sq.sqrt()))
    transmit_l = torch.addcmul(lobe.one_minus_f0, lobe.f90_minus_f0, _schlick_weight(nl), value=-1)
    k = _ggx_k(_dot(tangent, tangent) / half_sq, lobe.a2, lobe.one_minus_a2)
    lam_l = _lambda_sqrt(nl, lobe.a2, lobe.one_minus_a2)
    specular = lobe.spec_scale / (k * k * _half_visibility_inverse(nl, lobe.n_dot_v, lam_l, lobe.lam_v))
    return torch.addcmul(lobe.diffuse * transmit_l, fresnel, specular)


def brdf(normal: torch.Tensor, to_light: torch.Tensor, to_view: torch.Tensor, material: Material) -> torch.Tensor:
    """The BRDF ``f(l, v)`` in 1/sr (module docstring), linear RGB.

    Args:
        normal: ``(..., 3)`` unit normal ``n``.
        to_light: ``(..., 3)`` unit vector ``l`` from the point to the light.
        to_view: ``(..., 3)`` unit vector ``v`` from the point to the viewer.
        material: :class:`Material` broadcasting with ``...``.

    Returns:
        ``(..., 3)``; 0 where ``n.l <= 0`` or ``n.v <= 0``.

    Example:
        >>> n = torch.tensor([0.0, 0.0, 1.0])
        >>> f = brdf(n, n, n, Material.create(1.0, specular=0.0))
        >>> torch.allclose(f, torch.full((3,), 1 / math.pi))
        True
    """
    check_shape(normal, "... 3", "normal")
    check_shape(to_light, "... 3", "to_light")
    check_shape(to_view, "... 3", "to_view")
    material.check()
    rank = _rank(normal, to_light, to_view, *material.fields())
    n, l, v = (_to_cf(t, rank) for t in (normal, to_light, to_view))
    lobe = _lobe(_material_cf(material, rank), _dot(n, v))
    n_dot_l = _dot(n, l)
    return _from_cf(_reflect(lobe, n, l, v, n_dot_l) * _step(n_dot_l))
