"""Deformation fields: how the canonical Gaussians move and change over time.

A field maps the canonical scene (:mod:`endo3d.gs.gaussians`) and a
normalised time ``t`` in [0, 1] (``CONVENTIONS.md``) to additive
:class:`Deltas` of the raw parameters; :func:`apply_deltas` adds them. Two
fields, chosen by their config (:mod:`endo3d.gs.deform_config`), share this
interface:

- :class:`HexPlaneField` (EndoGaussian): six feature planes ``xy xz yz xt
  yt zt`` at several resolutions, sampled bilinearly at each Gaussian's
  canonical centre (normalised into the scene box) and ``t``; per scale the
  six planes' features are multiplied elementwise, the scales' products
  concatenated and decoded by a small MLP into the deltas. All Gaussians
  share the field's parameters.
- :class:`BasisField` (Deform3DGS): each Gaussian carries its own temporal
  basis functions per deformed channel; the parameters live in the splat
  dictionary (keys :data:`BASIS_KEYS`), so densification clones and prunes
  them with their Gaussians, and the module itself holds no parameters.

Both are the identity deformation when fresh (the HexPlane decoder's last
layers and the basis weights start at zero).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from endo3d.core import check_shape
from endo3d.gs.deform_config import BasisConfig, HexPlaneConfig
from endo3d.kernels.hexplane import bilinear_lookup, hexplane_features

__all__ = [
    "BASIS_KEYS",
    "BasisField",
    "DeformationField",
    "Deltas",
    "HexPlaneField",
    "apply_deltas",
    "basis_functions",
    "bilinear_lookup",
    "make_field",
    "normalise_to_box",
]

#: Per-Gaussian keys of the :class:`BasisField`: weights, centres and widths, each ``(N, C, J)``.
BASIS_KEYS = ("deform_weights", "deform_centres", "deform_widths")

#: Added to ``sigma^2`` in the basis functions (Deform3DGS), so a width of 0 stays finite.
BASIS_WIDTH_FLOOR = 1e-4

#: K-Planes initialisation of the spatial planes, uniform in this range (time planes start at 1).
SPATIAL_INIT = (0.1, 0.5)

#: The six planes as pairs of coordinates (0 x, 1 y, 2 z, 3 t). The first of each pair is spatial
#: and runs along a plane's width ``W`` (within a row), the second along its height ``H``.
PLANES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
PLANE_NAMES = ("xy", "xz", "yz", "xt", "yt", "zt")
TIME_PLANES = (3, 4, 5)


@dataclass
class Deltas:
    """Additive changes of the raw parameters at one time; ``None``: that channel is not deformed.

    Attributes:
        means: :math:`(N, 3)` mm.
        scales: :math:`(N, 3)`, added to the log scales.
        quats: :math:`(N, 4)`, added to the raw ``(w, x, y, z)`` quaternions.
        opacities: :math:`(N,)`, added to the opacity logits.
    """

    means: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    quats: torch.Tensor | None = None
    opacities: torch.Tensor | None = None


def apply_deltas(splats: Mapping[str, torch.Tensor], deltas: Deltas) -> dict[str, torch.Tensor]:
    """The deformed ``means``, ``scales``, ``quats`` and ``opacities`` (raw parametrisation).

    Each is ``splats[key] + delta`` (or ``splats[key]`` where the delta is
    ``None``); the quaternion sum is normalised to unit length (a zero sum
    stays zero), which a renderer that normalises again leaves unchanged.

    Example:
        >>> q = {"means": torch.zeros(1, 3), "scales": torch.zeros(1, 3),
        ...      "quats": torch.tensor([[1.0, 0, 0, 0]]), "opacities": torch.zeros(1)}
        >>> apply_deltas(q, Deltas(quats=torch.tensor([[0.0, 1, 0, 0]])))["quats"]
        tensor([[0.7071, 0.7071, 0.0000, 0.0000]])
    """
    out = {}
    for key in ("means", "scales", "quats", "opacities"):
        delta = getattr(deltas, key)
        out[key] = splats[key] if delta is None else splats[key] + delta
    out["quats"] = F.normalize(out["quats"], dim=-1)
    return out


class DeformationField(nn.Module, abc.ABC):
    """A deformation field: canonical splats and a time to :class:`Deltas`."""

    @abc.abstractmethod
    def forward(self, splats: Mapping[str, torch.Tensor], t: float | torch.Tensor) -> Deltas:
        """The deltas at time ``t``.

        Args:
            splats: the canonical scene, with this field's per-Gaussian keys.
            t: normalised time in [0, 1]: a number, a 0-d tensor, or :math:`(N,)` per Gaussian.
        """

    def per_gaussian_init(self, n: int, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Initial values of the per-Gaussian keys this field needs in the splats (none by default)."""
        return {}

    def regularization(self) -> torch.Tensor:
        """The field's own weighted regulariser, a scalar (0 when it has none)."""
        return torch.zeros(())

    def param_groups(self, grid_lr: float, mlp_lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the module's own parameters (grid and MLP learning rates)."""
        return []


def make_field(config: HexPlaneConfig | BasisConfig, aabb: torch.Tensor) -> DeformationField:
    """The field a config describes.

    Args:
        config: :class:`HexPlaneConfig` or :class:`BasisConfig`.
        aabb: :math:`(2, 3)` ``[min, max]`` corners of the scene box, world
            mm (the HexPlane normalises positions into it; pad it for motion).

    Raises:
        ValueError: the config has problems, or the box is empty.
    """
    if isinstance(config, HexPlaneConfig):
        return HexPlaneField(config, aabb)
    if isinstance(config, BasisConfig):
        return BasisField(config)
    raise TypeError(f"no deformation field for {type(config).__name__}")


def _times(t: float | torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """``t`` as an ``(N,)`` tensor of ``like``'s dtype and device."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t.expand(n)
    check_shape(t, f"{n}", "t")
    return t


# -- HexPlane ----------------------------------------------------------------------------------------


def normalise_to_box(points: torch.Tensor, aabb: torch.Tensor) -> torch.Tensor:
    """``(points - min) / (max - min)``, clamped to [0, 1]: :math:`(..., 3)` mm to box units."""
    return ((points - aabb[0]) / (aabb[1] - aabb[0])).clamp(0, 1)


class HexPlaneField(DeformationField):
    """EndoGaussian's HexPlane field with an MLP decoder.

    For a Gaussian with canonical centre ``X`` (mm) at time ``t``::

        (x, y, z) = clamp((X - box_min) / (box_max - box_min), 0, 1)
        f_s       = prod over planes (a, b) of  bilinear(plane_s^{ab}, (a, b))   (F,) per scale s
        h         = trunk(concat_s f_s)                                           (W,)
        delta_k   = head_k(h)    k in means (3), scales (3), quats (4), opacities (1)

    Plane ``ab`` at scale ``s`` has ``m_s R`` samples along a spatial axis
    and ``T`` along time (``R = resolution``, ``T = time_resolution``,
    ``m_s`` the scale multiplier). Spatial planes start uniform in
    [0.1, 0.5], time planes at 1 (K-Planes), so a time plane that stays at 1
    means "the same at every time". A head is ``ReLU, Linear(W, W), ReLU,
    Linear(W, k)`` with the last layer zero, so a fresh field is the identity.

    Attributes:
        planes: one :math:`(R_s, F)` parameter per scale holding its six
            planes (``xy xz yz xt yt zt``) as consecutive row blocks; see
            :meth:`plane`.
        trunk, heads: the decoder.
        aabb: :math:`(2, 3)` buffer, the scene box in mm.
    """

    def __init__(self, config: HexPlaneConfig, aabb: torch.Tensor) -> None:
        super().__init__()
        problems = config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        check_shape(aabb, "2 3", "aabb")
        if not bool(torch.isfinite(aabb).all()) or not bool((aabb[1] > aabb[0]).all()):
            raise ValueError(f"the scene box needs finite max > min on every axis, got {aabb.tolist()}")
        self.config = config
        self.register_buffer("aabb", aabb.detach().clone().float())
        self.planes = nn.ParameterList()
        self._layout: list[tuple[tuple[int, ...], tuple[tuple[int, int, int], ...]]] = []
        for multiplier in config.scales:
            res = config.resolution * multiplier
            sizes = (res, res, res, config.time_resolution)
            offsets, rows = [], 0
            for a, b in PLANES:
                offsets.append(rows)
                rows += sizes[a] * sizes[b]
            table = torch.empty(rows, config.features)
            for p, (offset, (a, b)) in enumerate(zip(offsets, PLANES)):
                block = table[offset: offset + sizes[a] * sizes[b]]
                if p in TIME_PLANES:
                    block.fill_(1.0)
                else:
                    block.uniform_(*SPATIAL_INIT)
            self.planes.append(nn.Parameter(table))
            self._layout.append((sizes, tuple((o, a, b) for o, (a, b) in zip(offsets, PLANES))))
        width = config.width
        layers: list[nn.Module] = [nn.Linear(config.features * len(config.scales), width)]
        for _ in range(config.trunk_layers - 1):
            layers += [nn.ReLU(), nn.Linear(width, width)]
        self.trunk = nn.Sequential(*layers)
        outputs = {"means": 3, "scales": 3, "quats": 4, "opacities": 1}
        self.heads = nn.ModuleDict()
        for key, size in outputs.items():
            if getattr(config, f"deform_{key}"):
                head = nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, size))
                nn.init.zeros_(head[-1].weight)
                nn.init.zeros_(head[-1].bias)
                self.heads[key] = head

    def plane(self, scale: int, name: str) -> torch.Tensor:
        """A view of one plane, :math:`(H, W, F)`: ``name`` in ``xy xz yz xt yt zt``, ``scale`` an index."""
        p = PLANE_NAMES.index(name)
        sizes, planes = self._layout[scale]
        offset, a, b = planes[p]
        return self.planes[scale][offset: offset + sizes[a] * sizes[b]].view(sizes[b], sizes[a], -1)

    def features(self, points: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The decoder's input :math:`(N, S F)` at canonical ``points`` :math:`(N, 3)` mm, times ``t`` :math:`(N,)`."""
        coords = torch.cat([normalise_to_box(points, self.aabb), t.clamp(0, 1)[:, None]], 1)
        return hexplane_features(list(self.planes), coords, self._layout)

    def forward(self, splats: Mapping[str, torch.Tensor], t: float | torch.Tensor) -> Deltas:
        means = splats["means"]
        n = check_shape(means, "N 3", "means")["N"]
        hidden = self.trunk(self.features(means, _times(t, n, means)))
        out = {key: head(hidden) for key, head in self.heads.items()}
        if "opacities" in out:
            out["opacities"] = out["opacities"][:, 0]
        return Deltas(**out)

    def regularization(self) -> torch.Tensor:
        """``tv_weight TV + time_smoothness_weight S + time_l1_weight L1``, summed over planes and scales.

        ``TV(P)`` = mean squared difference of neighbouring samples along
        each axis (summed over both axes), on all six planes; ``S(P)`` = mean
        squared second difference along time and ``L1(P)`` = mean ``|P - 1|``,
        on the time planes.
        """
        c = self.config
        total = self.planes[0].new_zeros(())
        for s in range(len(self.planes)):
            for p, name in enumerate(PLANE_NAMES):
                plane = self.plane(s, name)
                if c.tv_weight:
                    tv = (plane[1:] - plane[:-1]).square().mean() + (plane[:, 1:] - plane[:, :-1]).square().mean()
                    total = total + c.tv_weight * tv
                if p in TIME_PLANES:
                    if c.time_smoothness_weight:
                        second = plane[2:] - 2 * plane[1:-1] + plane[:-2]
                        total = total + c.time_smoothness_weight * second.square().mean()
                    if c.time_l1_weight:
                        total = total + c.time_l1_weight * (plane - 1).abs().mean()
        return total

    def param_groups(self, grid_lr: float, mlp_lr: float) -> list[dict[str, Any]]:
        """The planes at ``grid_lr``, the decoder at ``mlp_lr``."""
        mlp = [*self.trunk.parameters(), *self.heads.parameters()]
        return [{"params": list(self.planes), "lr": grid_lr, "name": "grid"},
                {"params": mlp, "lr": mlp_lr, "name": "mlp"}]


# -- Temporal bases ----------------------------------------------------------------------------------


def basis_functions(t: torch.Tensor, centres: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Deform3DGS's basis ``b(t; mu, sigma) = exp(-((t - mu)^2 / (sigma^2 + 1e-4))^2)``.

    Args:
        t: times, broadcastable against ``centres`` (e.g. :math:`(N, 1, 1)`).
        centres: ``mu``, e.g. :math:`(N, C, J)`.
        widths: ``sigma``, like ``centres``.

    Example:
        >>> basis_functions(torch.tensor(0.5), torch.tensor(0.5), torch.tensor(0.1))
        tensor(1.)
    """
    return torch.exp(-((t - centres).square() / (widths.square() + BASIS_WIDTH_FLOOR)).square())


class BasisField(DeformationField):
    """Deform3DGS's per-Gaussian temporal basis functions.

    Each deformed channel ``c`` (positions 3, quaternion 4, log scales 3,
    then the opacity logit 1 when configured; this order) of each Gaussian
    changes by::

        delta_c(t) = sum_j w_cj b(t; mu_cj, sigma_cj)          (basis_functions)

    with ``w``, ``mu``, ``sigma`` the splat keys ``deform_weights``,
    ``deform_centres``, ``deform_widths``, each :math:`(N, C, J)`; they
    start at ``w = 0``, ``mu = linspace(0, 1, J)``, ``sigma = init_width``.
    Deform3DGS trains them with the images' loss alone, so the field has no
    regulariser.
    """

    def __init__(self, config: BasisConfig) -> None:
        super().__init__()
        problems = config.problems()
        if config.init_width == 0:
            problems.append("init_width 0 (one frame spacing) must be resolved first (endo3d.gs.train.resolve_field)")
        if problems:
            raise ValueError("; ".join(problems))
        self.config = config
        self.channels = 10 + int(config.deform_opacities)

    def per_gaussian_init(self, n: int, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        shape = (n, self.channels, self.config.num_basis)
        centres = torch.linspace(0, 1, self.config.num_basis, device=device)
        return {
            "deform_weights": torch.zeros(shape, device=device),
            "deform_centres": centres.expand(shape).clone(),
            "deform_widths": torch.full(shape, self.config.init_width, device=device),
        }

    def forward(self, splats: Mapping[str, torch.Tensor], t: float | torch.Tensor) -> Deltas:
        weights, centres, widths = (splats[key] for key in BASIS_KEYS)
        n = check_shape(weights, f"N {self.channels} {self.config.num_basis}", "deform_weights")["N"]
        for key in BASIS_KEYS[1:]:
            check_shape(splats[key], f"{n} {self.channels} {self.config.num_basis}", key)
        delta = (weights * basis_functions(_times(t, n, weights)[:, None, None], centres, widths)).sum(-1)
        return Deltas(means=delta[:, 0:3], quats=delta[:, 3:7], scales=delta[:, 7:10],
                      opacities=delta[:, 10] if self.config.deform_opacities else None)
