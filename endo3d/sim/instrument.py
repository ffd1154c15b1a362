"""A laparoscopic grasper: geometry, scripted motion and the tissue it pulls.

Instrument frame: the jaw hinge at the origin, z along the shaft towards the
jaws, jaws opening in the y-z plane. The shaft (black) runs back from the
hinge to the trocar; a metal clevis holds two tapered metal jaws.

The script repeats a cycle of ``period`` seconds per grasp; the phase
``u = (t mod period) / period`` runs: approach from a hover point with jaws
opening (0-0.3), descend onto the grasp point G (0.3-0.38), close (0.38-0.45),
pull G along ``pull`` (0.45-0.7), hold (0.7-0.78), open and let go
(0.78-0.85), retract (0.85-1). While grasped, tissue near G follows the jaws:
``d(X, t) = g(t) (tip(t) - G) exp(-|X - G|^2 / (2 sigma^2))`` with the
engagement g rising at the close and falling at the release.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from endo3d.core.config import positive
from endo3d.sim.noise import smoothstep
from endo3d.sim.trajectory import look_at_np


def _ramp(u: float, a: float, b: float) -> float:
    return float(smoothstep((u - a) / (b - a)))


@dataclass(frozen=True)
class InstrumentSpec:
    """Scene-file settings of the grasper (``[instrument]``)."""

    enabled: bool = True
    trocar_mm: tuple[float, float, float] = (130.0, -10.0, 90.0)
    """Where the shaft enters the body (world mm)."""
    shaft_radius_mm: float = 2.5
    jaw_length_mm: float = 11.0
    jaw_open_deg: float = 40.0
    cycle_s: float = 6.0
    """Length of one approach-grasp-pull-release cycle (at most the sequence length)."""
    grasp_region_mm: float = 25.0
    """Grasp points are drawn within this distance of the view centre."""
    pull_mm: tuple[float, float, float] = (-4.0, 0.0, 9.0)
    """How far the jaws pull the tissue (world mm)."""
    pull_sigma_mm: float = 10.0
    """Extent of the tissue dragged along."""
    shaft_srgb: tuple[float, float, float] = (0.06, 0.06, 0.07)
    metal_srgb: tuple[float, float, float] = (0.75, 0.75, 0.76)

    def problems(self) -> list[str]:
        return positive(self, "shaft_radius_mm", "jaw_length_mm", "cycle_s", "pull_sigma_mm", prefix="instrument.")


@dataclass(frozen=True)
class GraspScript:
    """Where the jaws are and how open, at any time (picklable)."""

    trocar: np.ndarray  # (3,)
    grasps: np.ndarray  # (K, 3) grasp point per cycle, on the tissue at rest
    up: np.ndarray  # (3,) world up (away from the tissue)
    period: float
    pull: np.ndarray  # (3,)
    jaw_open_rad: float
    grasp_depth_mm: float  # hinge-to-grasp-point distance along the jaws

    def _cycle(self, t: float) -> tuple[int, float]:
        k = int(np.clip(np.floor(t / self.period), 0, len(self.grasps) - 1))
        return k, float(np.clip(t / self.period - k, 0.0, 1.0))

    def tip(self, t: float) -> np.ndarray:
        """The grasp point between the jaws (world mm)."""
        k, u = self._cycle(t)
        g = self.grasps[k]
        toward_trocar = self.trocar - g
        toward_trocar /= np.linalg.norm(toward_trocar)
        hover = g + 22.0 * self.up + 15.0 * toward_trocar
        above = g + 3.0 * self.up
        if u < 0.3:
            return hover + (above - hover) * _ramp(u, 0.0, 0.3)
        if u < 0.45:
            return above + (g - above) * _ramp(u, 0.3, 0.38)
        pulled = g + self.pull * _ramp(u, 0.45, 0.7)
        return pulled + (hover - pulled) * _ramp(u, 0.85, 1.0)

    def opening(self, t: float) -> float:
        """Jaw opening angle (rad)."""
        _, u = self._cycle(t)
        open_ = _ramp(u, 0.05, 0.2) * (1.0 - _ramp(u, 0.38, 0.45)) + _ramp(u, 0.78, 0.85) * (1.0 - _ramp(u, 0.92, 1.0))
        return self.jaw_open_rad * open_

    def engagement(self, t: float) -> tuple[int, float]:
        """(cycle, g): how firmly the tissue at the cycle's grasp point is held."""
        k, u = self._cycle(t)
        return k, _ramp(u, 0.4, 0.45) * (1.0 - _ramp(u, 0.78, 0.84))

    def pose(self, t: float) -> np.ndarray:
        """``(4, 4)`` instrument frame -> world."""
        tip = self.tip(t)
        axis = tip - self.trocar
        axis /= np.linalg.norm(axis)
        hinge = tip - self.grasp_depth_mm * axis
        # look_at puts +z along the axis and image-up along `up`: jaws open in the vertical plane.
        return look_at_np(hinge, hinge + axis, self.up)


