"""Settings of ``endo3d reconstruct VIDEO`` that only a video input has (typed; no torch import).

The flags a user reaches for (``--start``, ``--stride``, ``--K``,
``--depth-weights``, ``--adapt-steps``, ``--fast`` ...) sit on
:class:`endo3d.gs.config.ReconstructConfig` itself; the tuning knobs of the
pipeline's stages are this group, ``--video.*``. Zeros mean "pick from the
video and the device" (:func:`endo3d.pipeline.plan.make_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class VideoSettings:
    """Stage settings of the video pipeline (0 = picked from the video's size and length and the device)."""

    image_fps: float = 25.0
    """Frame rate of an image-folder input (timestamps = position / fps)."""
    specular_threshold: float = 0.92
    """Brightest channel at or above which an unsaturated pixel is a specular highlight (>= 1: keep all)."""
    detect_fov: bool = True
    """Find the endoscope's field of view (black border, circular aperture) and ignore what is outside."""
    encoder: str = "vits"
    """DINOv2 size of the depth network: vits, vitb or vitl (must match --depth-weights)."""
    net_width: int = 0
    """Input width (pixels) of the depth and pose networks, at most the working width and rounded to a multiple
    of 14 (0: the working width with --fast and on CPU, 320 on CUDA, EndoDAC's training width)."""
    depth_batch: int = 0
    """Frames per depth-adaptation step (0: 2 with --fast, else 4)."""
    pose_width: int = 0
    """Base width of the pose net's ResNet (0: 16 with --fast, 32 on CPU, 64 on CUDA)."""
    depth_lr: float = 1e-4
    """Adam learning rate of the depth network's adapters and heads (EndoDAC: 1e-4)."""
    pose_lr: float = 2e-4
    """Adam learning rate of the pose net."""
    pose_warmup: int = -1
    """First adaptation steps that train only the pose / intrinsics net (-1: a quarter of --adapt-steps)."""
    prior_weight: float = 1.0
    """With --depth-weights or --depth-init: weight of the adapted depth's scale-invariant log distance to that
    starting network's depth (``endo3d depth train --prior-weight``). Measured on a simulated colon, 150 steps
    without it doubled AbsRel (0.15 -> 0.29) while the young pose net caught up."""
    align_steps: int = 0
    """Steps of the joint depth scale / shape / pose / focal refinement (0: the preset's, 300)."""
    align_window: int = 4
    """Each training frame is compared with this many training neighbours on each side in the refinement (wider
    baselines constrain the depth shape: simulated colon, 32 frames, AbsRel 0.094 with 2, 0.083 with 4)."""
    align_height: int = 72
    """Image height (pixels) at which the refinement compares frames."""
    focal_probe: bool = True
    """Probe an estimated focal length -/+10 % after the refinement and flag it when the video does not
    determine it (three refits of a fifth of --video.align-steps each: on a 2-core CPU, about as long as the
    refinement itself)."""
    voxel_mm: float = 0.0
    """TSDF voxel size in the poses' units (0: about two pixels' footprint at the median depth)."""
    depth_loss: Literal["relative", "metric"] = "relative"
    """How the Gaussians follow the estimated depth: ``relative`` (1 - Pearson of inverse depth, free of its
    uncertain scale) or ``metric`` (inverse-depth L1)."""

    def problems(self) -> list[str]:
        """What is wrong, as phrases naming the ``--video.*`` flag."""
        out = []
        for name in ("image_fps", "depth_lr", "pose_lr", "align_height"):
            if not getattr(self, name) > 0:
                out.append(f"--video.{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("net_width", "depth_batch", "pose_width", "prior_weight", "align_steps", "voxel_mm"):
            if getattr(self, name) < 0:
                out.append(f"--video.{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.align_window < 1:
            out.append(f"--video.align-window must be >= 1, got {self.align_window}")
        if self.encoder not in ("vits", "vitb", "vitl"):
            out.append(f"--video.encoder must be vits, vitb or vitl, got {self.encoder!r}")
        if self.pose_warmup < -1:
            out.append(f"--video.pose-warmup must be >= -1, got {self.pose_warmup}")
        return out
