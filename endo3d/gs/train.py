"""Fitting a deformable Gaussian scene to a sequence (``endo3d reconstruct`` on datasets).

Schedule (EndoGaussian): a *coarse* stage fits static Gaussians to the first
training frame, then a *fine* stage fits Gaussians and deformation field to
random training frames. Each step renders one frame at its time ``t`` and
minimises

    (1 - w_s) L1 + w_s (1 - SSIM)           on tissue pixels
    + w_d  depth term                        (inverse-depth L1 or Pearson)
    + w_tv TV(rendered depth) + w_r field regulariser

with one Adam per splat tensor (so densification can edit their moments)
and one for the field. Positions and field rates decay exponentially.
Every ``checkpoint_every`` steps the whole state is saved; ``--resume``
continues from it bit for bit (same seed, same random stream).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from endo3d.core.config import to_dict
from endo3d.core.errors import InputError
from endo3d.geometry import carry_corrections, se3_exp
from endo3d.gs.config import ReconstructConfig
from endo3d.gs.data import FrameSet
from endo3d.gs.deform import make_field
from endo3d.gs.deform_config import BasisConfig, HexPlaneConfig
from endo3d.gs.densify import Densifier
from endo3d.gs.gaussians import create_splats
from endo3d.gs.init import initial_points
from endo3d.gs.losses import inverse_depth_l1, pearson_depth_loss, photometric_loss, total_variation
from endo3d.gs.model import DeformableGaussians

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class Schedule:
    """The resolved step counts and sizes of one run (the config's zeros filled in for the device)."""

    coarse: int
    fine: int
    init_points: int
    max_gaussians: int
    refine_stop: int
    depth: str

    @property
    def total(self) -> int:
        return self.coarse + self.fine


# Sized so that the default run on a 64-frame 160x128 sequence takes minutes on a 2-core CPU
CPU_DEFAULTS = dict(coarse=300, fine=2200, init_points=12_000, max_gaussians=20_000)
CUDA_DEFAULTS = dict(coarse=1000, fine=3000, init_points=30_000, max_gaussians=400_000)
# --fast: a preview, sized with the video pipeline's small working size in mind (minutes on a 2-core CPU)
FAST_DEFAULTS = dict(coarse=150, fine=1000, init_points=6000, max_gaussians=10_000)


def _defaults(config: ReconstructConfig, device: torch.device) -> dict[str, int]:
    return FAST_DEFAULTS if config.fast else CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS


#: Deform3DGS's initial basis width (``init_param``), in normalised time: the floor of the resolved width.
ANCHOR_BASIS_WIDTH = 0.01


def resolve_field(config: ReconstructConfig, frames: int) -> ReconstructConfig:
    """``config`` with the basis width's 0 replaced by one frame spacing of ``frames`` frames, ``1 / (frames - 1)``
    in normalised time, but at least :data:`ANCHOR_BASIS_WIDTH` (so a clip of over 101 frames starts as the
    anchor does). The trainer records the resolved value in checkpoints and ``config.json``."""
    if config.deformation != "basis" or config.basis.init_width > 0:
        return config
    width = max(1.0 / max(frames - 1, 1), ANCHOR_BASIS_WIDTH)
    return dataclasses.replace(config, basis=dataclasses.replace(config.basis, init_width=width))


def field_config(config: ReconstructConfig) -> HexPlaneConfig | BasisConfig:
    """The settings of ``config``'s deformation field (``--deformation auto`` is resolved before training: by
    :func:`endo3d.gs.reconstruct.reconstruct` for a dataset, by the video plan for a video)."""
    if config.deformation == "auto":
        raise ValueError("--deformation auto must be resolved before training")
    return config.hexplane if config.deformation == "hexplane" else config.basis


def schedule_steps(config: ReconstructConfig, device: torch.device) -> tuple[int, int]:
    """``(coarse, fine)`` step counts: the config's, or the device's (``--fast``) defaults where it has zeros."""
    base = _defaults(config, device)
    fine = config.iterations or base["fine"]
    if config.coarse_iterations >= 0:
        return config.coarse_iterations, fine
    return (0 if config.deformation == "basis" else base["coarse"]), fine


def resolve_schedule(config: ReconstructConfig, frames: FrameSet, device: torch.device) -> Schedule:
    """Fill the config's device-dependent zeros and check the depth setting against the input."""
    base = _defaults(config, device)
    coarse, fine = schedule_steps(config, device)
    depth = config.loss.depth
    if frames.depth is None:
        raise InputError(frames.source, "has no depth maps: the Gaussians are initialised from depth "
                                        "(give --depth-dir with one NNNNNN.npy depth map per frame)")
    if depth == "auto":
        depth = "metric"
    return Schedule(coarse=coarse, fine=fine, init_points=config.init_points or base["init_points"],
                    max_gaussians=config.densify.max_gaussians or base["max_gaussians"],
                    refine_stop=config.densify.refine_stop or coarse + int(0.6 * fine), depth=depth)


class Trainer:
    """Owns the model, optimisers, densifier and random stream of one run."""

    def __init__(self, config: ReconstructConfig, frames: FrameSet, device: torch.device, backend: str) -> None:
        config = resolve_field(config, len(frames))
        field_settings = field_config(config)
        self.config = config
        self.frames = frames.to(device)
        self.device = device
        self.backend = backend
        self.schedule = resolve_schedule(config, frames, device)
        self.step = 0
        self.train_seconds = 0.0
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.background = torch.tensor(config.background, dtype=torch.float32, device=device)
        torch.manual_seed(config.seed)
        try:
            cloud = initial_points(frames, self.schedule.init_points, generator=self.generator)
        except ValueError as e:
            raise InputError(frames.source, str(e)) from None
        lo, hi = cloud.points.min(0).values, cloud.points.max(0).values
        self.scene_scale = float((hi - lo).norm()) / 2
        margin = 0.1 * (hi - lo) + 1e-3
        self.aabb = torch.stack([lo - margin, hi + margin])
        field = make_field(field_settings, self.aabb.to(device)).to(device)
        splats = create_splats(cloud.points, cloud.rgb, cloud.spacing.clamp_min(1e-3), sh_degree=config.sh_degree,
                               extra=field.per_gaussian_init(cloud.points.shape[0], torch.device("cpu")))
        self.model = DeformableGaussians(splats.to(device), field, sh_degree=0)
        self.optimizers = self._make_optimizers()
        self.field_optimizer = self._make_field_optimizer()
        densify = dataclasses.replace(config.densify, refine_stop=self.schedule.refine_stop,
                                      max_gaussians=self.schedule.max_gaussians)
        self.densifier = Densifier(densify, self.scene_scale)
        # camera corrections c2w_i exp(xi_i): axis-angle, translation in scene scales. Every training frame
        # moves (a fixed gauge frame stayed misaligned once the others had pulled the Gaussians along: measured
        # 14 dB on it vs 24-27 dB on the rest of a real clip); the world frame floats with the Gaussians.
        self.pose_delta = torch.zeros(len(frames), 6, device=device, requires_grad=config.refine_poses == "on")
        self.pose_unit = torch.tensor([1.0, 1.0, 1.0] + [self.scene_scale] * 3, device=device)
        self.pose_optimizer = (torch.optim.Adam([self.pose_delta], lr=config.lr.poses)
                               if config.refine_poses == "on" else None)

    # -- optimisation ---------------------------------------------------------------------------------

    def _base_lr(self, key: str) -> float:
        lr = self.config.lr
        if key == "means":
            return lr.means * self.scene_scale
        if key.startswith("deform_"):
            return lr.deform_basis
        return getattr(lr, key)

    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: torch.optim.Adam([p], lr=self._base_lr(k), eps=1e-15) for k, p in self.model.splats.items()}

    def _make_field_optimizer(self) -> torch.optim.Optimizer | None:
        groups = self.model.field.param_groups(self.config.lr.deform_grid, self.config.lr.deform_mlp)
        groups = [g for g in groups if g["params"]]
        if not groups:
            return None
        for g in groups:
            g["initial_lr"] = g["lr"]
        return torch.optim.Adam(groups, eps=1e-15)

    def _decay(self) -> float:
        """Exponential decay factor of positions and field rates at the current step (1 -> final_ratio)."""
        s = self.schedule
        progress = min(max(self.step - s.coarse, 0) / max(s.fine, 1), 1.0) if self.step >= s.coarse else 0.0
        return self.config.lr.final_ratio ** progress

    def _set_learning_rates(self) -> None:
        decay = self._decay()
        for key, opt in self.optimizers.items():
            if key == "means" or key.startswith("deform_"):
                opt.param_groups[0]["lr"] = self._base_lr(key) * decay
        if self.field_optimizer is not None:
            for g in self.field_optimizer.param_groups:
                g["lr"] = g["initial_lr"] * decay

    # -- cameras --------------------------------------------------------------------------------------

    def camera(self, i: int) -> torch.Tensor:
        """``(4, 4)`` c2w of frame position ``i`` with its learned correction (the input pose without
        --refine-poses)."""
        if self.pose_optimizer is None:
            return self.frames.c2w[i]
        return self.frames.c2w[i] @ se3_exp(self.pose_delta[i] * self.pose_unit)

    def cameras(self) -> torch.Tensor:
        """``(N, 4, 4)`` c2w of every frame: corrected training poses; each held-out frame keeps its input
        motion relative to the previous training frame (:func:`endo3d.geometry.carry_corrections`)."""
        train = self.frames.train
        with torch.no_grad():
            corrected = torch.stack([self.camera(i) for i in train])
        return carry_corrections(self.frames.c2w, train, corrected)

    def bake_cameras(self) -> torch.Tensor:
        """After training: :meth:`cameras` become ``frames.c2w`` and the corrections are reset (so
        :meth:`camera` keeps returning the same poses); returns them."""
        self.frames.c2w = self.cameras()
        with torch.no_grad():
            self.pose_delta.zero_()
        return self.frames.c2w

    # -- one step -------------------------------------------------------------------------------------

    def pick_frame(self) -> int:
        """The frame position this step trains on: the first training frame in the coarse stage."""
        train = self.frames.train
        if self.step < self.schedule.coarse:
            return train[0]
        return train[int(torch.randint(len(train), (1,), generator=self.generator))]

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the loss terms."""
        f, i = self.frames, self.pick_frame()
        coarse = self.step < self.schedule.coarse
        self.model.sh_degree = min(self.step // 1000, self.config.sh_degree)
        self._set_learning_rates()
        out = self.model.render(self.camera(i), f.K[i], f.width, f.height, f.t[i], deform=not coarse,
                                background=self.background, backend=self.backend)
        mask = f.valid[i]
        loss_c = self.config.loss
        photo = photometric_loss(out.rgb, f.rgb[i], mask, loss_c.ssim_weight)
        terms = {"photo": photo}
        if self.schedule.depth != "none" and f.depth is not None:
            target = f.depth[i]
            if self.schedule.depth == "metric":
                terms["depth"] = loss_c.depth_weight * inverse_depth_l1(out.depth, target, mask)
            else:
                terms["depth"] = loss_c.depth_weight * pearson_depth_loss(out.depth, 1 / target.clamp_min(1e-6) *
                                                                          (target > 0), mask)
        if loss_c.tv_weight > 0:
            terms["tv"] = loss_c.tv_weight * total_variation(out.depth, mask)
        if not coarse and loss_c.deform_reg_weight > 0:
            terms["field"] = loss_c.deform_reg_weight * self.model.field.regularization()
        loss = sum(terms.values())
        loss.backward()
        self.densifier.accumulate(out.means2d, out.radii, f.width, f.height)
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.field_optimizer is not None:
            if not coarse:
                self.field_optimizer.step()
            self.field_optimizer.zero_grad(set_to_none=True)
        if self.pose_optimizer is not None:
            if not coarse:
                self.pose_optimizer.step()
            self.pose_optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.densifier.step(self.step, self.model.splats, self.optimizers, self.generator)
        with torch.no_grad():
            mse = float((((out.rgb - f.rgb[i]) ** 2) * mask).sum() / (3 * mask.sum()).clamp_min(1))
        result = {k: float(v.detach()) for k, v in terms.items()}
        result["loss"] = float(loss.detach())
        result["psnr"] = -10 * math.log10(max(mse, 1e-12))
        return result

    # -- checkpoints ----------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The config as recorded in checkpoints: what a resumed run must share with the interrupted one."""
        return to_dict(dataclasses.replace(self.config, resume=False, overwrite=False, progress=True, threads=1))

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "config": self.settings(),
            "schedule": dataclasses.asdict(self.schedule),
            "device": self.device.type,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "scene_scale": self.scene_scale,
            "aabb": self.aabb,
            "splats": {k: v.detach().cpu() for k, v in self.model.splats.items()},
            "field": {k: v.cpu() for k, v in self.model.field.state_dict().items()},
            "sh_degree": self.model.sh_degree,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "field_optimizer": self.field_optimizer.state_dict() if self.field_optimizer else None,
            "densifier": self.densifier.state_dict(),
            "pose_delta": self.pose_delta.detach().cpu(),
            "pose_optimizer": self.pose_optimizer.state_dict() if self.pose_optimizer else None,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def resume_problem(self, state: dict[str, Any]) -> str | None:
        """Why ``state`` cannot be continued by this trainer (other settings, device or schedule), or None."""
        if state["config"] != self.settings():
            return "the interrupted run used other settings; resume with the same flags"
        if state["device"] != self.device.type or state["schedule"] != dataclasses.asdict(self.schedule):
            return (f"the interrupted run trained on {state['device']} with its own schedule; "
                    f"resume with --device {state['device']}")
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint made by :meth:`state_dict` of a run with the same config."""
        self.step = state["step"]
        self.train_seconds = state["train_seconds"]
        self.scene_scale = state["scene_scale"]
        self.model.splats = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v.to(self.device)) for k, v in state["splats"].items()})
        self.model.field.load_state_dict(state["field"])
        self.model.sh_degree = state["sh_degree"]
        self.optimizers = self._make_optimizers()
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        if self.field_optimizer is not None:
            self.field_optimizer.load_state_dict(state["field_optimizer"])
        self.densifier.load_state_dict(state["densifier"], self.device)
        with torch.no_grad():
            self.pose_delta.copy_(state["pose_delta"])
        if self.pose_optimizer is not None:
            self.pose_optimizer.load_state_dict(state["pose_optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically (temp file + rename)."""
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    # -- the loop -------------------------------------------------------------------------------------

    def fit(self, run_dir: Path, progress: bool = True, on_step: Callable[[int], None] | None = None) -> None:
        """Train to the end of the schedule, checkpointing into ``run_dir``.

        ``on_step`` is called with the step count after every step (for a caller's own progress display).
        """
        from tqdm import tqdm

        total = self.schedule.total
        every = max(self.config.checkpoint_every, 1)
        with tqdm(total=total, initial=self.step, desc="reconstruct", unit="step", disable=not progress,
                  dynamic_ncols=True) as bar:
            while self.step < total:
                start = time.perf_counter()
                terms = self.train_step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                self.train_seconds += time.perf_counter() - start
                bar.update(1)
                if on_step is not None:
                    on_step(self.step)
                if self.step % 10 == 0 or self.step == total:
                    stage = "coarse" if self.step <= self.schedule.coarse else "fine"
                    bar.set_postfix(stage=stage, loss=f"{terms['loss']:.4f}", psnr=f"{terms['psnr']:.2f}",
                                    gaussians=self.model.num_gaussians, refresh=False)
                if self.step % every == 0 or self.step == total:
                    self.save(run_dir / CHECKPOINT)


def load_model(checkpoint: dict[str, Any], device: torch.device) -> DeformableGaussians:
    """The trained model of a checkpoint (for rendering; no optimiser state)."""
    from endo3d.core.config import from_dict

    config = from_dict(ReconstructConfig, checkpoint["config"], CHECKPOINT)
    field = make_field(field_config(config), checkpoint["aabb"].to(device)).to(device)
    field.load_state_dict(checkpoint["field"])
    splats = torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(device), requires_grad=False)
                                     for k, v in checkpoint["splats"].items()})
    return DeformableGaussians(splats, field, sh_degree=checkpoint["sh_degree"]).eval()
