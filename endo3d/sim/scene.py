"""A simulated scene: surfaces, camera, camera path, lights and sensor.

The ``*Spec`` dataclasses are the settings shared by all scene kinds; scene
files (TOML, see ``scenes/``) set them per scene. Lengths are in mm, angles
in degrees, times in seconds, colours sRGB in [0, 1] unless noted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from endo3d.core.config import positive
from endo3d.geometry.camera import Camera
from endo3d.sim.motion import FourierModes
from endo3d.sim.surface import Surface


@dataclass(frozen=True)
class CameraSpec:
    """The endoscope's camera."""

    model: Literal["pinhole", "opencv", "fisheye"] = "pinhole"
    hfov_deg: float = 90.0
    """Horizontal field of view across the image width."""
    dist: tuple[float, ...] = ()
    """Distortion coefficients of the model (opencv: k1 k2 p1 p2 [k3]; fisheye: k1..k4)."""
    fov_mask_radius: float = 0.0
    """Radius of the round aperture as a fraction of the half image diagonal; 0 = none."""

    def camera(self, width: int, height: int) -> Camera:
        return Camera.from_fov(self.model, width, height, self.hfov_deg, self.dist)

    def problems(self) -> list[str]:
        limit = 360.0 if self.model == "fisheye" else 170.0
        out = [] if 0 < self.hfov_deg < limit else [f"camera.hfov_deg must be in (0, {limit:g}) for a {self.model} "
                                                     f"camera, got {self.hfov_deg}"]
        if not 0 <= self.fov_mask_radius <= 2:
            out.append(f"camera.fov_mask_radius must be in [0, 2], got {self.fov_mask_radius}")
        if not out:
            out += [f"camera: {p}" for p in self.camera(64, 48).problems()]
        return out

    def fov_mask(self, camera: Camera) -> np.ndarray | None:
        """``(H, W)`` bool, True inside the aperture; None without one."""
        if self.fov_mask_radius <= 0:
            return None
        v, u = np.mgrid[0:camera.height, 0:camera.width]
        cx, cy = camera.K[0, 2], camera.K[1, 2]
        radius = self.fov_mask_radius * 0.5 * np.hypot(camera.width, camera.height)
        return (u - cx) ** 2 + (v - cy) ** 2 <= radius**2


@dataclass(frozen=True)
class LightSpec:
    """A spotlight fixed to the endoscope tip (camera frame)."""

    position_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, float, float] = (0.0, 0.0, 1.0)
    intensity: tuple[float, float, float] = (1500.0, 1450.0, 1350.0)
    """Linear RGB radiant intensity on the axis (radiance x mm^2)."""
    falloff: float = 2.0
    """Exponent mu of the angular falloff cos(angle)^mu."""

    def problems(self) -> list[str]:
        out = [] if self.falloff >= 0 else [f"falloff must be >= 0, got {self.falloff}"]
        if min(self.intensity) < 0:
            out.append(f"intensity must be >= 0, got {list(self.intensity)}")
        if not np.linalg.norm(self.direction) > 0:
            out.append("direction must not be zero")
        return out


@dataclass(frozen=True)
class SensorSpec:
    """The camera response: exposure control, vignetting, noise, gamma."""

    auto_exposure: bool = True
    """Meter each frame and follow like an endoscope's AE loop; else fixed ``exposure``."""
    target_level: float = 0.18
    """Mean linear signal (0..1) that auto-exposure aims for."""
    exposure: float = 1.0
    """Fixed exposure (radiance multiplier) without auto-exposure."""
    ae_time_constant_s: float = 0.15
    """Time constant of the auto-exposure loop."""
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    vignetting: tuple[float, float] = (-0.25, 0.05)
    """k1, k2 of v(r) = 1 + k1 r^2 + k2 r^4, r = radius / half diagonal."""
    noise_shot: float = 1.5e-4
    """Poisson part a of the noise variance a x + b (normalised signal)."""
    noise_read: float = 4e-6
    """Gaussian part b of the noise variance."""
    gamma: str = "srgb"
    """"srgb" or an exponent such as "2.2"."""

    def problems(self) -> list[str]:
        out = positive(self, "target_level", "exposure", "ae_time_constant_s", prefix="sensor.")
        if self.target_level >= 1:
            out.append(f"sensor.target_level must be < 1, got {self.target_level}")
        if min(self.white_balance) <= 0 or self.noise_shot < 0 or self.noise_read < 0:
            out.append("sensor.white_balance must be > 0 and the noise terms >= 0")
        if self.gamma != "srgb":
            try:
                if not float(self.gamma) > 0:
                    raise ValueError
            except ValueError:
                out.append(f"sensor.gamma must be \"srgb\" or a positive number, got {self.gamma!r}")
        return out


