"""Settings of ``endo3d pbr fit`` and ``endo3d pbr render`` (typed; tyro makes them the CLI).

This module imports no torch, so ``endo3d --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro


@dataclass(frozen=True)
class FieldConfig:
    """The neural material field: a multiresolution hash grid over world points and a small MLP."""

    levels: int = 12
    """Hash-grid levels, cell sizes spaced geometrically from ``coarsest_mm`` to ``finest_mm``."""
    table_log2: int = 15
    """log2 of the hash-table entries per level."""
    features: int = 2
    """Features per level."""
    coarsest_mm: float = 16.0
    """Cell size of the coarsest level, mm."""
    finest_mm: float = 0.25
    """Cell size of the finest level, mm (about the pixel footprint on the tissue)."""
    hidden: int = 32
    """Width of the MLP's two hidden layers."""


@dataclass(frozen=True)
class FitLearningRates:
    """Adam learning rates; all decay exponentially to ``final_ratio`` of their start."""

    grid: float = 1e-2
    """Hash-grid features."""
    mlp: float = 5e-3
    light: float = 2e-2
    """Log intensity and raw falloff of the lights, and the log ambient radiance."""
    light_position: float = 5e-3
    """Light positions, mm per step scale."""
    response: float = 5e-3
    """Log exposures and vignetting coefficients (when they are learned)."""
    final_ratio: float = 0.1


@dataclass(frozen=True)
class RegularisationConfig:
    """Regularisers of the material field."""

    albedo_smoothness: float = 2e-3
    """Weight of the L1 difference of albedo between each point and a point jittered by ``jitter_mm``."""
    material_smoothness: float = 1e-2
    """The same for roughness and specular, which vary slowly on tissue."""
    jitter_mm: float = 0.5
    """Standard deviation of the jitter."""
    roughness_prior: float = 1e-3
    """Weight of the squared distance of roughness from ``roughness_mean``."""
    roughness_mean: float = 0.4
    """Prior roughness (wet mucosa is 0.2 to 0.5)."""


