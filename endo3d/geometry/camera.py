"""Intrinsic camera models: pinhole, OpenCV radial-tangential, fisheye.

Conventions (CONVENTIONS.md): OpenCV camera frame (x right, y down, z
forward), lengths in mm, ``K`` in pixels with the centre of pixel (column u,
row v) on the ray through ``K^-1 [u, v, 1]``.

Models and their ``dist`` coefficients:

- ``pinhole``: no coefficients.
- ``opencv``: ``k1 k2 p1 p2 [k3]`` (Brown-Conrady radial + tangential).
- ``fisheye``: ``k1 k2 k3 k4`` (Kannala-Brandt, as OpenCV's fisheye module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

CameraModel = Literal["pinhole", "opencv", "fisheye"]
DIST_LENGTHS: dict[str, tuple[int, ...]] = {"pinhole": (0,), "opencv": (4, 5), "fisheye": (4,)}


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
        if self.model not in DIST_LENGTHS:
            out.append(f"unknown camera model {self.model!r} (pinhole, opencv or fisheye)")
        elif len(self.dist) not in DIST_LENGTHS[self.model]:
            out.append(
                f"{self.model} camera needs {' or '.join(map(str, DIST_LENGTHS[self.model]))} "
                f"distortion coefficients, got {len(self.dist)}"
            )
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
