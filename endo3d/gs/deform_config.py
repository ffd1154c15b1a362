"""Settings of the deformation fields (:mod:`endo3d.gs.deform`).

This module imports no torch, so ``endo3d --help`` stays fast.

Why the :class:`HexPlaneConfig` defaults: they are sized for a CPU
reconstruction at 160x128 with 10k-40k Gaussians and ~64 frames. 8 features
per plane at two scales (a 16-wide feature, 12 plane lookups per Gaussian)
keep a forward and backward pass of the field over 20k Gaussians at a few
tens of ms on one core. A 32-sample base grid (64 at scale 2) resolves the
smooth tissue motion over a box of a few cm. 64 time samples (one per frame
of a 64-frame clip; the time-smoothness term makes the field interpolate
the held-out frames between them) together with the raised field learning
rates of ``LearningRates`` took held-out tissue PSNR on the simulated
``tissue`` clip from 28.6 dB (32 samples, EndoGaussian's rates) to 36.1 dB.
The regulariser weights are the 4DGS / K-Planes defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from endo3d.core.config import positive

__all__ = ["BasisConfig", "HexPlaneConfig"]


@dataclass(frozen=True)
class HexPlaneConfig:
    """EndoGaussian's spatio-temporal HexPlane with an MLP decoder (defaults sized for a CPU run at
    160x128; ``HexPlaneConfig.endogaussian()`` is the anchor's GPU setting)."""

    features: int = 8
    """Features per plane at each scale."""
    resolution: int = 32
    """Grid samples along each spatial axis of the box at scale 1."""
    time_resolution: int = 64
    """Grid samples along time (t in [0, 1]), the same at every scale."""
    scales: tuple[int, ...] = (1, 2)
    """Multipliers of the spatial resolution; the scales' features are concatenated."""
    width: int = 32
    """Width of the decoder MLP."""
    trunk_layers: int = 1
    """Linear layers of the decoder's shared trunk (ReLU between them; no activation after the last)."""
    deform_means: bool = True
    """Predict position offsets (mm)."""
    deform_scales: bool = True
    """Predict log-scale offsets."""
    deform_quats: bool = True
    """Predict quaternion offsets."""
    deform_opacities: bool = False
    """Predict opacity-logit offsets."""
    tv_weight: float = 1e-4
    """Weight of the total variation (mean squared neighbour difference) of all planes."""
    time_smoothness_weight: float = 1e-2
    """Weight of the mean squared second difference along time of the time planes."""
    time_l1_weight: float = 1e-4
    """Weight of the mean |plane - 1| of the time planes (pulls them to 'no change')."""

    @classmethod
    def endogaussian(cls) -> "HexPlaneConfig":
        """EndoGaussian's EndoNeRF setting (``arguments/endonerf/cutting.py``; ``pulling.py`` differs only in
        32 features): 64 features, 64 x 100 samples, scales 1 2 4 8, width 32, one trunk layer, opacity
        deformed, no regularisation."""
        return cls(features=64, resolution=64, time_resolution=100, scales=(1, 2, 4, 8), width=32,
                   trunk_layers=1, deform_opacities=True, tv_weight=0.0, time_smoothness_weight=0.0,
                   time_l1_weight=0.0)

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when they are usable)."""
        out = positive(self, "features", "width", "trunk_layers")
        out += [f"{name} must be at least 2, got {getattr(self, name)}"
                for name in ("resolution", "time_resolution") if getattr(self, name) < 2]
        if not self.scales or min(self.scales) < 1:
            out.append(f"scales must be positive integers, got {self.scales}")
        if not (self.deform_means or self.deform_scales or self.deform_quats or self.deform_opacities):
            out.append("at least one of deform_means/scales/quats/opacities must be on")
        out += [f"{name} must be >= 0, got {getattr(self, name)}"
                for name in ("tv_weight", "time_smoothness_weight", "time_l1_weight") if getattr(self, name) < 0]
        return out


@dataclass(frozen=True)
class BasisConfig:
    """Deform3DGS's per-Gaussian temporal basis functions.

    Each deformed channel ``c`` of each Gaussian changes by
    ``sum_j w_cj exp(-((t - mu_cj)^2 / (sigma_cj^2 + 1e-4))^2)``. The anchor
    (``arguments/endonerf/default.py``) has 17 bases and ``init_param =
    0.01``, about one frame spacing of its 63- to 156-frame EndoNeRF clips.
    The default width here is one frame spacing of the clip at hand (at
    least 0.01): on a 16-frame clip 0.01 leaves the held-out times between
    the narrow bases.
    """

    num_basis: int = 17
    """Basis functions per channel; their centres start evenly spaced over [0, 1]."""
    init_width: float = 0.0
    """Initial width sigma of every basis function, in normalised time t (0: one frame spacing, 1 / (frames - 1),
    at least 0.01; resolved by :func:`endo3d.gs.train.resolve_field`)."""
    deform_opacities: bool = False
    """Also deform the opacity logit (Deform3DGS deforms positions, rotations and scales only)."""

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when they are usable)."""
        out = positive(self, "num_basis")
        if self.init_width < 0:
            out.append(f"init_width must be >= 0 (0: one frame spacing), got {self.init_width}")
        return out