@dataclass(frozen=True)
class PbrFitConfig:
    """Fit material and lighting to a dataset with known geometry (EndoPBR-style).

    Example: endo3d pbr fit data/colon --out runs/colon-pbr
    """

    dataset: tyro.conf.Positional[Path]
    """An ``endo3d/v1`` dataset with a ``mesh`` (e.g. from ``endo3d simulate``) and poses."""
    out: Path
    """Run folder to write (checkpoint.pt, metrics.json, lights.json, renders/, mesh.ply)."""
    overwrite: bool = False
    """Replace an existing run folder."""
    resume: bool = False
    """Continue an interrupted run from its last checkpoint."""
    model: Literal["pbr", "baked"] = "pbr"
    """``pbr``: material field + camera-attached spot lights + camera response;
    ``baked``: the light-baked baseline (a radiance field, no light model)."""
    steps: int = 1500
    """Optimisation steps."""
    frames_per_step: int = 2
    """Training frames rendered per step."""
    pixels_per_frame: int = 4096
    """Random surface pixels of each of those frames used per step (0: all)."""
    exposure: Literal["auto", "known", "learn"] = "auto"
    """Per-frame exposure: ``known`` from the frames' ``exposure`` keys (written by ``endo3d simulate``),
    ``learn`` per frame (the first training frame is fixed at 1), ``auto``: known when every frame has one."""
    vignetting: Literal["auto", "known", "learn", "none"] = "auto"
    """Vignetting: ``known`` from meta.json ``sensor``, ``learn`` (k1, k2), ``none``; ``auto``: known when present."""
    lights: Literal["auto", "meta", "camera"] = "auto"
    """Where the spot lights are at the start: ``meta``: the number, positions and axes of meta.json ``lights``
    (their intensity and falloff are not used); ``camera``: one light at the camera centre along the axis;
    ``auto``: ``meta`` when meta.json has spot lights."""
    learn_light_position: bool = True
    """Also fit the lights' positions (offsets from the start)."""
    shadows: bool = True
    """Cast shadow rays from every point to every light (computed once per frame at the start positions)."""
    saturation: float = 0.98
    """Target pixels with a channel above this are treated as saturated specular highlights..."""
    saturated_weight: float = 0.1
    """... and weighted by this in the photometric loss."""
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    lr: FitLearningRates = dataclasses.field(default_factory=FitLearningRates)
    reg: RegularisationConfig = dataclasses.field(default_factory=RegularisationConfig)
    max_range_mm: float = 0.0
    """Farthest surface along a ray that is rendered (0: the simulator's setting in meta.json, else 300)."""
    seed: int = 0
    checkpoint_every: int = 250
    """Steps between checkpoints (the last step always writes one)."""
    renders: bool = True
    """Write the test-frame renders to ``renders/``."""
    progress: bool = True
    """Show a progress bar."""

    def problems(self) -> list[str]:
        """What is wrong with these settings, as phrases naming the flag (empty when usable)."""
        out = []
        for name, value, ok, need in (
                ("--steps", self.steps, self.steps >= 0, ">= 0"),
                ("--frames-per-step", self.frames_per_step, self.frames_per_step >= 1, ">= 1"),
                ("--pixels-per-frame", self.pixels_per_frame, self.pixels_per_frame >= 0, ">= 0"),
                ("--checkpoint-every", self.checkpoint_every, self.checkpoint_every >= 1, ">= 1"),
                ("--saturation", self.saturation, 0 < self.saturation <= 1, "in (0, 1]"),
                ("--saturated-weight", self.saturated_weight, self.saturated_weight >= 0, ">= 0"),
                ("--max-range-mm", self.max_range_mm, self.max_range_mm >= 0, ">= 0 (0: meta.json's)"),
                ("--field.levels", self.field.levels, self.field.levels >= 1, ">= 1"),
                ("--field.table-log2", self.field.table_log2, 1 <= self.field.table_log2 <= 24, "in 1..24"),
                ("--field.features", self.field.features, self.field.features >= 1, ">= 1"),
                ("--field.hidden", self.field.hidden, self.field.hidden >= 1, ">= 1"),
                ("--field.finest-mm", self.field.finest_mm,
                 0 < self.field.finest_mm <= self.field.coarsest_mm, "in (0, --field.coarsest-mm]"),
                ("--lr.final-ratio", self.lr.final_ratio, 0 < self.lr.final_ratio <= 1, "in (0, 1]")):
            if not (ok and math.isfinite(value)):
                out.append(f"{name} must be {need}, got {value}")
        return out


@dataclass(frozen=True)
class PbrRenderConfig:
    """Render a fitted PBR run along a new camera path and/or with changed light, as an endo3d/v1 dataset.

    Example: endo3d pbr render runs/colon-pbr --out data/colon-new --shift-mm 0 0 -3 --light-scale 0.7
    """

    run: tyro.conf.Positional[Path]
    """A run folder written by ``endo3d pbr fit``."""
    out: Path
    """Dataset folder to write (rgb, depth, normal, flow, mask, meta.json, mesh.ply)."""
    reverse: bool = False
    """Traverse the training path backwards."""
    speed: float = 1.0
    """Speed along the training path relative to the original (2: every other pose, 0.5: twice as many)."""
    frames: int = 0
    """Frames to render (0: to the end of the path at this speed)."""
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Offset of every camera in its own frame (x right, y down, z forward), mm."""
    light_scale: float = 1.0
    """Multiplier of the fitted lights' intensities."""
    falloff_scale: float = 1.0
    """Multiplier of the fitted lights' falloff exponents."""
    exposure_scale: float = 1.0
    """Multiplier of the exposures (interpolated from the training frames along the path)."""
    overwrite: bool = False
    """Replace an existing dataset folder."""
    progress: bool = True
    """Show a progress bar."""

    def problems(self) -> list[str]:
        """What is wrong with these settings, as phrases naming the flag (empty when usable)."""
        out = [f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(self, name)}"
               for name in ("light_scale", "exposure_scale", "speed")
               if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0)]
        if not (math.isfinite(self.falloff_scale) and self.falloff_scale >= 0):
            out.append(f"--falloff-scale must be a finite number >= 0, got {self.falloff_scale}")
        if not all(math.isfinite(v) for v in self.shift_mm):
            out.append(f"--shift-mm must be finite, got {self.shift_mm}")
        if self.frames < 0:
            out.append(f"--frames must be >= 0, got {self.frames}")
        return out
