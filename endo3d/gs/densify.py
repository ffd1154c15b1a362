"""Adaptive density control: grow Gaussians where the image gradient says
detail is missing, prune the transparent and the oversized.

The rules are those of 3DGS as gsplat's ``DefaultStrategy`` implements them,
written for our splat dictionary so that one tested code path runs on every
device (and every per-Gaussian tensor, deformation parameters included, is
cloned and pruned with its Gaussian):

- statistics: after each backward pass, the norm of the gradient of the loss
  w.r.t. each drawn Gaussian's 2D centre, in NDC units (pixel gradient times
  ``(W/2, H/2)``), is accumulated with a count of the frames that drew it;
- every ``refine_every`` steps in ``(refine_start, refine_stop)``: a Gaussian
  whose mean gradient exceeds ``grow_grad2d`` is *duplicated* when its largest
  scale is at most ``grow_scale3d * scene_scale``, else *split* into two
  samples of itself with scales / 1.6; then Gaussians with opacity below
  ``prune_opacity`` (and, after the first opacity reset, larger than
  ``prune_scale3d * scene_scale``) are removed;
- every ``reset_every`` steps all opacities are clamped to at most
  ``2 * prune_opacity``, so that the next pruning removes what the fit does
  not bring back.

``max_gaussians`` caps growth (the candidates with the largest gradients win),
which keeps CPU training time predictable.
"""

from __future__ import annotations

from typing import Callable

import torch

from endo3d.gs.config import DensifyConfig
from endo3d.geometry import quaternion_to_matrix

Optimizers = dict[str, torch.optim.Optimizer]


