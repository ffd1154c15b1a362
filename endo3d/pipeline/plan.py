"""The concrete sizes and step counts of one video run, picked from the video and the device.

Every zero in the settings is resolved here, once, and the result is saved
with the run (``pipeline.json``), so ``--resume`` and the report use the
same numbers. Presets (a 2-core CPU was the yardstick for ``--fast``: a
10 s clip in about 10 minutes):

| | working width | network width | frames | adapt steps | batch | refine steps | Gaussian steps (coarse + fine) |
| --- | --- | --- | --- | --- | --- | --- | --- |
| ``--fast`` | 160 | 160 | 48 | 150 | 2 | 300 | 0 + 1000 (``endo3d.gs.train.FAST_DEFAULTS``) |
| CPU | 256 | 256 | 96 | 600 | 4 | 300 | 0 + 2200 |
| CUDA | 640 | 320 | 250 | 1000 | 4 | 300 | 0 + 3000 (the anchors' fine steps) |

(no coarse stage: a video's default deformation, the temporal bases, has none, as in Deform3DGS; with
``--deformation hexplane`` 150, 300 and 1000 coarse steps come first).

The depth and pose networks see the frames at the *network width* (rounded
to a multiple of 14 for the ViT). On CUDA that is half the working width:
EndoDAC trains at 320x256. On an H100, adaptation at the full 640x512
(644x518 network input, batch 4) ran at 4.7 steps/s, so 1500 steps alone
took about 5.3 minutes of a 250-frame run. The networks' depth is upsampled to the
working size, at which the Gaussians train. An estimated focal length is
then probed by three refits of a fifth of the refinement steps each
(:data:`FOCAL_PROBE_FRACTION`; none when K is given).

The stride, when not given, is the smallest that keeps at most that many
frames over the chosen time range, so a long video is subsampled evenly
instead of cut short.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from endo3d.gs.config import ReconstructConfig
from endo3d.pipeline.cameras import network_size
from endo3d.pipeline.consistency import FOCAL_PROBE_FACTORS
from endo3d.pipeline.frames import working_size

PRESETS = {
    "fast": dict(width=160, net_width=160, max_frames=48, adapt_steps=150, depth_batch=2, pose_width=16,
                 align_steps=300),
    "cpu": dict(width=256, net_width=256, max_frames=96, adapt_steps=600, depth_batch=4, pose_width=32,
                align_steps=300),
    "cuda": dict(width=640, net_width=320, max_frames=250, adapt_steps=1000, depth_batch=4, pose_width=64,
                 align_steps=300),
}
FOCAL_PROBE_FRACTION = 5
"""Each of the focal probe's three refits takes ``align_steps // FOCAL_PROBE_FRACTION`` steps (at least
:data:`MIN_PROBE_STEPS`). Measured at 160 x 128 with 300 refinement steps: 60 steps separate a simulated
colon's rises of 3.5 % and more from a translating laparoscope's 0.8 % and less; 30 steps left one of the
latter at 2.0 %, and probing at half the comparison height left one of the former at 1.7 %."""
MIN_PROBE_STEPS = 10
MIN_FRAMES = 4
"""Fewest frames a video run accepts: frame 1 is held out, and self-supervision needs a training frame with
a training neighbour on each side."""


@dataclass(frozen=True)
class VideoPlan:
    """Resolved settings of a video run (see the module docstring)."""

    preset: str
    width: int
    height: int
    stride: int
    max_frames: int
    adapt_steps: int
    pose_warmup: int
    depth_batch: int
    pose_width: int
    net_height: int
    net_width: int
    align_steps: int
    focal_probe_steps: int
    """Steps of each focal probe refit (0: no probe, because K is given or ``--video.no-focal-probe``)."""

    @property
    def focal_probe_total(self) -> int:
        """Steps of all the focal probe's refits together (one per factor of ``FOCAL_PROBE_FACTORS``)."""
        return len(FOCAL_PROBE_FACTORS) * self.focal_probe_steps

    def gaussian_config(self, config: ReconstructConfig) -> ReconstructConfig:
        """``config`` with the video's depth loss where the user left ``--loss.depth auto``, the temporal bases
        where ``--deformation auto``, and where ``--refine-poses auto`` camera refinement with the HexPlane field
        only (the Gaussians' schedule, ``--fast`` included, is resolved by :func:`endo3d.gs.train.resolve_schedule`).

        The bases because a video's instruments are usually unmasked: per-Gaussian trajectories follow a moving
        grasper that the HexPlane field, smooth in space, blurs away. No camera refinement with them: their free
        trajectories can take up any camera correction, and on the simulated clips (16 / 32 frames, ``--fast``)
        refining moved the cameras away from the camera stage's (tissue-frame ATE of tissue 16: 2.5 -> 4.3 %) and
        cost held-out PSNR (colon 36.1 / 34.1 -> 32.3 / 32.6 dB; tissue 26.9 / 30.4 -> 26.7 / 29.1 dB)."""
        if config.loss.depth == "auto":
            config = dataclasses.replace(config, loss=dataclasses.replace(config.loss, depth=config.video.depth_loss))
        if config.deformation == "auto":
            config = dataclasses.replace(config, deformation="basis")
        if config.refine_poses == "auto":
            config = dataclasses.replace(config, refine_poses="on" if config.deformation == "hexplane" else "off")
        return config


def frames_in_range(frames: int, fps: float, start_s: float, end_s: float | None) -> int:
    """About how many of ``frames`` frames at ``fps`` fall in ``[start_s, end_s)``."""
    first = math.ceil(start_s * fps - 1e-6)
    stop = frames if end_s is None else min(frames, math.ceil(end_s * fps - 1e-6))
    return max(stop - first, 0)


def make_plan(config: ReconstructConfig, *, frames: int, fps: float, source_size: tuple[int, int],
              cuda: bool) -> VideoPlan:
    """Fill every zero of ``config``'s video settings for a video of ``frames`` frames of ``source_size``."""
    preset = "fast" if config.fast else ("cuda" if cuda else "cpu")
    p = PRESETS[preset]
    v = config.video
    height, width = working_size(source_size, config.width or p["width"])
    max_frames = config.max_frames or p["max_frames"]
    stride = config.stride or max(1, math.ceil(frames_in_range(frames, fps, config.start, config.end) / max_frames))
    adapt = config.adapt_steps or p["adapt_steps"]
    warmup = v.pose_warmup if v.pose_warmup >= 0 else adapt // 4
    net_width = min(v.net_width or p["net_width"], width)
    net_height, net_width = network_size(height * net_width / width, net_width)
    align = v.align_steps or p["align_steps"]
    estimate_K = config.K is None and config.calibration is None
    probe = max(MIN_PROBE_STEPS, align // FOCAL_PROBE_FRACTION) if v.focal_probe and estimate_K else 0
    return VideoPlan(
        preset=preset, width=width, height=height, stride=stride, max_frames=max_frames, adapt_steps=adapt,
        pose_warmup=min(warmup, adapt - 1), depth_batch=v.depth_batch or p["depth_batch"],
        pose_width=v.pose_width or p["pose_width"], net_height=net_height, net_width=net_width,
        align_steps=align, focal_probe_steps=probe,
    )
