"""Near-field spot lights that move with the endoscope (PPSNet model).

All tensors are in the camera frame (OpenCV, mm; see ``CONVENTIONS.md``): the
lights are fixed to the endoscope tip, so their pose does not change with the
camera pose.

Model (PPSNet near-field point light; EndoPBR's camera-attached spot light).
For a surface point ``X`` with unit normal ``n`` and a light at ``p`` with
axis ``d`` (any length, normalised here), on-axis radiant intensity ``I``
(linear RGB, radiance units x mm^2) and falloff exponent ``mu >= 0``::

    w = (p - X) / |p - X|                      unit vector towards the light
    A = max(d . (-w), 0)^mu / |p - X|^2        cone falloff and inverse square
    E = I * A * max(n . w, 0)                  irradiance, radiance units

``mu = 0`` is an isotropic emitter over the half space in front of the light
(the value that fits C3VD, where the light sits at the camera centre).
A point exactly at the light gets ``E = 0``; below 1e-6 mm from it the
squared distance is floored at 1e-12 mm^2 (so ``w`` is shorter than a unit
vector and ``E`` at most about ``1e12 I``), with finite gradients instead of
a division by zero. Tissue is never that close to a light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn

from endo3d.core import check_shape

__all__ = [
    "FALLOFF_MIN",
    "INTENSITY_MIN",
    "SPOT_MODEL",
    "SpotLight",
    "SpotLights",
    "spot_irradiance",
]

#: The light model, as written into the ``model`` field of a ``meta.json`` light.
SPOT_MODEL = "E = I * max(d.(-w),0)^mu / |p - X|^2 * max(n.w,0)"

#: Squared distances (mm^2) and squared lengths below this are clamped before
#: the inverse square root, so coincident points give zero, not NaN.
_MIN_SQ = 1e-12

#: Smallest falloff and intensity a :class:`SpotLights` module can represent
#: (softplus and exp never reach 0).
FALLOFF_MIN = 1e-6
INTENSITY_MIN = 1e-30

#: Floor of the base of the falloff power before its logarithm.
_MIN_POW_BASE = 1e-30


# Internal layout. The public functions take vectors as ``(..., 3)``; inside,
# they are moved to "channel first", ``(3, ...)``, with per-point scalars as
# ``(1, ...)``. On CPU this is several times faster: dot products reduce over
# the outer dimension and broadcasts between vectors and scalars run over
# contiguous memory, where ``(..., 3)`` broadcasts stride over a size-3 dim.
# Image code (``(B, C, H, W)``) gets this layout from a transpose, with no copy.


def _to_cf(t: torch.Tensor, rank: int) -> torch.Tensor:
    """``(*S, C) -> (C, 1, ..., 1, *S)`` with ``rank`` dims after ``C``, contiguous."""
    channels = t.shape[-1]
    cf = torch.stack(t.unbind(-1)) if channels > 1 else t.movedim(-1, 0).contiguous()
    return cf.reshape(channels, *([1] * (rank + 1 - t.dim())), *t.shape[:-1])


def _from_cf(t: torch.Tensor) -> torch.Tensor:
    """``(C, *S) -> (*S, C)``, contiguous."""
    return torch.stack(t.unbind(0), dim=-1)


def _rank(*tensors: torch.Tensor) -> int:
    """Number of leading (batch) dims of the broadcast of ``(..., C)`` tensors."""
    return max(t.dim() for t in tensors) - 1


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Channel-first dot product: ``(3, ...) x (3, ...) -> (1, ...)``."""
    return torch.linalg.vecdot(a, b, dim=0).unsqueeze(0)


def _step(x: torch.Tensor) -> torch.Tensor:
    """``[x > 0]`` as 0 / 1 in ``x``'s dtype, with zero gradient (``max(sign x, 0)``).

    On CPU this is several times faster than a comparison and ``where``.
    """
    return x.sign().clamp_min(0)


def _inv_norm(v: torch.Tensor) -> torch.Tensor:
    """Channel-first ``1 / |v|``, ``(1, ...)``; lengths below 1e-6 are clamped."""
    return _dot(v, v).clamp_min(_MIN_SQ).rsqrt()


