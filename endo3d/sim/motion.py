"""How surfaces move: smooth tissue deformation and rigid instrument motion.

A motion maps rest positions ``X`` (world mm, the surface at t = 0) to
positions at time ``t`` (s), ``x = phi(X, t)``, and gives the deformation
gradient ``F = dx/dX``, which carries rest normals to deformed normals:
``n ~ cof(F) n_rest`` (Nanson's formula). All deformations vanish at t = 0,
so the rest mesh *is* the surface at the first frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np


class Motion(Protocol):
    static: bool
    """True when positions do not depend on time."""

    def positions(self, rest: np.ndarray, t: float) -> np.ndarray:
        """``(N, 3)`` rest positions -> ``(N, 3)`` positions at time ``t``."""
        ...

    def gradient(self, rest: np.ndarray, t: float) -> np.ndarray:
        """``(N, 3, 3)`` deformation gradient ``dx/dX`` at the rest positions."""
        ...


def transform_normals(gradient: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Unit normals after a deformation: ``normalize(cof(F) n)``.

    With the columns ``f1 f2 f3`` of ``F``, ``cof(F) n = n1 (f2 x f3) +
    n2 (f3 x f1) + n3 (f1 x f2)``, which needs no matrix inverse.
    """
    f1, f2, f3 = gradient[:, :, 0], gradient[:, :, 1], gradient[:, :, 2]
    n = (normals[:, 0:1] * np.cross(f2, f3) + normals[:, 1:2] * np.cross(f3, f1)
         + normals[:, 2:3] * np.cross(f1, f2))
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Static:
    """A surface that does not move."""

    static: bool = True

    def positions(self, rest: np.ndarray, t: float) -> np.ndarray:
        return rest

    def gradient(self, rest: np.ndarray, t: float) -> np.ndarray:
        return np.broadcast_to(np.eye(3), (len(rest), 3, 3))


@dataclass(frozen=True)
class Rigid:
    """Rigid motion ``x = R(t) X + p(t)`` given by a pose function ``t -> (4, 4)``.

    The pose at t = 0 must be the identity when the rest mesh is stored in
    world coordinates at t = 0; instruments instead store their mesh in the
    instrument frame and their pose function gives the frame at every t.
    """

    pose: Callable[[float], np.ndarray]
    static: bool = False

    def positions(self, rest: np.ndarray, t: float) -> np.ndarray:
        T = self.pose(t)
        return rest @ T[:3, :3].T + T[:3, 3]

    def gradient(self, rest: np.ndarray, t: float) -> np.ndarray:
        return np.broadcast_to(self.pose(t)[:3, :3], (len(rest), 3, 3))


class DisplacementField(Protocol):
    """A smooth displacement ``d(X, t)`` with ``d(X, 0) = 0``."""

    def displacement(self, rest: np.ndarray, t: float) -> np.ndarray: ...

    def jacobian(self, rest: np.ndarray, t: float) -> np.ndarray:
        """``(N, 3, 3)`` with entries ``dd_i / dX_j``."""
        ...


@dataclass(frozen=True)
class FourierModes:
    """A sum of travelling-free standing waves, smooth in space and time.

    ``d(X, t) = sum_m a_m cos(k_m . X + psi_m) (sin(w_m t + phi_m) - sin(phi_m))``

    with wave vectors ``k_m`` (rad/mm), amplitude vectors ``a_m`` (mm),
    angular frequencies ``w_m`` (rad/s) and phases; ``d(X, 0) = 0``.
    """

    wavevectors: np.ndarray  # (M, 3)
    spatial_phase: np.ndarray  # (M,)
    amplitudes: np.ndarray  # (M, 3)
    omega: np.ndarray  # (M,)
    temporal_phase: np.ndarray  # (M,)

    @classmethod
    def random(
        cls, rng: np.random.Generator, modes: int, amplitude_mm: float, wavelength_mm: float,
        frequency_hz: float, up: np.ndarray | None = None, vertical_bias: float = 0.0,
    ) -> "FourierModes":
        """``modes`` random modes whose summed RMS displacement is ``amplitude_mm``.

        Wavelengths are ``wavelength_mm`` times a factor in [0.7, 1.4],
        frequencies ``frequency_hz`` times a factor in [0.9, 1.1]. With
        ``vertical_bias`` b in [0, 1] the amplitude directions lean towards
        ``up``: ``a ~ (1 - b) random + b up``.
        """
        k_dir = _unit(rng.standard_normal((modes, 3)))
        k = k_dir * (2 * np.pi / (wavelength_mm * rng.uniform(0.7, 1.4, (modes, 1))))
        a_dir = _unit(rng.standard_normal((modes, 3)))
        if up is not None and vertical_bias > 0:
            a_dir = _unit((1 - vertical_bias) * a_dir + vertical_bias * np.sign(rng.standard_normal((modes, 1))) * up)
        # Over space cos^2 averages 1/2, over time and phase (sin(wt + p) - sin p)^2
        # averages 1: a mode's mean square is |a|^2 / 2, so |a| = amp sqrt(2 / M).
        a = a_dir * amplitude_mm * np.sqrt(2.0 / modes)
        omega = 2 * np.pi * frequency_hz * rng.uniform(0.9, 1.1, modes)
        return cls(k, rng.uniform(0, 2 * np.pi, modes), a, omega, rng.uniform(0, 2 * np.pi, modes))

    @classmethod
    def concatenate(cls, fields: "list[FourierModes]") -> "FourierModes":
        """One field holding the modes of several (their sum)."""
        return cls(*(np.concatenate([getattr(f, name) for f in fields]) for name in
                     ("wavevectors", "spatial_phase", "amplitudes", "omega", "temporal_phase")))

    def _terms(self, rest: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Spatial phase ``(N, M)`` and time factor ``(M,)``, in ``rest``'s dtype
        (float32 rest positions keep the whole evaluation in float32)."""
        dtype = rest.dtype
        phase = rest @ self.wavevectors.T.astype(dtype) + self.spatial_phase.astype(dtype)
        factor = np.sin(self.omega * t + self.temporal_phase) - np.sin(self.temporal_phase)
        return phase, factor.astype(dtype)

    def displacement(self, rest: np.ndarray, t: float) -> np.ndarray:
        phase, factor = self._terms(rest, t)
        return (np.cos(phase) * factor) @ self.amplitudes.astype(rest.dtype)

    def jacobian(self, rest: np.ndarray, t: float) -> np.ndarray:
        phase, factor = self._terms(rest, t)
        outer = (self.amplitudes[:, :, None] * self.wavevectors[:, None, :]).reshape(-1, 9).astype(rest.dtype)
        return ((-np.sin(phase) * factor) @ outer).reshape(-1, 3, 3)


@dataclass(frozen=True)
class Deformation:
    """Tissue motion ``x = X + scale * sum_i d_i(X, t)``; ``scale = 0`` is rigid."""

    fields: tuple[DisplacementField, ...] = field(default=())
    scale: float = 1.0

    @property
    def static(self) -> bool:
        return self.scale == 0 or not self.fields

    def positions(self, rest: np.ndarray, t: float) -> np.ndarray:
        if self.static:
            return rest
        d = sum(f.displacement(rest, t) for f in self.fields)
        return rest + self.scale * d

    def gradient(self, rest: np.ndarray, t: float) -> np.ndarray:
        eye = np.eye(3, dtype=rest.dtype)
        if self.static:
            return np.broadcast_to(eye, (len(rest), 3, 3))
        return eye + self.scale * sum(f.jacobian(rest, t) for f in self.fields)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)
