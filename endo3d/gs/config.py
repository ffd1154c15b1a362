"""Settings of ``endo3d reconstruct`` and ``endo3d render`` (typed; tyro makes them the CLI).

This module imports no torch, so ``endo3d --help`` stays fast.

Iteration counts left at 0 are picked from the device: a CPU gets a schedule
sized to finish a 64-frame 160x128 sequence in minutes, a CUDA GPU the
anchors' schedule (EndoGaussian / Deform3DGS: 3000 fine iterations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

from endo3d.core.config import positive
from endo3d.gs.deform_config import BasisConfig, HexPlaneConfig
from endo3d.pipeline.config import VideoSettings


@dataclass(frozen=True)
class DensifyConfig:
    """Adaptive density control (3DGS / gsplat ``DefaultStrategy`` rules)."""

    refine_start: int = 300
    """Gaussians are grown and pruned at the multiples of ``refine_every`` after this step (gsplat's rule:
    300 and 100 refine first at step 400)."""
    refine_stop: int = 0
    """Growing, pruning and opacity resets stop before this step (0: 60 % of the fine iterations)."""
    refine_every: int = 100
    """Steps between growth and pruning."""
    reset_every: int = 0
    """Steps between opacity resets (0: never)."""
    grow_grad2d: float = 2e-4
    """Mean NDC gradient of a Gaussian's 2D centre above which it is grown."""
    grow_scale3d: float = 0.01
    """Largest scale (share of the scene scale) up to which a grown Gaussian is duplicated, not split."""
    prune_opacity: float = 0.005
    """Gaussians less opaque than this are removed."""
    prune_scale3d: float = 0.1
    """Gaussians larger than this share of the scene scale are removed (after the first reset)."""
    max_gaussians: int = 0
    """Growth stops at this many Gaussians (0: 20 000 on CPU, 400 000 on CUDA)."""


@dataclass(frozen=True)
class LearningRates:
    """Adam learning rates (EndoGaussian's, except the HexPlane field's: x3, so that the short CPU schedule
    registers the motion; positions and fields decay exponentially to 1 %)."""

    means: float = 1.6e-4
    """Positions, times the scene scale in mm."""
    scales: float = 5e-3
    quats: float = 1e-3
    opacities: float = 5e-2
    sh0: float = 2.5e-3
    shN: float = 2.5e-3 / 20
    deform_mlp: float = 5e-4
    """Decoder of the HexPlane field."""
    deform_grid: float = 5e-3
    """Planes of the HexPlane field."""
    deform_basis: float = 1.6e-3
    """Per-Gaussian temporal basis parameters (Deform3DGS)."""
    poses: float = 3e-4
    """Camera corrections with --refine-poses: radians, and translation in units of the scene scale. On a
    simulated colon video after the camera stage's bundle adjustment, 1e-3 moved the cameras off (ATE 2.7 ->
    3.2 % of the path, held-out PSNR 28.5 dB) where 3e-4 kept them (2.7 %, 30.7 dB)."""
    final_ratio: float = 0.01
    """Positions and deformation rates decay to this share of their start by the last step."""


@dataclass(frozen=True)
class LossConfig:
    """Photometric, depth and regularisation terms."""

    ssim_weight: float = 0.2
    """Weight of (1 - SSIM) against the L1 term (3DGS: 0.2)."""
    depth: Literal["auto", "metric", "relative", "none"] = "auto"
    """Depth supervision: ``metric`` = L1 on inverse depth (scaled by the median depth, so unit-free);
    ``relative`` = 1 - Pearson correlation of inverse depths (scale and shift free);
    ``auto`` = metric when the input has depth."""
    depth_weight: float = 0.5
    """Weight of the depth term."""
    tv_weight: float = 0.0
    """Weight of total variation on the rendered depth (EndoGaussian: 0.03)."""
    deform_reg_weight: float = 1.0
    """Weight of the deformation field's own regulariser (plane smoothness etc.)."""