def _positive_pow(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """``max(base, 0)^exponent`` with ``0^exponent = 0`` and finite gradients.

    Computed as ``[base > 0] exp(exponent log(max(base, 1e-30)))``: where
    ``base <= 0`` the value and both gradients are 0, also for
    ``exponent = 0`` (where ``0 * log 0`` would be NaN).
    """
    return torch.exp(exponent * base.clamp_min(_MIN_POW_BASE).log()) * _step(base)


@dataclass(frozen=True, eq=False)
class SpotLight:
    """A spot light attached to the endoscope, in the camera frame.

    Leading dimensions ``L`` (empty for one light, or e.g. ``(B,)`` for one
    light per image of a batch) broadcast against the points' leading
    dimensions.

    Attributes:
        position: ``(*L, 3)`` light position in mm, camera frame.
        direction: ``(*L, 3)`` light axis, camera frame; any non-zero length
            (it is normalised where it is used).
        intensity: ``(*L, 3)`` linear RGB radiant intensity on the axis, in
            radiance units x mm^2 (a point at distance ``r`` mm on the axis,
            facing the light, receives irradiance ``intensity / r^2``).
        falloff: ``(*L)`` cone exponent ``mu >= 0``.
    """

    position: torch.Tensor
    direction: torch.Tensor
    intensity: torch.Tensor
    falloff: torch.Tensor

    @classmethod
    def create(
        cls,
        position: Sequence[float] = (0.0, 0.0, 0.0),
        direction: Sequence[float] = (0.0, 0.0, 1.0),
        intensity: float | Sequence[float] = 1.0,
        falloff: float = 0.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> "SpotLight":
        """A single light from Python numbers.

        ``intensity`` is one number (white) or three (RGB).

        Example:
            >>> SpotLight.create((2.0, 0.0, 0.0), intensity=500.0, falloff=1.5).intensity
            tensor([500., 500., 500.])
        """
        rgb = [float(intensity)] * 3 if isinstance(intensity, (int, float)) else list(intensity)
        if len(rgb) != 3 or len(position) != 3 or len(direction) != 3:
            raise ValueError("position, direction and intensity need 3 values each")
        if falloff < 0:
            raise ValueError(f"falloff must be >= 0, got {falloff}")
        as_tensor = lambda values: torch.tensor(values, dtype=dtype, device=device)  # noqa: E731
        return cls(as_tensor(list(position)), as_tensor(list(direction)), as_tensor(rgb), as_tensor(float(falloff)))

    def to_json(self) -> dict[str, Any]:
        """The ``meta.json`` light entry (a single, unbatched light).

        Example:
            >>> SpotLight.create(falloff=1.0).to_json()["type"]
            'spot'
        """
        if self.position.shape != (3,) or self.falloff.dim() != 0:
            raise ValueError(f"to_json needs a single light, got position {tuple(self.position.shape)}")
        return {
            "type": "spot",
            "position_cam": [float(v) for v in self.position.detach().cpu()],
            "direction_cam": [float(v) for v in self.direction.detach().cpu()],
            "intensity": [float(v) for v in self.intensity.detach().cpu()],
            "falloff": float(self.falloff),
            "model": SPOT_MODEL,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], dtype: torch.dtype = torch.float32) -> "SpotLight":
        """Read a ``meta.json`` light entry written by :meth:`to_json`.

        Raises:
            ValueError: the entry is not a spot light of this model.
        """
        if d.get("type") != "spot":
            raise ValueError(f"not a spot light: type {d.get('type')!r}")
        if d.get("model", SPOT_MODEL) != SPOT_MODEL:
            raise ValueError(f"unknown spot light model {d['model']!r}")
        return cls.create(d["position_cam"], d["direction_cam"], d["intensity"], float(d["falloff"]), dtype=dtype)


class _LightCF(NamedTuple):
    """A :class:`SpotLight` in the channel-first layout, with the axis reversed and normalised."""

    position: torch.Tensor  # (3, 1.., *L)
    backward: torch.Tensor  # (3, 1.., *L), -d / |d|
    intensity: torch.Tensor  # (3, 1.., *L)
    falloff: torch.Tensor  # (1, 1.., *L)


def _light_cf(light: SpotLight, rank: int) -> _LightCF:
    """``light`` in the channel-first layout, for points with ``rank`` batch dims."""
    direction = _to_cf(light.direction, rank)
    return _LightCF(
        _to_cf(light.position, rank),
        direction * -_inv_norm(direction),
        _to_cf(light.intensity, rank),
        _to_cf(light.falloff.unsqueeze(-1), rank),
    )


def _light_rank(light: SpotLight) -> int:
    return _rank(light.position, light.direction, light.intensity, light.falloff.unsqueeze(-1))


def _spot_terms(
    points: torch.Tensor, normals: torch.Tensor, light: _LightCF
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A max(n.w, 0), w, n.w)``, channel first: ``(1, ...)``, ``(3, ...)``, ``(1, ...)``.

    The parts of the model (module docstring) that shading shares.
    """
    to_light = light.position - points
    dist_sq = _dot(to_light, to_light).clamp_min(_MIN_SQ)
    w = to_light * dist_sq.rsqrt()
    n_dot_l = _dot(normals, w)
    cone = _positive_pow(_dot(w, light.backward), light.falloff)
    return cone * n_dot_l.clamp_min(0) / dist_sq, w, n_dot_l


def spot_irradiance(
    points: torch.Tensor, normals: torch.Tensor, light: SpotLight
) -> tuple[torch.Tensor, torch.Tensor]:
    """Irradiance from one spot light and the unit direction towards it.

    ``E = I * max(d.(-w), 0)^mu / |p - X|^2 * max(n.w, 0)`` with
    ``w = normalize(p - X)`` (module docstring).

    Args:
        points: ``(..., 3)`` surface points ``X``, mm, camera frame.
        normals: ``(..., 3)`` unit surface normals ``n``, camera frame.
        light: a :class:`SpotLight` whose leading dims broadcast with ``...``.

    Returns:
        ``irradiance (..., 3)`` linear RGB in radiance units, and
        ``to_light (..., 3)`` the unit vector ``w`` (shorter within 1e-6 mm of the light).

    Example:
        >>> light = SpotLight.create(intensity=100.0)
        >>> E, w = spot_irradiance(torch.tensor([0.0, 0.0, 10.0]), torch.tensor([0.0, 0.0, -1.0]), light)
        >>> E
        tensor([1., 1., 1.])
    """
    check_shape(points, "... 3", "points")
    check_shape(normals, "... 3", "normals")
    rank = max(_rank(points, normals), _light_rank(light))
    light_cf = _light_cf(light, rank)
    scale, w, _ = _spot_terms(_to_cf(points, rank), _to_cf(normals, rank), light_cf)
    return _from_cf(scale * light_cf.intensity), _from_cf(w)


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` for ``y > 0``: ``y + log(1 - exp(-y))``."""
    return y + torch.log(-torch.expm1(-y))


class SpotLights(nn.Module):
    """``K`` learnable spot lights, e.g. for EndoPBR-style light fitting.

    Parameters (all stacked over the ``K`` lights, first dimension):

    - ``position (K, *L, 3)``: mm, camera frame, as is.
    - ``direction (K, *L, 3)``: unconstrained; normalised in :meth:`forward`.
    - ``log_intensity (K, *L, 3)``: ``intensity = exp(log_intensity)``, so
      intensities stay positive (an intensity below ``INTENSITY_MIN`` is
      stored as ``INTENSITY_MIN``).
    - ``raw_falloff (K, *L)``: ``falloff = softplus(raw_falloff)``, so the
      falloff stays positive (a falloff below ``FALLOFF_MIN``, e.g. 0, is
      stored as ``FALLOFF_MIN``).

    The leading dims ``L`` of the given lights are broadcast to a common shape.

    Example:
        >>> module = SpotLights([SpotLight.create(falloff=1.0), SpotLight.create((1.0, 0.0, 0.0))])
        >>> [light.position.shape for light in module()]
        [torch.Size([3]), torch.Size([3])]
    """

    def __init__(self, lights: Sequence[SpotLight]) -> None:
        super().__init__()
        if len(lights) == 0:
            raise ValueError("SpotLights needs at least one light")

        def stack(name: str) -> torch.Tensor:
            return torch.stack(torch.broadcast_tensors(*(getattr(light, name).detach() for light in lights)))

        self.position = nn.Parameter(stack("position").clone())
        self.direction = nn.Parameter(nn.functional.normalize(stack("direction"), dim=-1))
        self.log_intensity = nn.Parameter(stack("intensity").clamp_min(INTENSITY_MIN).log())
        self.raw_falloff = nn.Parameter(_softplus_inverse(stack("falloff").clamp_min(FALLOFF_MIN)))

    def __len__(self) -> int:
        return self.position.shape[0]

    def forward(self) -> list[SpotLight]:
        """The ``K`` lights as :class:`SpotLight` (differentiable in the parameters)."""
        direction = nn.functional.normalize(self.direction, dim=-1)
        intensity = self.log_intensity.exp()
        falloff = nn.functional.softplus(self.raw_falloff)
        return [
            SpotLight(self.position[k], direction[k], intensity[k], falloff[k]) for k in range(len(self))
        ]