@dataclass(frozen=True)
class InstrumentPart:
    """Pose function of one rigid part: ``body``, ``upper`` or ``lower`` jaw."""

    script: GraspScript
    part: str

    def __call__(self, t: float) -> np.ndarray:
        pose = self.script.pose(t)
        if self.part == "body":
            return pose
        # Rotation about the hinge (x) axis that moves the jaw tip (+z) towards
        # +y for the upper jaw and -y for the lower: y' = c y + s z, z' = -s y + c z.
        half = 0.5 * self.script.opening(t) * (1.0 if self.part == "upper" else -1.0)
        c, s = np.cos(half), np.sin(half)
        hinge = np.eye(4)
        hinge[1:3, 1:3] = [[c, s], [-s, c]]
        return pose @ hinge


@dataclass(frozen=True)
class GraspPull:
    """Tissue dragged by the jaws (a :class:`~endo3d.sim.motion.DisplacementField`)."""

    script: GraspScript
    sigma_mm: float

    def _terms(self, rest: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k, g = self.script.engagement(t)
        grasp = self.script.grasps[k]
        offset = rest - grasp
        w = np.exp(-np.sum(offset * offset, axis=1) / (2 * self.sigma_mm**2))
        return g * (self.script.tip(t) - grasp), w, offset

    def displacement(self, rest: np.ndarray, t: float) -> np.ndarray:
        delta, w, _ = self._terms(rest, t)
        return (w[:, None] * delta).astype(rest.dtype)

    def jacobian(self, rest: np.ndarray, t: float) -> np.ndarray:
        delta, w, offset = self._terms(rest, t)
        grad_w = -(w / self.sigma_mm**2)[:, None] * offset
        return (delta[None, :, None] * grad_w[:, None, :]).astype(rest.dtype)


def cylinder(radius: float, z0: float, z1: float, sections: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Side of a cylinder around z from ``z0`` to ``z1`` plus a flat cap at ``z1`` (own vertices)."""
    a = np.linspace(0, 2 * np.pi, sections, endpoint=False)
    ring = np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)
    side = np.concatenate([np.c_[ring, np.full(sections, z0)], np.c_[ring, np.full(sections, z1)]])
    j = np.arange(sections)
    j1 = (j + 1) % sections
    faces = np.concatenate([np.stack([j, j1, j + sections], 1), np.stack([j1, j1 + sections, j + sections], 1)])
    cap = np.concatenate([np.c_[ring, np.full(sections, z1)], [[0.0, 0.0, z1]]])
    c = 2 * sections
    cap_faces = np.stack([np.full(sections, c + sections), c + j, c + j1], 1)
    return np.concatenate([side, cap]), np.concatenate([faces, cap_faces]).astype(np.int32)


def jaw(length: float, width: float, thickness: float, upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """A tapered flat-faced jaw from the hinge (z = 0) to ``length``; its
    gripping face is the plane y = 0, the jaw on the +y (upper) or -y side."""
    taper = np.array([1.0, 1.0, 0.45, 0.45])  # width at hinge and tip
    zs = np.array([0.0, 0.0, length, length])
    sign = 1.0 if upper else -1.0
    corners = []
    for y in (0.0, sign * thickness):
        for k in range(4):
            x = (0.5 if k in (0, 3) else -0.5) * width * taper[k]
            corners.append([x, y * (1.0 if k < 2 else 0.6), zs[k]])
    c = np.array(corners)  # 0-3 gripping face, 4-7 back face
    quads = [[0, 1, 2, 3], [7, 6, 5, 4], [0, 4, 5, 1], [1, 5, 6, 2], [2, 6, 7, 3], [3, 7, 4, 0]]
    vertices, faces = [], []
    for q in quads:  # separate vertices per face: flat shading of a machined part
        base = len(vertices)
        vertices.extend(c[q])
        faces.extend([[base, base + 1, base + 2], [base, base + 2, base + 3]])
    return np.array(vertices), np.array(faces, dtype=np.int32)