class Densifier:
    """Gradient statistics and the refine / prune / reset schedule."""

    def __init__(self, config: DensifyConfig, scene_scale: float) -> None:
        self.config = config
        self.scene_scale = scene_scale
        self.grad2d: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def state_dict(self) -> dict:
        return {"grad2d": self.grad2d, "count": self.count, "scene_scale": self.scene_scale}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        move = (lambda x: None if x is None else x.to(device))
        self.grad2d, self.count, self.scene_scale = move(state["grad2d"]), move(state["count"]), state["scene_scale"]

    def accumulate(self, means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> None:
        """Add one rendered frame's 2D-centre gradients (call after ``backward``)."""
        if means2d.grad is None:
            return
        n = means2d.shape[0]
        if self.grad2d is None or self.grad2d.shape[0] != n:
            self.grad2d = torch.zeros(n, device=means2d.device)
            self.count = torch.zeros(n, device=means2d.device)
        g = means2d.grad.detach() * means2d.new_tensor([width / 2, height / 2])
        drawn = radii > 0
        self.grad2d[drawn] += g[drawn].norm(dim=-1)
        self.count[drawn] += 1

    def step(self, step: int, splats: torch.nn.ParameterDict, optimizers: Optimizers,
             generator: torch.Generator | None = None) -> dict[str, int]:
        """Run whatever the schedule asks for at ``step`` (call after the optimiser step).

        Returns counts of what happened (``grown``, ``split``, ``pruned``, ``reset``).
        """
        c = self.config
        report = {"duplicated": 0, "split": 0, "pruned": 0, "reset": 0}
        if c.refine_start < step < c.refine_stop and step % c.refine_every == 0 and self.grad2d is not None:
            report["duplicated"], report["split"] = self._grow(splats, optimizers, generator)
            report["pruned"] = self._prune(step, splats, optimizers)
            self.grad2d = self.count = None
        if c.reset_every > 0 and step % c.reset_every == 0 and 0 < step < c.refine_stop:
            cap = torch.logit(torch.tensor(2 * c.prune_opacity)).item()
            _edit(splats, optimizers, {"opacities": lambda p: p.clamp_max(cap)}, reset_state=["opacities"])
            report["reset"] = 1
        return report

    def _grow(self, splats: torch.nn.ParameterDict, optimizers: Optimizers,
              generator: torch.Generator | None) -> tuple[int, int]:
        c = self.config
        assert self.grad2d is not None and self.count is not None
        grads = self.grad2d / self.count.clamp_min(1)
        high = grads > c.grow_grad2d
        room = c.max_gaussians - splats["means"].shape[0]
        if room <= 0:
            return 0, 0
        if int(high.sum()) > room:  # more candidates than room: keep those with the largest gradients
            keep = torch.topk(torch.where(high, grads, -1.0), room).indices
            high = torch.zeros_like(high)
            high[keep] = True
        small = torch.exp(splats["scales"].detach()).amax(-1) <= c.grow_scale3d * self.scene_scale
        dup, split = high & small, high & ~small
        n_dup, n_split = int(dup.sum()), int(split.sum())
        if n_dup:
            _append(splats, optimizers, {k: v.detach()[dup] for k, v in splats.items()})
            split = torch.cat([split, torch.zeros(n_dup, dtype=torch.bool, device=split.device)])
        if n_split:
            self._split(splats, optimizers, split, generator)
        return n_dup, n_split

    @staticmethod
    def _split(splats: torch.nn.ParameterDict, optimizers: Optimizers, mask: torch.Tensor,
               generator: torch.Generator | None) -> None:
        """Replace each masked Gaussian by two samples of it, scales / 1.6."""
        params = {k: v.detach()[mask] for k, v in splats.items()}
        scales = torch.exp(params["scales"])
        R = quaternion_to_matrix(torch.nn.functional.normalize(params["quats"], dim=-1))
        # drawn on the CPU (where the trainer's generator lives), so the random stream is device-independent
        noise = torch.randn((2,) + scales.shape, generator=generator).to(scales.device)
        offsets = torch.einsum("nij,bnj->bni", R, scales * noise)
        children = {k: torch.cat([v, v]) for k, v in params.items()}
        children["means"] = (params["means"] + offsets).reshape(-1, 3)
        children["scales"] = torch.log(scales / 1.6).repeat(2, 1)
        _remove(splats, optimizers, mask)
        _append(splats, optimizers, children)

    def _prune(self, step: int, splats: torch.nn.ParameterDict, optimizers: Optimizers) -> int:
        c = self.config
        prune = torch.sigmoid(splats["opacities"].detach()) < c.prune_opacity
        if c.reset_every > 0 and step > c.reset_every:
            prune |= torch.exp(splats["scales"].detach()).amax(-1) > c.prune_scale3d * self.scene_scale
        if int(prune.sum()) >= prune.shape[0]:  # never prune everything
            return 0
        _remove(splats, optimizers, prune)
        return int(prune.sum())


def _edit(splats: torch.nn.ParameterDict, optimizers: Optimizers,
          edits: dict[str, Callable[[torch.Tensor], torch.Tensor]], reset_state: list[str]) -> None:
    """Change parameter values in place (same shape), zeroing Adam moments of ``reset_state`` keys."""
    for key, fn in edits.items():
        with torch.no_grad():
            splats[key].copy_(fn(splats[key]))
    for key in reset_state:
        state = optimizers[key].state.get(splats[key], {})
        for name, value in state.items():
            if name != "step" and isinstance(value, torch.Tensor):
                value.zero_()


def _replace(splats: torch.nn.ParameterDict, optimizers: Optimizers,
             param_fn: Callable[[str, torch.Tensor], torch.Tensor],
             state_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Swap every splat tensor for ``param_fn(key, old)`` and each Adam moment for ``state_fn(old)``."""
    for key in list(splats.keys()):
        old = splats[key]
        new = torch.nn.Parameter(param_fn(key, old.detach()), requires_grad=old.requires_grad)
        opt = optimizers.get(key)
        if opt is not None:
            state = opt.state.pop(old, None)
            for group in opt.param_groups:
                group["params"] = [new if p is old else p for p in group["params"]]
            if state is not None:
                opt.state[new] = {k: (state_fn(v) if k != "step" and isinstance(v, torch.Tensor) else v)
                                  for k, v in state.items()}
        splats[key] = new


def _append(splats: torch.nn.ParameterDict, optimizers: Optimizers, rows: dict[str, torch.Tensor]) -> None:
    """Append Gaussians (one row per key); their Adam moments start at zero."""
    n = next(iter(rows.values())).shape[0]
    _replace(splats, optimizers, lambda k, old: torch.cat([old, rows[k]]),
             lambda s: torch.cat([s, s.new_zeros((n,) + s.shape[1:])]))


def _remove(splats: torch.nn.ParameterDict, optimizers: Optimizers, mask: torch.Tensor) -> None:
    """Remove the Gaussians where ``mask`` is True, with their Adam moments."""
    keep = ~mask
    _replace(splats, optimizers, lambda k, old: old[keep], lambda s: s[keep])
