"""One trainer for ``endo3d depth train`` (self-supervised) and ``endo3d depth finetune`` (supervised).

Reads top-down:

1. :func:`train` opens the data (:func:`endo3d.depth.data.open_sequences`),
   lists the training samples, and opens the run folder
   (:func:`endo3d.core.fs.resumable_output_dir`);
2. :func:`build_models` makes the depth network (base weights, adapters,
   what trains) and, self-supervised, the pose / intrinsics network;
3. each step draws a :class:`Batch` (:meth:`FrameStore.batch`) and computes
   :func:`self_supervised_step` or :func:`supervised_step`; self-supervised,
   the first ``pose_warmup`` steps keep the depth network fixed (pose warm-up)
   and three Adam groups train the depth network (``lr``), the pose net
   (``pose_lr``) and the camera's shared focal length (``intrinsics_lr``);
4. checkpoints every ``checkpoint_every`` steps make ``--resume`` continue
   bit-for-bit (model, optimiser and sampler state);
5. :func:`save_run` writes the run folder (see :mod:`endo3d.depth.run`).

The mode is the config's type: :class:`DepthTrainConfig` or
:class:`DepthFinetuneConfig`; nothing else differs between them.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from endo3d.core.config import to_dict
from endo3d.core.device import resolve_device
from endo3d.core.errors import InputError
from endo3d.core.fs import resumable_output_dir
from endo3d.depth import losses
from endo3d.depth.config import RUN_FORMAT, DepthFinetuneConfig, DepthTrainConfig, TrainSettings
from endo3d.depth.data import FrameSequence, open_sequences
from endo3d.depth.network import DepthNet, build_backbone
from endo3d.depth.posenet import PoseNet
from endo3d.depth.run import (
    ADAPTER_FILE, BASE_FILE, HEADS_FILE, POSE_FILE, RUN_JSON, base_state_dict, load_run, save_tensors,
)

__all__ = ["Batch", "FrameStore", "TrainResult", "TrainingPaused", "build_models", "resize_intrinsics",
           "train"]

CHECKPOINT = "checkpoint.pt"
TRANSLATION_SCALE_MM = 1.0
"""mm per unit of the pose decoder's translation output (see :class:`PoseNet`)."""
_RESUME_FREE = {"resume", "overwrite", "progress", "steps", "checkpoint_every", "device"}
"""Settings that may change between an interrupted run and its --resume."""


class TrainingPaused(Exception):
    """Raised inside the run folder context to leave the staging folder for ``--resume`` (``stop_after``)."""


