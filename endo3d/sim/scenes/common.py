"""Pieces shared by the scene kinds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from endo3d.sim.noise import periodic_field
from endo3d.sim.scene import CameraSpec, DeformSpec, LightSpec, RenderSpec, SensorSpec
from endo3d.sim.texture import PaletteSpec

# Independent random streams per purpose, so that changing e.g. the texture
# settings does not change the geometry drawn from the same seed.
STREAMS = {"geometry": 1, "texture": 2, "path": 3, "deform": 4, "instrument": 5}


def stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[name]])


@dataclass(frozen=True)
class BuildArgs:
    """What the command line decides for every scene kind."""

    width: int
    height: int
    num_frames: int
    fps: float
    seed: int
    deform_scale: float

    @property
    def duration_s(self) -> float:
        return max(self.num_frames - 1, 1) / self.fps


@dataclass(frozen=True)
class CommonSpec:
    """Settings every scene kind has (the kinds override the defaults)."""

    camera: CameraSpec = CameraSpec()
    lights: tuple[LightSpec, ...] = (LightSpec(),)
    sensor: SensorSpec = SensorSpec()
    palette: PaletteSpec = PaletteSpec()
    deform: DeformSpec = DeformSpec()
    render: RenderSpec = RenderSpec()

    def problems(self) -> list[str]:
        """What is out of range, as short phrases naming the setting; empty when valid."""
        out = self.camera.problems() + self.sensor.problems() + self.palette.problems() + self.deform.problems()
        out += self.render.problems()
        if self.deform.vertical_bias and self.kind != "tissue":  # the others have no up to lean the modes towards
            out.append("deform.vertical_bias applies to the tissue scene only")
        if not self.lights:
            out.append("lights: at least one light is needed")
        for i, light in enumerate(self.lights):
            out += [f"lights[{i}].{p}" for p in light.problems()]
        return out


def grid_faces(rows: int, cols: int, wrap_cols: bool = False) -> np.ndarray:
    """Two triangles per cell of a ``rows x cols`` vertex grid (row-major).

    With ``wrap_cols`` the last column connects back to the first.
    """
    r = np.arange(rows - 1)[:, None] * cols
    c = np.arange(cols if wrap_cols else cols - 1)[None, :]
    c1 = (c + 1) % cols
    a, b, d, e = r + c, r + c1, r + cols + c, r + cols + c1
    return np.concatenate([np.stack([a, d, b], -1).reshape(-1, 3), np.stack([b, d, e], -1).reshape(-1, 3)]
                          ).astype(np.int32)


@dataclass(frozen=True)
class Relief:
    """Small periodic height variation ``h(u, v)`` in mm over (u, v) in mm."""

    table: np.ndarray  # (n, n)
    tile_mm: float

    @classmethod
    def create(cls, rng: np.random.Generator, amplitude_mm: float, tile_mm: float = 64.0, n: int = 256,
               min_period_mm: float = 2.0, max_period_mm: float = 16.0) -> "Relief":
        """RMS height ``amplitude_mm``, periods ``[min, max]`` mm, spectrum ``|f|^-2``
        (gentle undulation rather than roughness: texture carries the fine detail)."""
        texel = tile_mm / n
        field = periodic_field(n, rng, min_period_mm / texel, max_period_mm / texel, slope=2.0)
        return cls(field * amplitude_mm, tile_mm)

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        n = self.table.shape[0]
        x, y = np.asarray(u) / self.tile_mm * n, np.asarray(v) / self.tile_mm * n
        x0, y0 = np.floor(x), np.floor(y)
        wx, wy = x - x0, y - y0
        i0, j0 = y0.astype(np.int64) % n, x0.astype(np.int64) % n
        i1, j1 = (i0 + 1) % n, (j0 + 1) % n
        t = self.table
        return ((t[i0, j0] * (1 - wx) + t[i0, j1] * wx) * (1 - wy) + (t[i1, j0] * (1 - wx) + t[i1, j1] * wx) * wy)
