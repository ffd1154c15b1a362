"""Settings of ``endo3d simulate`` (light module: no heavy imports, so the
command line's ``--help`` stays fast)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from endo3d.core.errors import InputError

MAX_SIZE = 8192
"""Largest simulated image side, pixels (a frame's G-buffer is ~100 bytes per pixel)."""


@dataclass(frozen=True)
class SimulateConfig:
    """Write a labelled synthetic endoscopy dataset (format endo3d/v1).

    Example: endo3d simulate --scene colon --out data/colon --frames 120
    """

    scene: str
    """Preset name (colon, airway, tissue, ...), a .toml scene file, or a mesh file."""
    out: Path
    """Output dataset folder."""
    frames: int = 120
    """Number of frames."""
    width: int = 320
    """Image width in pixels."""
    height: int = 256
    """Image height in pixels."""
    seed: int = 0
    """Seed of every random choice (geometry, texture, path, motion, noise)."""
    deform_scale: float = 1.0
    """Scale of the tissue deformation; 0 makes the tissue rigid."""
    fps: float = 30.0
    """Frame rate; frame i is at time i / fps."""
    workers: int = 0
    """Worker processes; 0 = one per CPU core."""
    overwrite: bool = False
    """Replace an existing output folder."""
    preview: bool = True
    """Also write preview.mp4 (RGB, depth, normals, flow)."""

    def check(self) -> None:
        """Reject bad settings before any work (one-line :class:`InputError`)."""
        for name in ("frames", "width", "height"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name}", f"must be positive, got {getattr(self, name)}")
        if self.width < 8 or self.height < 8:
            raise InputError("--width/--height", f"image {self.width}x{self.height} is smaller than 8x8")
        if self.width > MAX_SIZE or self.height > MAX_SIZE:
            raise InputError("--width/--height", f"image {self.width}x{self.height} is larger than "
                                                 f"{MAX_SIZE}x{MAX_SIZE}")
        if not 0 <= self.seed < 2**63:
            raise InputError("--seed", f"must be in [0, 2^63), got {self.seed}")
        if not 0.1 <= self.fps <= 10000:
            raise InputError("--fps", f"must be positive and at most 10000 (at least 0.1), got {self.fps}")
        if not math.isfinite(self.deform_scale):
            raise InputError("--deform-scale", f"must be finite, got {self.deform_scale}")
        if self.workers < 0:
            raise InputError("--workers", f"must be >= 0, got {self.workers}")
        if self.out.exists() and not self.overwrite:
            raise InputError(self.out, "already exists (pass --overwrite to replace it)")
        if self.out.exists() and not self.out.is_dir():
            raise InputError(self.out, "exists and is not a folder")
        ancestor = self.out.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(self.out, f"cannot be created: {ancestor} is not a writable folder")