@dataclass(frozen=True)
class ReconstructConfig:
    """Reconstruct a deforming scene with Gaussian splatting and evaluate it on held-out frames."""

    input: tyro.conf.Positional[Path]
    """A video file (.mp4 .avi .mov ...), a folder of images, an ``endo3d/v1`` dataset folder or an EndoNeRF folder."""
    out: Path
    """Run folder to write (metrics.json, point_cloud.ply, cameras.json, renders/, checkpoint.pt; for video also
    depth/, mesh.ply and report.html)."""
    overwrite: bool = False
    """Replace an existing run folder."""
    resume: bool = False
    """Continue an interrupted run from its last checkpoint."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train (``auto``: CUDA when available)."""
    threads: int = 1
    """CPU threads for torch. On small images more threads gain little, and they slow down sharply
    when other jobs share the cores; raise it on a many-core machine."""
    rasterizer: Literal["auto", "torch", "gsplat"] = "auto"
    """``gsplat`` needs CUDA; ``torch`` is endo3d's own rasteriser (any device); ``auto`` picks gsplat on CUDA."""
    deformation: Literal["auto", "hexplane", "basis"] = "auto"
    """Deformation field: EndoGaussian's HexPlane + MLP, or Deform3DGS's per-Gaussian temporal bases (``auto``:
    hexplane for a dataset, bases for a video, whose moving instruments are usually unmasked)."""
    hexplane: HexPlaneConfig = field(default_factory=HexPlaneConfig)
    basis: BasisConfig = field(default_factory=BasisConfig)
    iterations: int = 0
    """Fine-stage steps, with deformation (0: 3000 on CUDA, a CPU-sized count on CPU)."""
    coarse_iterations: int = -1
    """Coarse-stage steps: no deformation, first training frame only (-1: 1000 on CUDA, a CPU-sized count on CPU).
    The basis field (Deform3DGS) has no coarse stage by default."""
    init_points: int = 0
    """Gaussians at initialisation (0: 30 000 on CUDA, fewer on CPU)."""
    sh_degree: int = 3
    """Spherical-harmonics degree of the colours (raised one step every 1000 iterations)."""
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    lr: LearningRates = field(default_factory=LearningRates)
    loss: LossConfig = field(default_factory=LossConfig)
    refine_poses: Literal["auto", "on", "off"] = "auto"
    """Refine the training cameras jointly with the Gaussians (``auto``: on for a video's estimated cameras with the
    HexPlane field; off with the temporal bases, whose free trajectories take up camera corrections, and for
    datasets, whose poses are given)."""
    depth_dir: Path | None = None
    """Folder of per-frame ``NNNNNN.npy`` z-depth maps in mm to train on instead of the input's (the input's
    depth, if any, stays the reference of the depth error)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Colour behind the Gaussians."""
    seed: int = 0
    checkpoint_every: int = 500
    """Steps between checkpoints (the last step always writes one)."""
    progress: bool = True
    """Show a progress bar."""
    fast: bool = False
    """A quick preview: for video a small working size, fewer frames and steps (about 5 minutes on a 2-core CPU
    for a 10 s clip); for datasets the short Gaussian schedule (150 + 1000 steps)."""
    start: float = 0.0
    """Video input: first second to use."""
    end: float | None = None
    """Video input: second at which to stop (default: the end)."""
    stride: int = 0
    """Video input: keep every n-th frame (0: picked so that at most --max-frames frames span the clip)."""
    max_frames: int = 0
    """Video input: at most this many frames (0: 48 with --fast, 96 on CPU, 250 on CUDA)."""
    width: int = 0
    """Video input: working width in pixels, the height keeps the aspect ratio (0: 160 with --fast, 256 on CPU,
    640 on CUDA; never above the video's)."""
    masks: Path | None = None
    """Video input: instrument masks (nonzero = instrument): a folder with one image per video frame, one image
    for all frames, or a mask video."""
    K: tuple[float, float, float, float] | None = None
    """Video input: known intrinsics FX FY CX CY in pixels of the video (default: estimated)."""
    calibration: Path | None = None
    """Video input: JSON file with the intrinsics: ``{"K": [[fx,0,cx],[0,fy,cy],[0,0,1]]}`` plus optional
    ``"width"``/``"height"`` it refers to (e.g. a cameras.json or an endo3d/v1 meta.json)."""
    depth_weights: Path | None = None
    """Video input: Depth Anything weights (.pth or HF .safetensors) to start the depth network from."""
    depth_init: Path | None = None
    """Video input: a run folder of ``endo3d depth train|finetune`` to start depth and pose from."""
    adapt_steps: int = 0
    """Video input: self-supervised adaptation steps of depth, pose and intrinsics on the video's training
    frames (0: 150 with --fast, 600 on CPU, 1000 on CUDA)."""
    video: VideoSettings = field(default_factory=VideoSettings)

    def problems(self) -> list[str]:
        """What is wrong with these settings, as phrases naming the flag (empty when usable)."""
        out = positive(self, "threads", "checkpoint_every", prefix="--")
        out += [f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
                for name in ("iterations", "init_points") if getattr(self, name) < 0]
        if not 0 <= self.sh_degree <= 3:
            out.append(f"--sh-degree must be 0..3, got {self.sh_degree}")
        d = self.densify
        out += positive(d, "refine_every", prefix="--densify.")
        out += [f"--densify.{n.replace('_', '-')} must be >= 0, got {getattr(d, n)}"
                for n in ("reset_every", "max_gaussians", "refine_start", "refine_stop") if getattr(d, n) < 0]
        for name in ("hexplane", "basis") if self.deformation == "auto" else (self.deformation,):
            out += [f"--{name}.{p}" for p in getattr(self, name).problems()]
        out += [f"--{n.replace('_', '-')} must be >= 0, got {getattr(self, n)}"
                for n in ("start", "stride", "max_frames", "width", "adapt_steps") if getattr(self, n) < 0]
        if self.end is not None and self.end <= self.start:
            out.append(f"--end ({self.end}) must be after --start ({self.start})")
        if self.K is not None and not (self.K[0] > 0 and self.K[1] > 0):
            out.append(f"--K needs positive focal lengths, got {self.K[0]}, {self.K[1]}")
        if self.K is not None and self.calibration is not None:
            out.append("give --K or --calibration, not both")
        if self.depth_weights is not None and self.depth_init is not None:
            out.append("give --depth-weights or --depth-init, not both")
        out += self.video.problems()
        return out

    def video_flags_set(self) -> list[str]:
        """The video-only flags given a value other than their default (an error for a dataset input)."""
        base = ReconstructConfig(input=self.input, out=self.out)
        names = ("start", "end", "stride", "max_frames", "width", "masks", "K", "calibration", "depth_weights",
                 "depth_init", "adapt_steps", "video")
        return [f"--{n.replace('_', '-')}" for n in names if getattr(self, n) != getattr(base, n)]


@dataclass(frozen=True)
class RenderConfig:
    """Render a reconstructed run to a video, with depth as a colour-mapped side panel."""

    run: tyro.conf.Positional[Path]
    """A run folder written by ``endo3d reconstruct``."""
    out: Path
    """The ``.mp4`` file to write."""
    path: Literal["training", "orbit", "fixed"] = "training"
    """Camera path: the training cameras over time, a small orbit around the first camera's view centre,
    or the first camera held still while the tissue deforms."""
    orbit_degrees: float = 10.0
    """Half-angle of the orbit, degrees."""
    frames: int = 0
    """Frames to render (0: one per input frame)."""
    fps: float = 0.0
    """Video frame rate (0: the input's)."""
    depth_panel: bool = True
    """Put a colour-mapped depth image beside each render."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    overwrite: bool = False
    """Replace an existing video."""