@dataclass(frozen=True)
class DeformSpec:
    """Smooth tissue motion: a breathing band and a cardiac band of Fourier modes."""

    breathing_mm: float = 1.0
    """RMS displacement of the breathing band."""
    breathing_hz: float = 0.25
    cardiac_mm: float = 0.2
    cardiac_hz: float = 1.2
    wavelength_mm: float = 60.0
    """Typical spatial wavelength of the modes."""
    modes: int = 6
    """Modes per band."""
    vertical_bias: float = 0.0
    """0 = isotropic directions, 1 = along the scene's up axis."""

    def problems(self) -> list[str]:
        out = positive(self, "wavelength_mm", "breathing_hz", "cardiac_hz", prefix="deform.")
        if self.modes < 0 or self.breathing_mm < 0 or self.cardiac_mm < 0:
            out.append("deform.modes and the amplitudes must be >= 0")
        if not 0 <= self.vertical_bias <= 1:
            out.append(f"deform.vertical_bias must be in [0, 1], got {self.vertical_bias}")
        return out

    def fields(self, rng: np.random.Generator, up: np.ndarray | None = None) -> tuple[FourierModes, ...]:
        """The bands' modes as one field (empty when both amplitudes are 0)."""
        bands = [FourierModes.random(rng, self.modes, amp, self.wavelength_mm, hz, up, self.vertical_bias)
                 for amp, hz in ((self.breathing_mm, self.breathing_hz), (self.cardiac_mm, self.cardiac_hz))
                 if amp > 0 and self.modes > 0]
        return (FourierModes.concatenate(bands),) if bands else ()


def max_displacement(fields: tuple[FourierModes, ...]) -> float:
    """Upper bound on |d(X, t)| of Fourier fields: the time factor is at most 2."""
    return float(sum(2.0 * np.linalg.norm(f.amplitudes, axis=1).sum() for f in fields))


@dataclass(frozen=True)
class RenderSpec:
    """Renderer settings."""

    max_range_mm: float = 300.0
    """Surfaces farther than this along the ray are not imaged (mask 255, depth 0)."""
    shadows: bool = True
    """Cast shadow rays to each light (instruments, folds)."""
    ambient: tuple[float, float, float] = (0.004, 0.0032, 0.0028)
    """Ambient radiance standing for diffuse inter-reflection."""
    depth_scale_mm: float = 0.01
    """mm per unit of the stored uint16 depth."""
    material_maps: bool = True
    """Also write per-pixel albedo and roughness/specular/metallic maps."""

    def problems(self) -> list[str]:
        out = positive(self, "depth_scale_mm", prefix="render.")
        if self.max_range_mm < 0 or min(self.ambient) < 0:
            out.append("render.max_range_mm and render.ambient must be >= 0")
        if self.max_range_mm > self.depth_limit_mm:
            out.append(f"render.max_range_mm ({self.max_range_mm:g}) is beyond what the 16-bit depth can hold at "
                       f"render.depth_scale_mm ({self.depth_limit_mm:g} mm): raise depth_scale_mm")
        return out

    @property
    def depth_limit_mm(self) -> float:
        """The deepest z the uint16 depth PNG stores at ``depth_scale_mm`` (``io.images.encode_depth``)."""
        return 65535 * self.depth_scale_mm


class Trajectory(Protocol):
    def c2w(self, t: float) -> np.ndarray: ...


@dataclass
class Scene:
    """Everything the renderer needs, built by a scene kind from its spec.

    Attributes:
        name: scene name for metadata.
        surfaces: tissue and instrument surfaces.
        camera: intrinsics at the output size.
        fov_mask: ``(H, W)`` bool aperture, or None.
        trajectory: camera path.
        lights: spotlights in the camera frame.
        sensor, render: settings.
        fps: frame rate; frame i is at time i / fps.
        num_frames: length of the sequence.
        seed: the seed everything was drawn from.
        spec: the full scene spec as plain data, for ``meta.json``.
    """

    name: str
    surfaces: list[Surface]
    camera: Camera
    fov_mask: np.ndarray | None
    trajectory: Trajectory
    lights: tuple[LightSpec, ...]
    sensor: SensorSpec
    render: RenderSpec
    fps: float
    num_frames: int
    seed: int
    spec: dict[str, Any] = field(default_factory=dict)
    _poses: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def time(self, index: int) -> float:
        return index / self.fps

    def c2w(self, index: int) -> np.ndarray:
        """``(4, 4)`` camera-to-world pose of frame ``index`` (read-only; each
        frame's pose is evaluated once, though the renderer asks several times)."""
        pose = self._poses.get(index)
        if pose is None:
            pose = self.trajectory.c2w(self.time(index))
            pose.flags.writeable = False
            self._poses[index] = pose
        return pose