def resize_intrinsics(K: np.ndarray, size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """``K`` for an image resized from ``size`` ``(H, W)`` to ``new_size`` (OpenCV pixel centres)."""
    sy, sx = new_size[0] / size[0], new_size[1] / size[1]
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return out


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(C, H, W)`` float image to ``size`` with area-like (antialiased bilinear) resampling."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(C, H, W)`` map (depth, mask) to ``size`` by nearest neighbour (no mixing of valid and invalid)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None].float(), size=size, mode="nearest")[0].to(x.dtype)


@dataclass
class Batch:
    """One training batch at the network size ``(H, W)``.

    Attributes:
        target: ``(B, 3, H, W)`` RGB in [0, 1].
        sources: the neighbours ``-1`` and ``+1`` of each target, each ``(B, 3, H, W)`` (self-supervised only).
        valid: ``(B, 1, H, W)`` bool, pixels to use in the target (FOV / instrument mask; True without one).
        source_valid: per source ``(B, 1, H, W)`` bool.
        K: ``(B, 3, 3)`` known intrinsics at the network size, or None.
        depth: ``(B, 1, H, W)`` ground truth in mm (supervised only), or None.
    """

    target: torch.Tensor
    sources: list[torch.Tensor]
    valid: torch.Tensor
    source_valid: list[torch.Tensor]
    K: torch.Tensor | None
    depth: torch.Tensor | None


class FrameStore:
    """Frames resized to the network size, read once and kept in memory (float32)."""

    def __init__(self, sequences: list[FrameSequence], size: tuple[int, int], *, need_depth: bool) -> None:
        self.sequences = sequences
        self.size = size
        self.need_depth = need_depth
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def frame(self, s: int, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(rgb (3, H, W), valid (1, H, W) bool, depth (1, H, W) mm or None)`` of frame ``i`` of sequence ``s``."""
        key = (s, i)
        if key not in self._cache:
            seq = self.sequences[s]
            rgb = resize_image(seq.image(i), self.size)
            mask = seq.mask(i)
            valid = resize_nearest(mask, self.size) if mask is not None else torch.ones(1, *self.size, dtype=torch.bool)
            depth = None
            if self.need_depth:
                d = seq.depth(i)
                assert d is not None
                depth = resize_nearest(d, self.size)
            self._cache[key] = (rgb, valid, depth)
        return self._cache[key]

    def K(self, s: int) -> torch.Tensor | None:
        seq = self.sequences[s]
        if seq.K is None:
            return None
        return torch.from_numpy(resize_intrinsics(seq.K, seq.size, self.size)).float()

    def batch(self, samples: list[tuple[int, int]], picks: torch.Tensor, *, neighbours: bool,
              device: torch.device) -> Batch:
        """The batch of ``samples[picks]``; with ``neighbours`` also frames ``i - 1`` and ``i + 1``."""
        chosen = [samples[int(k)] for k in picks]
        target, valid, depth = zip(*(self.frame(s, i) for s, i in chosen))
        sources, source_valid = [], []
        if neighbours:
            for offset in (-1, 1):
                rgb, ok, _ = zip(*(self.frame(s, i + offset) for s, i in chosen))
                sources.append(torch.stack(rgb).to(device))
                source_valid.append(torch.stack(ok).to(device))
        Ks = [self.K(s) for s, _ in chosen]
        K = torch.stack(Ks).to(device) if all(k is not None for k in Ks) else None  # type: ignore[misc]
        return Batch(torch.stack(target).to(device), sources, torch.stack(valid).to(device), source_valid, K,
                     torch.stack(depth).to(device) if self.need_depth else None)  # type: ignore[arg-type]


def training_samples(sequences: list[FrameSequence], *, self_supervised: bool) -> list[tuple[int, int]]:
    """``(sequence, frame)`` pairs to train on: frames with both neighbours, or frames with depth.

    Raises:
        InputError: nothing to train on (too few frames, no ground truth).
    """
    out: list[tuple[int, int]] = []
    for s, seq in enumerate(sequences):
        if self_supervised:
            out += [(s, i) for i in range(1, len(seq) - 1)]
        elif seq.has_depth:
            out += [(s, i) for i in range(len(seq))]
        else:
            raise InputError(seq.source, "no ground-truth depth: supervised fine-tuning needs labelled data")
    if not out:
        what = "at least 3 frames in a sequence" if self_supervised else "frames with depth"
        raise InputError(sequences[0].source, f"nothing to train on: self-supervised training needs {what}")
    return out


def build_models(config: TrainSettings, device: torch.device) -> tuple[DepthNet, PoseNet | None, dict[str, Any]]:
    """The depth network (and pose net) before training, with ``requires_grad`` set.

    The backbone's base weights come from ``--weights``, from ``--init``'s
    model (its LoRA merged, its necks and heads carried on) or from the
    seeded random init. Returns the models and a description of the base
    (``{"weights": path or None, "init": path or None}``).
    """
    network = config.network()
    torch.manual_seed(config.seed)
    pose: PoseNet | None = None
    init = load_run(config.init) if config.init is not None else None
    if init is not None:
        if init.network.encoder != network.encoder:
            raise InputError(config.init, f"run uses encoder {init.network.encoder}, not {network.encoder}")
        if init.network.version != network.version:
            raise InputError(config.init, f"run uses Depth Anything version {init.network.version} (its tap "
                                          f"blocks), not {network.version}: pass --version {init.network.version}")
        from endo3d.depth.adapters import merge_adapters

        backbone = init.net.backbone
        merge_adapters(backbone)
        if backbone.pretrained.neck_config is not None and not network.necks:
            raise InputError(config.init, "this run has necks: keep --necks (they cannot be merged into the base)")
    else:
        backbone = build_backbone(network, config.weights)
    base = base_state_dict(backbone)
    net = DepthNet(backbone, network)
    if init is not None and init.network.scales == network.scales:
        net.heads.load_state_dict(init.net.heads.state_dict())
    if isinstance(config, DepthTrainConfig):
        pose = PoseNet(learn_intrinsics=config.intrinsics == "learn", width=config.pose_width,
                       translation_scale_mm=TRANSLATION_SCALE_MM, square_pixels=config.square_pixels)
        if (init is not None and init.pose is not None and init.pose.learn_intrinsics == pose.learn_intrinsics
                and init.pose.width == pose.width and init.pose.square_pixels == pose.square_pixels
                and init.pose.translation_scale_mm == pose.translation_scale_mm):
            pose.load_state_dict(init.pose.state_dict())
    set_trainable(net, full=config.full, train_head=config.train_head)
    net.to(device).train()
    if pose is not None:
        pose.to(device).train()
    return net, pose, {"base": base}


def set_trainable(net: DepthNet, *, full: bool, train_head: bool) -> None:
    """Full fine-tuning: everything trains. Else: adapters (LoRA, necks), depth heads, optionally the DPT head."""
    if full:
        for p in net.parameters():
            p.requires_grad_(True)
        return
    encoder = net.backbone.pretrained
    if encoder.lora_config is not None or len(encoder.necks):
        from endo3d.depth.adapters import freeze_backbone

        freeze_backbone(net.backbone, train_head=train_head)
    else:
        for p in net.backbone.parameters():
            p.requires_grad_(False)
        for p in net.backbone.depth_head.parameters():
            p.requires_grad_(train_head)
    for p in net.heads.parameters():
        p.requires_grad_(True)


def self_supervised_step(
    net: DepthNet, pose: PoseNet, batch: Batch, config: DepthTrainConfig, noise_gen: torch.Generator,
    *, train_depth: bool = True, prior: DepthNet | None = None,
) -> losses.LossTerms:
    """Predict depths and the motion to each neighbour, then the view-synthesis loss.

    With ``train_depth=False`` (the pose warm-up) the depth network runs
    without gradients: only the pose / intrinsics network learns. With a
    frozen ``prior`` network, ``config.prior_weight`` times the
    scale-invariant log distance ``std(log d - log d_prior)`` over valid
    pixels joins the total.
    """
    with torch.set_grad_enabled(train_depth and torch.is_grad_enabled()):
        depths = net(batch.target)
    outs = [pose(batch.target, source) for source in batch.sources]
    Ks = [out.K if out.K is not None else batch.K for out in outs]
    valid = batch.valid
    source_valid = batch.source_valid
    if config.specular_threshold < 1:
        valid = valid & losses.specular_mask(batch.target, config.specular_threshold)
        source_valid = [ok & losses.specular_mask(src, config.specular_threshold)
                        for ok, src in zip(source_valid, batch.sources)]
    b, _, h, w = batch.target.shape
    noise = 1e-5 * torch.randn(b, len(batch.sources), h, w, generator=noise_gen).to(batch.target.device)
    terms = losses.view_synthesis_loss(
        depths, batch.target, batch.sources, [o.T for o in outs], Ks,  # type: ignore[arg-type]
        brightness=[o.brightness for o in outs] if config.brightness else None,
        target_valid=valid, source_valid=source_valid, ssim_weight=config.ssim_weight,
        smoothness=config.smoothness, automask=config.automask, noise=noise,
    )
    if prior is not None and train_depth:
        with torch.no_grad():
            reference = prior.depth(batch.target)
        anchor = losses.silog_loss(depths[0], reference, valid, variance_focus=1.0)
        terms = replace(terms, total=terms.total + config.prior_weight * anchor)
    return terms


def supervised_step(net: DepthNet, batch: Batch, config: DepthFinetuneConfig) -> torch.Tensor:
    """The chosen depth loss at every scale (upsampled to full size), averaged."""
    assert batch.depth is not None
    cfg = net.config
    gt = batch.depth
    valid = batch.valid & (gt > cfg.min_depth_mm) & (gt < cfg.max_depth_mm)
    total = gt.new_zeros(())
    depths = net(batch.target)
    for depth in depths:
        if config.loss == "ssi":
            total = total + losses.ssi_loss(1.0 / depth, gt, valid)
        else:
            fn = losses.silog_loss if config.loss == "silog" else losses.l1_log_loss
            total = total + fn(depth, gt, valid)
    return total / len(depths)


@dataclass
class TrainResult:
    """What :func:`train` returns (``None`` from a paused call)."""

    run: Path
    history: list[float]
    """Loss at every step."""
    info: dict[str, Any]
    """``run.json``."""


def _trainable_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in net.named_parameters() if p.requires_grad}


def _save_checkpoint(path: Path, step: int, net: DepthNet, pose: PoseNet | None, optimizer: torch.optim.Optimizer,
                     sampler: torch.Generator, noise: torch.Generator, history: list[float]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"step": step, "net": _trainable_state(net), "pose": None if pose is None else pose.state_dict(),
                "optimizer": optimizer.state_dict(), "sampler": sampler.get_state(), "noise": noise.get_state(),
                "history": history}, tmp)
    os.replace(tmp, path)


def _settings_record(config: TrainSettings) -> dict[str, Any]:
    return {k: v for k, v in to_dict(config).items() if k not in _RESUME_FREE}


def train(config: DepthTrainConfig | DepthFinetuneConfig, *, stop_after: int | None = None,
          sequences: list[FrameSequence] | None = None,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult | None:
    """Train and write the run folder ``config.out``.

    Args:
        config: self-supervised (:class:`DepthTrainConfig`) or supervised
            (:class:`DepthFinetuneConfig`) settings.
        stop_after: stop after this many steps of this call, leaving a
            checkpoint for ``resume=True`` (returns None).
        sequences: frames already in memory to train on instead of opening
            ``config.data`` (which then only names them in ``run.json``);
            the video pipeline passes its training frames this way.
        on_step: called after every step with ``(steps done, loss)``, for a
            caller's own progress display.

    Raises:
        InputError: bad settings or data, or a resume whose settings differ.
    """
    config.check()
    self_supervised = isinstance(config, DepthTrainConfig)
    if sequences is None:
        sequences = open_sequences(list(config.data), frame_step=config.frame_step)
    if self_supervised and config.intrinsics == "known":
        unknown = [s.source for s in sequences if s.K is None]
        if unknown:
            raise InputError(unknown[0], "no intrinsics in this data: use --intrinsics learn")
    samples = training_samples(sequences, self_supervised=self_supervised)
    network = config.network()
    store = FrameStore(sequences, (network.height, network.width), need_depth=not self_supervised)
    device = resolve_device(config.device)

    started = time.perf_counter()
    net, pose, base = build_models(config, device)  # bad weights or --init fail here, before any folder exists
    try:
        with resumable_output_dir(config.out, overwrite=config.overwrite, resume=config.resume) as (stage, resuming):
            settings = _settings_record(config)
            if resuming:
                saved = json.loads((stage / "settings.json").read_text()) if (stage / "settings.json").is_file() else None
                if saved != json.loads(json.dumps(settings)):
                    diff = sorted(k for k in settings if saved is None or saved.get(k) != json.loads(json.dumps(settings[k])))
                    raise InputError(config.out, f"--resume with other settings than the interrupted run ({', '.join(diff[:3])})")
            else:
                (stage / "settings.json").write_text(json.dumps(settings, indent=1))
            prior = None
            if self_supervised and config.prior_weight > 0:  # the starting network, before any step or resume
                prior = copy.deepcopy(net).eval().requires_grad_(False)
            if resuming and (stage / BASE_FILE).is_file():
                net.backbone.load_state_dict({**net.backbone.state_dict(), **_load_base(stage)})
            elif config.weights is None and not config.full:
                save_tensors(base["base"], stage / BASE_FILE)  # random init or --init: the base must be kept
            params = [p for p in net.parameters() if p.requires_grad]
            groups: list[dict[str, Any]] = [{"params": params, "lr": config.lr}]
            if pose is not None:
                assert isinstance(config, DepthTrainConfig)
                focal = pose.focal_parameters()
                groups.append({"params": [p for p in pose.parameters() if all(p is not q for q in focal)],
                               "lr": config.pose_lr})
                if focal:
                    groups.append({"params": focal, "lr": config.intrinsics_lr})
            optimizer = torch.optim.Adam(groups)
            sampler = torch.Generator().manual_seed(config.seed)
            noise = torch.Generator().manual_seed(config.seed + 1)
            history: list[float] = []
            start = 0
            if resuming and (stage / CHECKPOINT).is_file():
                ckpt = torch.load(stage / CHECKPOINT, map_location=device, weights_only=False)
                net.load_state_dict({**net.state_dict(), **ckpt["net"]})
                if pose is not None:
                    pose.load_state_dict(ckpt["pose"])
                optimizer.load_state_dict(ckpt["optimizer"])
                sampler.set_state(ckpt["sampler"].cpu())  # map_location put them on the device; generators are CPU
                noise.set_state(ckpt["noise"].cpu())
                history, start = list(ckpt["history"]), int(ckpt["step"])

            from tqdm import tqdm

            bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=not config.progress,
                       desc="depth " + ("train" if self_supervised else "finetune"), unit="step", dynamic_ncols=True)
            for step in bar:
                picks = torch.randint(len(samples), (config.batch_size,), generator=sampler)
                batch = store.batch(samples, picks, neighbours=self_supervised, device=device)
                if self_supervised:
                    assert pose is not None and isinstance(config, DepthTrainConfig)
                    terms = self_supervised_step(net, pose, batch, config, noise,
                                                 train_depth=step >= config.pose_warmup, prior=prior)
                    loss = terms.total
                else:
                    assert isinstance(config, DepthFinetuneConfig)
                    loss = supervised_step(net, batch, config)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                history.append(float(loss.item()))
                bar.set_postfix(loss=f"{history[-1]:.4f}")
                done = step + 1
                if on_step is not None:
                    on_step(done, history[-1])
                if done % config.checkpoint_every == 0 or done == config.steps or (
                        stop_after is not None and done - start >= stop_after):
                    _save_checkpoint(stage / CHECKPOINT, done, net, pose, optimizer, sampler, noise, history)
                if stop_after is not None and done - start >= stop_after and done < config.steps:
                    raise TrainingPaused
            bar.close()
            info = save_run(stage, config, net, pose, history, time.perf_counter() - started, device)
    except TrainingPaused:
        return None
    return TrainResult(Path(config.out), history, info)


def _load_base(stage: Path) -> dict[str, torch.Tensor]:
    from endo3d.depth.run import load_tensors

    return load_tensors(stage / BASE_FILE)


def save_run(stage: Path, config: TrainSettings, net: DepthNet, pose: PoseNet | None, history: list[float],
             seconds: float, device: torch.device) -> dict[str, Any]:
    """Write the trained model and ``run.json`` into ``stage``; remove the checkpoint."""
    from endo3d.depth.adapters import save_adapters, trainable_parameter_report

    net.eval()
    encoder = net.backbone.pretrained
    has_adapters = encoder.lora_config is not None or len(encoder.necks) > 0
    if config.full:
        save_tensors(base_state_dict(net.backbone), stage / BASE_FILE)
    elif config.train_head and not has_adapters:
        # No adapters to carry the trained head: keep the whole base (head included).
        save_tensors(base_state_dict(net.backbone), stage / BASE_FILE)
    if has_adapters:
        save_adapters(net.backbone, stage / ADAPTER_FILE, include_head=config.train_head)
    save_tensors(net.heads.state_dict(), stage / HEADS_FILE)
    if pose is not None:
        save_tensors(pose.state_dict(), stage / POSE_FILE)
    report = trainable_parameter_report(net)
    info = {
        "format": RUN_FORMAT,
        "mode": "self-supervised" if isinstance(config, DepthTrainConfig) else "supervised",
        "network": to_dict(net.config),
        "weights": str(Path(config.weights).resolve()) if config.weights is not None and not (stage / BASE_FILE).is_file() else None,
        "init": str(config.init) if config.init is not None else None,
        "settings": to_dict(config),
        "pose": None if pose is None else {"learn_intrinsics": pose.learn_intrinsics, "width": pose.width,
                                           "translation_scale_mm": pose.translation_scale_mm,
                                           "square_pixels": pose.square_pixels},
        "trainable_parameters": report.trainable,
        "total_parameters": report.total,
        "trainable_share": report.share,
        "pose_parameters": 0 if pose is None else sum(p.numel() for p in pose.parameters()),
        "steps": len(history),
        "final_loss": history[-1] if history else None,
        "loss_first_10": float(np.mean(history[:10])) if history else None,
        "loss_last_10": float(np.mean(history[-10:])) if history else None,
        "train_seconds": seconds,
        "device": device.type,
    }
    (stage / RUN_JSON).write_text(json.dumps(info, indent=1))
    (stage / "loss.json").write_text(json.dumps(history))
    for name in (CHECKPOINT, "settings.json"):
        (stage / name).unlink(missing_ok=True)
    return info

