"""Camera paths: ``c2w(t)`` (OpenCV, world mm) for every time t in seconds.

- :class:`TubeFollower`: an endoscope travelling along the centreline of a
  lumen (colon, airway), off-centre and steering with smooth random jitter.
- :class:`Hovering`: a laparoscope held near-still above tissue (slow drift
  plus tremor).
- :class:`Keyframes`: a path through given (eye, target, up) keyframes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from endo3d.core.config import positive
from endo3d.geometry.se3 import look_at
from endo3d.sim.noise import SmoothSignal


def look_at_np(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """float64 numpy front end of :func:`endo3d.geometry.se3.look_at`."""
    args = [torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (eye, target, up)]
    return look_at(*args).numpy()


def rotation_xyz(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """``Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (radians), a rotation in the camera frame."""
    cx, sx, cy, sy, cz, sz = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw), np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Curve:
    """A smooth space curve sampled densely, with a rotation-minimising frame.

    Attributes:
        points: ``(M, 3)`` samples in mm.
        s: ``(M,)`` arc length at each sample, from 0.
        tangents, normals, binormals: ``(M, 3)`` unit frame vectors
            (parallel transport: the frame does not twist around the curve).
    """

    points: np.ndarray
    s: np.ndarray
    tangents: np.ndarray
    normals: np.ndarray
    binormals: np.ndarray

    @classmethod
    def from_points(cls, points: np.ndarray, initial_normal: np.ndarray | None = None) -> "Curve":
        points = np.asarray(points, dtype=np.float64)
        seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        tangents = np.gradient(points, s, axis=0)
        tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
        n = np.cross(tangents[0], [0.0, 0.0, 1.0] if abs(tangents[0, 2]) < 0.9 else [1.0, 0.0, 0.0])
        if initial_normal is not None:
            n = np.asarray(initial_normal, dtype=np.float64) - tangents[0] * np.dot(initial_normal, tangents[0])
        n /= np.linalg.norm(n)
        normals = np.empty_like(points)
        for i, t in enumerate(tangents):  # parallel transport: project and renormalise
            n = n - t * np.dot(n, t)
            n /= np.linalg.norm(n)
            normals[i] = n
        return cls(points, s, tangents, normals, np.cross(tangents, normals))

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def sample(self, s: np.ndarray | float, table: np.ndarray) -> np.ndarray:
        """Linear interpolation of a per-sample ``table`` ``(M, ...)`` at arc lengths ``s``."""
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length)
        i = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.s) - 2)
        w = (s - self.s[i]) / np.maximum(self.s[i + 1] - self.s[i], 1e-12)
        w = w.reshape(w.shape + (1,) * (table.ndim - 1))
        return table[i] * (1 - w) + table[i + 1] * w

    def point(self, s: np.ndarray | float) -> np.ndarray:
        return self.sample(s, self.points)


def _signals(rng: np.random.Generator, count: int, min_period: float, max_period: float) -> tuple[SmoothSignal, ...]:
    return tuple(SmoothSignal.create(rng, min_period, max_period) for _ in range(count))


@dataclass(frozen=True)
class TubePathSpec:
    """How an endoscope moves along a lumen (scene-file table ``[path]``)."""

    speed_mm_s: float = 8.0
    start_mm: float = 30.0
    """Arc length where the camera starts."""
    lateral: float = 0.3
    """Largest camera offset from the centreline, as a fraction of the radius."""
    lookahead_mm: float = 40.0
    """The camera looks at the centreline this far ahead."""
    angular_deg: float = 6.0
    """Yaw/pitch jitter."""
    roll_deg: float = 20.0
    """Slow roll drift."""

    def problems(self) -> list[str]:
        out = positive(self, "lookahead_mm", prefix="path.")
        if self.speed_mm_s < 0 or self.start_mm < 0 or not 0 <= self.lateral < 1:
            out.append("path.speed_mm_s and path.start_mm must be >= 0, path.lateral in [0, 1)")
        return out


@dataclass(frozen=True)
class TubeFollower:
    """An endoscope moving along a lumen's centreline (settings: :class:`TubePathSpec`).

    Arc length ``s(t) = s_start + speed t + 2 g(t)`` mm (g: smooth unit-RMS
    signal, periods 1-4 s: operator hesitation), folded back and forth
    between ``s_start`` and ``s_end``. The camera sits off the centreline by
    up to ``lateral`` x the local radius, looks at the centreline point
    ``lookahead_mm`` ahead, plus yaw/pitch jitter of ``angular_deg`` and a
    slowly drifting roll of ``roll_deg`` (periods 2-8 s), and always faces
    towards increasing s.
    """

    curve: Curve
    radius: np.ndarray  # (M,) lumen radius at the curve samples
    s_start: float
    s_end: float
    spec: TubePathSpec
    signals: tuple[SmoothSignal, ...]

    @classmethod
    def create(cls, curve: Curve, radius: np.ndarray, rng: np.random.Generator, spec: TubePathSpec,
               s_end: float) -> "TubeFollower":
        signals = _signals(rng, 1, 1.0, 4.0) + _signals(rng, 2, 1.5, 6.0) + _signals(rng, 3, 2.0, 8.0)
        return cls(curve, radius, min(spec.start_mm, s_end), s_end, spec, signals)

    def arc_length(self, t: float) -> float:
        travel = self.spec.speed_mm_s * t + 2.0 * float(self.signals[0](t) - self.signals[0](0.0))
        span = max(self.s_end - self.s_start, 1e-6)
        u = np.mod(travel, 2 * span)
        return self.s_start + (u if u <= span else 2 * span - u)

    def c2w(self, t: float) -> np.ndarray:
        c = self.curve
        s = self.arc_length(t)
        r = float(c.sample(s, self.radius))
        lat = self.spec.lateral * r * np.tanh(np.array([self.signals[1](t), self.signals[2](t)]) / 1.5)
        eye = c.point(s) + lat[0] * c.sample(s, c.normals) + lat[1] * c.sample(s, c.binormals)
        target = c.point(min(s + self.spec.lookahead_mm, c.length))
        if np.linalg.norm(target - eye) < 1e-3:
            target = eye + c.sample(s, c.tangents)
        pose = look_at_np(eye, target, -c.sample(s, c.normals))
        angular, roll = self.spec.angular_deg, self.spec.roll_deg
        jitter = np.radians([angular * self.signals[3](t), angular * self.signals[4](t), roll * self.signals[5](t)])
        pose[:3, :3] = pose[:3, :3] @ rotation_xyz(*jitter)
        return pose


@dataclass(frozen=True)
class Hovering:
    """A hand-held laparoscope: eye and target drift by ``drift_mm`` (periods
    2-10 s) around fixed points; ``tremor_deg`` of angular jitter (periods
    0.3-1.5 s)."""

    eye: np.ndarray
    target: np.ndarray
    up: np.ndarray
    drift_mm: float
    tremor_deg: float
    signals: tuple[SmoothSignal, ...]

    @classmethod
    def create(cls, eye, target, up, rng: np.random.Generator, drift_mm: float, tremor_deg: float) -> "Hovering":
        signals = _signals(rng, 6, 2.0, 10.0) + _signals(rng, 2, 0.3, 1.5)
        return cls(np.asarray(eye, float), np.asarray(target, float), np.asarray(up, float), drift_mm, tremor_deg, signals)

    def c2w(self, t: float) -> np.ndarray:
        g = np.array([f(t) - f(0.0) for f in self.signals])
        pose = look_at_np(self.eye + self.drift_mm * g[0:3], self.target + self.drift_mm * g[3:6], self.up)
        pose[:3, :3] = pose[:3, :3] @ rotation_xyz(*np.radians(self.tremor_deg * np.array([g[6], g[7], 0.0])))
        return pose


@dataclass(frozen=True)
class Keyframes:
    """A uniform Catmull-Rom path through keyframes.

    ``times`` (K,) s increasing; ``eyes``, ``targets``, ``ups`` (K, 3). Before
    the first / after the last keyframe the path holds still.
    """

    times: np.ndarray
    eyes: np.ndarray
    targets: np.ndarray
    ups: np.ndarray

    def c2w(self, t: float) -> np.ndarray:
        if len(self.times) == 1:
            return look_at_np(self.eyes[0], self.targets[0], self.ups[0])
        t = float(np.clip(t, self.times[0], self.times[-1]))
        k = int(np.clip(np.searchsorted(self.times, t, side="right") - 1, 0, len(self.times) - 2))
        u = (t - self.times[k]) / (self.times[k + 1] - self.times[k])
        eye = _catmull_rom(self.eyes, k, u)
        target = _catmull_rom(self.targets, k, u)
        up = (1 - u) * self.ups[k] + u * self.ups[k + 1]
        return look_at_np(eye, target, up)


def _catmull_rom(p: np.ndarray, k: int, u: float) -> np.ndarray:
    p0, p1, p2, p3 = p[max(k - 1, 0)], p[k], p[k + 1], p[min(k + 2, len(p) - 1)]
    return 0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * u**3)
