"""A deformable Gaussian scene: canonical Gaussians plus a deformation field over time.

The canonical Gaussians (``splats``, raw parameters: log-scales, opacity
logits, SH coefficients) start as the scene at ``t = 0``; the field maps each
to its state at normalised time ``t`` (additive deltas, which training leaves
non-zero at ``t = 0`` too, so the scene at a time is always canonical plus
field). Rendering a camera at time ``t``:

1. deform (skipped in the coarse stage),
2. activate: ``scale = exp(s)``, ``opacity = sigmoid(o)``, ``q / |q|``,
3. colour from spherical harmonics in the viewing direction (camera centre
   to the deformed mean), ``max(SH(d) + 0.5, 0)`` as in 3DGS,
4. rasterise with the chosen backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from endo3d.geometry.se3 import invert_pose
from endo3d.gs.deform import DeformationField, apply_deltas
from endo3d.gs.gaussians import write_ply
from endo3d.gs.rasterize import RenderOutput, rasterize
from endo3d.gs.sh import eval_sh, num_sh_bases


class SplatInputs(NamedTuple):
    """What :func:`endo3d.gs.rasterize.rasterize` takes of the scene: ``means`` (N,3) mm, ``quats`` (N,4),
    ``scales`` (N,3) mm, ``opacities`` (N,) in (0,1) and ``colors`` (N,3)."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor


class DeformableGaussians(torch.nn.Module):
    """Canonical splats, their deformation field, and how to render them.

    Attributes:
        splats: ``ParameterDict`` with gsplat's key names (``means`` (N,3) mm,
            ``scales`` (N,3) log, ``quats`` (N,4) wxyz, ``opacities`` (N,)
            logits, ``sh0`` (N,1,3), ``shN`` (N,K-1,3)) plus the field's
            per-Gaussian keys.
        field: the deformation field.
        sh_degree: the active SH degree (raised during training up to the
            degree the coefficients allow).
    """

    def __init__(self, splats: torch.nn.ParameterDict, field: DeformationField, sh_degree: int = 0) -> None:
        super().__init__()
        self.splats = splats
        self.field = field
        self.sh_degree = sh_degree

    @property
    def max_sh_degree(self) -> int:
        return int(round((self.splats["shN"].shape[1] + 1) ** 0.5)) - 1

    @property
    def num_gaussians(self) -> int:
        return int(self.splats["means"].shape[0])

    def at_time(self, t: float | torch.Tensor, deform: bool = True) -> dict[str, torch.Tensor]:
        """Raw parameters (``means scales quats opacities``) at time ``t``, plus ``sh``."""
        params = {k: self.splats[k] for k in ("means", "scales", "quats", "opacities")}
        if deform:
            params = apply_deltas(params, self.field(self.splats, t))
        params["sh"] = torch.cat([self.splats["sh0"], self.splats["shN"]], 1)
        return params

    def splat_inputs(self, t: float | torch.Tensor, centre: torch.Tensor, deform: bool = True) -> SplatInputs:
        """Steps 1-3 of the module docstring: the rasteriser's inputs at time ``t`` seen from ``centre`` (3,) mm."""
        p = self.at_time(t, deform)
        degree = min(self.sh_degree, self.max_sh_degree)
        sh = p["sh"][:, :num_sh_bases(degree)]
        dirs = torch.nn.functional.normalize(p["means"].detach() - centre, dim=-1)
        colors = (eval_sh(degree, sh, dirs) + 0.5).clamp_min(0)
        return SplatInputs(p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), colors)

    def render(self, c2w: torch.Tensor, K: torch.Tensor, width: int, height: int, t: float | torch.Tensor, *,
               deform: bool = True, background: torch.Tensor | None = None, backend: str = "auto") -> RenderOutput:
        """Render the scene at time ``t`` from camera ``c2w`` (4,4), ``K`` (3,3)."""
        return rasterize(*self.splat_inputs(t, c2w[:3, 3], deform), invert_pose(c2w), K, width, height,
                         background=background, backend=backend)

    def export_ply(self, path: str | Path, t: float = 0.0) -> None:
        """Write the Gaussians at time ``t`` as a standard 3DGS PLY."""
        with torch.no_grad():
            p = self.at_time(t)
            write_ply(path, p["means"], p["scales"], torch.nn.functional.normalize(p["quats"], dim=-1),
                      p["opacities"], self.splats["sh0"], self.splats["shN"])
