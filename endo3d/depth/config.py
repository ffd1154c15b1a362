"""Settings of ``endo3d depth train | finetune | eval | predict`` (typed; tyro makes them the CLI).

This module imports no torch, so ``endo3d --help`` stays fast. Field
docstrings are the ``--help`` text. Units: millimetres (CONVENTIONS.md).

:class:`DepthNetConfig` describes the network and is saved in every run
folder (``run.json``) so that ``eval`` and ``predict`` rebuild the same
model; the command configs carry the same fields flat (``--encoder``,
``--height`` ...) and derive it with :meth:`TrainSettings.network`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from endo3d.core.errors import InputError

RUN_FORMAT = "endo3d/depth-run/v2"
"""``format`` entry of a run folder's ``run.json`` (v2: log-depth heads, square-pixel intrinsics option)."""

AdapterKind = Literal["dvlora", "lora", "gated", "none"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class DepthNetConfig:
    """The depth network: Depth Anything backbone, adapters, multi-scale depth heads.

    Each head's logit ``z`` maps to ``min_depth_mm * (max_depth_mm /
    min_depth_mm) ** sigmoid(z)`` (log-depth sigmoid, see
    :mod:`endo3d.depth.network`; EndoDAC uses a sigmoid disparity). We work
    in mm: 1..300 mm covers endoscopy (tissue a few mm from the tip up to a
    distant colon lumen) and starts at its geometric centre, 17 mm; EndoDAC's
    0.1..150 would put the far limit at the 150 mm evaluation cap itself.
    """

    encoder: str = "vits"
    """DINOv2 size: vits, vitb or vitl."""
    version: int = 2
    """Depth Anything version of the weights (1 or 2: which blocks feed the head)."""
    height: int = 252
    """Network input height, a multiple of 14 (252 x 322 is the 14-multiple closest to 256 x 320)."""
    width: int = 322
    """Network input width, a multiple of 14."""
    min_depth_mm: float = 1.0
    """Nearest depth the heads can output (logit -> -inf)."""
    max_depth_mm: float = 300.0
    """Farthest depth the heads can output (logit -> +inf)."""
    scales: int = 4
    """Depth heads on the DPT fusion maps (1 to 4, finest first)."""
    adapter: AdapterKind = "dvlora"
    """LoRA kind on each block's mlp.fc1 / mlp.fc2 (none: no LoRA)."""
    rank: int = 4
    """LoRA rank."""
    alpha: float | None = None
    """LoRA alpha (update scaled by alpha / rank); None = rank."""
    necks: bool = True
    """Convolutional necks after the tap blocks (EndoDAC)."""

    def problems(self) -> list[str]:
        out = []
        for name in ("height", "width"):
            v = getattr(self, name)
            if v <= 0 or v % 14:
                out.append(f"--{name} must be a positive multiple of 14, got {v}")
        if not 0 < self.min_depth_mm < self.max_depth_mm:
            out.append(f"need 0 < --min-depth-mm < --max-depth-mm, got {self.min_depth_mm}, {self.max_depth_mm}")
        if not 1 <= self.scales <= 4:
            out.append(f"--scales must be 1..4, got {self.scales}")
        if self.rank < 1:
            out.append(f"--rank must be >= 1, got {self.rank}")
        if self.alpha is not None and not self.alpha > 0:
            out.append(f"--alpha must be > 0, got {self.alpha}")
        if self.version not in (1, 2):
            out.append(f"--version must be 1 or 2, got {self.version}")
        return out


@dataclass(frozen=True)
class TrainSettings:
    """Fields shared by ``depth train`` and ``depth finetune`` (not a command by itself)."""

    data: tyro.conf.Positional[tuple[Path, ...]]
    """Training data: endo3d/v1 or EndoNeRF datasets, SCARED / Hamlyn / C3VD / SimCol3D folders, image folders or videos."""
    out: Path
    """Run folder to write (checkpoints, adapters, heads, pose net, run.json)."""
    weights: Path | None = None
    """Depth Anything weights (.pth or HF .safetensors); without it the backbone starts from random init."""
    init: Path | None = None
    """Start from a previous run's model (e.g. a supervised fine-tune); its adapters are merged first."""
    encoder: str = "vits"
    """DINOv2 size: vits, vitb or vitl (must match --weights)."""
    version: int = 2
    """Depth Anything version of --weights (1 or 2)."""
    height: int = 252
    """Network input height (multiple of 14); frames are resized to it."""
    width: int = 322
    """Network input width (multiple of 14)."""
    min_depth_mm: float = 1.0
    """Nearest depth the network can output."""
    max_depth_mm: float = 300.0
    """Farthest depth the network can output."""
    scales: int = 4
    """Depth scales supervised (Monodepth2: 4)."""
    adapter: AdapterKind = "dvlora"
    """LoRA kind (dvlora: EndoDAC; gated: Endo3DAC-style; none)."""
    rank: int = 4
    """LoRA rank."""
    alpha: float | None = None
    """LoRA alpha; None = rank."""
    necks: bool = True
    """Add convolutional necks after the tap blocks."""
    full: bool = False
    """Train every backbone weight (full fine-tuning) instead of adapters only."""
    train_head: bool = False
    """Also train the DPT head (the depth heads always train)."""
    steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 4
    """Frames per step."""
    lr: float = 1e-4
    """Adam learning rate of the depth network (EndoDAC: 1e-4)."""
    frame_step: int = 1
    """Keep every n-th frame of each sequence."""
    seed: int = 0
    """Seed of initialisation and batch order."""
    checkpoint_every: int = 200
    """Steps between checkpoints (for --resume)."""
    resume: bool = False
    """Continue an interrupted run in --out."""
    overwrite: bool = False
    """Replace an existing --out."""
    device: Device = "auto"
    """Where to train."""
    progress: bool = True
    """Show a progress bar."""

    def network(self) -> DepthNetConfig:
        """The :class:`DepthNetConfig` these settings describe."""
        return DepthNetConfig(
            encoder=self.encoder, version=self.version, height=self.height, width=self.width,
            min_depth_mm=self.min_depth_mm, max_depth_mm=self.max_depth_mm, scales=self.scales,
            adapter="none" if self.full else self.adapter, rank=self.rank, alpha=self.alpha,
            necks=self.necks and not self.full,
        )

    def check(self) -> None:
        """Reject bad settings before any work (one-line :class:`InputError`)."""
        problems = self.network().problems()
        for name in ("steps", "batch_size", "lr", "frame_step", "checkpoint_every"):
            if not getattr(self, name) > 0:
                problems.append(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not self.data:
            problems.append("give at least one training data folder or video")
        if self.weights is not None and self.init is not None:
            problems.append("give --weights or --init, not both (a run remembers its base weights)")
        if problems:
            raise InputError("settings", problems[0])


@dataclass(frozen=True)
class DepthTrainConfig(TrainSettings):
    """Self-supervised depth, pose and intrinsics training on video (EndoDAC-style).

    Example: endo3d depth train data/colon --out runs/colon --weights depth_anything_v2_vits.pth
    """

    intrinsics: Literal["learn", "known"] = "learn"
    """learn: the pose net predicts focal length and principal point; known: use the data's K."""
    square_pixels: bool = True
    """Learn one focal length for both axes (fx = fy); --no-square-pixels learns fx and fy apart (EndoDAC)."""
    ssim_weight: float = 0.85
    """Photometric loss = w (1 - SSIM) / 2 + (1 - w) L1."""
    smoothness: float = 1e-3
    """Weight of the edge-aware smoothness of mean-normalised disparity (1 / depth)."""
    automask: bool = True
    """Ignore pixels that an unwarped source explains better (static pixels, Monodepth2)."""
    brightness: bool = True
    """Per-pair affine brightness correction a * I + b predicted by the pose net (moving light)."""
    specular_threshold: float = 0.98
    """Gray level above which a pixel is a specular spot and ignored (1 or more: keep all)."""
    pose_lr: float = 1e-4
    """Adam learning rate of the pose net (motion, brightness, the per-pair part of the intrinsics)."""
    intrinsics_lr: float = 1e-2
    """Adam learning rate of the camera's shared focal length (the focal head's bias; see endo3d.depth.posenet)."""
    pose_width: int = 64
    """Base width of the pose net's ResNet encoder (64: ResNet-18, 11 M parameters)."""
    pose_warmup: int = 200
    """First steps that train only the pose / intrinsics net, the depth net frozen: the new pose net's near-zero
    motion first grows to the scale of the --init / --weights depth instead of the depth shrinking to meet it."""
    prior_weight: float = 0.0
    """Weight of the depth's scale-invariant log distance to the starting network's (--weights / --init) on the
    same frames: a short adaptation then refines the prior's shape instead of trading it for what a young pose
    net explains (0: off)."""

    def check(self) -> None:
        super().check()
        if not 0 <= self.ssim_weight <= 1:
            raise InputError("settings", f"--ssim-weight must be in [0, 1], got {self.ssim_weight}")
        if self.smoothness < 0:
            raise InputError("settings", f"--smoothness must be >= 0, got {self.smoothness}")
        if not self.pose_width >= 4 or not self.pose_lr > 0:
            raise InputError("settings", f"need --pose-width >= 4 and --pose-lr > 0, got {self.pose_width}, {self.pose_lr}")
        if not self.intrinsics_lr > 0:
            raise InputError("settings", f"--intrinsics-lr must be > 0, got {self.intrinsics_lr}")
        if not self.prior_weight >= 0:
            raise InputError("settings", f"--prior-weight must be >= 0, got {self.prior_weight}")
        if not 0 <= self.pose_warmup < self.steps:
            raise InputError("settings", f"--pose-warmup must be in [0, --steps), got {self.pose_warmup}")


@dataclass(frozen=True)
class DepthFinetuneConfig(TrainSettings):
    """Supervised depth fine-tuning on labelled (e.g. simulated) data.

    Example: endo3d depth finetune data/sim_colon --out runs/ft --loss silog --full
    """

    loss: Literal["ssi", "silog", "l1log"] = "silog"
    """ssi: scale-and-shift-invariant L1 on disparity (MiDaS); silog: scale-invariant log loss; l1log: L1 on log depth (metric)."""


@dataclass(frozen=True)
class DepthEvalConfig:
    """Evaluate depth (median-scaled), pose (ATE/RPE) and intrinsics against ground truth.

    Example: endo3d depth eval data/colon_test --checkpoint runs/colon
    """

    data: tyro.conf.Positional[tuple[Path, ...]]
    """Datasets with ground-truth depth (and poses / K for pose and intrinsics errors)."""
    checkpoint: Path
    """Run folder written by depth train / finetune."""
    out: Path | None = None
    """JSON file for the metrics (default: CHECKPOINT/eval.json)."""
    max_depth_mm: float | None = None
    """Depth cap (default 150 mm; 100 mm for C3VD data)."""
    min_depth_mm: float = 1e-3
    """Ground truth at or below this is ignored."""
    median_scaling: bool = True
    """Scale each prediction by median(gt) / median(pred) (SCARED / Hamlyn protocol)."""
    frame_step: int = 1
    """Evaluate every n-th frame."""
    device: Device = "auto"
    """Where to run."""
    progress: bool = True
    """Show a progress bar."""


@dataclass(frozen=True)
class DepthPredictConfig:
    """Predict per-frame depth for an image folder, video or dataset (writes .npy + colour PNGs).

    Example: endo3d depth predict clip.mp4 --out depth/ --weights depth_anything_v2_vits.pth
    """

    input: tyro.conf.Positional[Path]
    """Image folder, video file or dataset folder."""
    out: Path
    """Output folder (NNNNNN.npy float32 (H, W) and NNNNNN.png per frame)."""
    checkpoint: Path | None = None
    """Run folder from depth train / finetune: writes depth in mm."""
    weights: Path | None = None
    """Without --checkpoint: Depth Anything weights; writes the raw relative inverse depth."""
    encoder: str | None = None
    """With --weights: vits, vitb or vitl (default: read from the weights)."""
    version: int = 2
    """With --weights: Depth Anything version (1 or 2)."""
    input_size: int = 518
    """With --weights: working-size lower bound of the official preprocessing."""
    video: bool = False
    """Also write depth.mp4 of the colour-mapped frames."""
    frame_step: int = 1
    """Keep every n-th frame."""
    overwrite: bool = False
    """Replace an existing --out."""
    device: Device = "auto"
    """Where to run."""
    progress: bool = True
    """Show a progress bar."""

    def check(self) -> None:
        if (self.checkpoint is None) == (self.weights is None):
            raise InputError("settings", "give exactly one of --checkpoint RUN or --weights FILE")
        if self.frame_step < 1:
            raise InputError("settings", f"--frame-step must be >= 1, got {self.frame_step}")
        from endo3d.depth.dinov2 import VIT_SIZES

        if self.encoder is not None and self.encoder not in VIT_SIZES:
            raise InputError("settings", f"--encoder must be one of {', '.join(VIT_SIZES)}, got {self.encoder!r}")
        if self.version not in (1, 2):
            raise InputError("settings", f"--version must be 1 or 2, got {self.version}")
        if self.input_size < 14:
            raise InputError("settings", f"--input-size must be >= 14 (one ViT patch), got {self.input_size}")


__all__ = [
    "RUN_FORMAT", "DepthEvalConfig", "DepthFinetuneConfig", "DepthNetConfig", "DepthPredictConfig",
    "DepthTrainConfig", "TrainSettings",
]
