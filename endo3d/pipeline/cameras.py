"""Depth, camera motion and intrinsics of a clip from the self-supervised depth model (EndoDAC class).

1. :func:`adapt_depth` trains ``endo3d depth train``'s networks on the
   clip's *training* frames only (test frames never reach it): a Depth
   Anything / DINOv2 backbone with LoRA adapters (from ``--depth-weights``,
   from a previous ``--depth-init`` run, or from random init when the user
   has no weights), depth heads and the pose + intrinsics net. The sequence
   it sees skips the held-out frames, so a training pair may be two frames
   apart.
2. :func:`predict_cameras` runs the adapted networks on every frame: depth
   (network size, resized to the working size), the motion between
   consecutive *training* frames (the pose net both ways, ``T_{a<-b}``
   averaged with the inverse of ``T_{b<-a}`` on SE(3); the pairs the
   adaptation saw), chained into ``c2w`` with frame 0 at the origin, and the
   intrinsics (mean of those pairs' predictions) when they are not given.
   Each test frame is placed by its motion from the training frame before
   it, so a test image moves only its own camera: no training camera, depth
   or intrinsics depends on it.

Units: the depth network outputs mm and the pose net's translation is in mm
(``endo3d.depth.posenet``); without metric supervision the scale they agree
on is not guaranteed to be metric, and ``metrics.json`` says so.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from endo3d.depth.config import DepthTrainConfig
from endo3d.depth.data import FrameSequence
from endo3d.geometry import anchor_of, interpolate_pose, invert_pose
from endo3d.pipeline.frames import Clip

DEPTH_RUN = "depth_model"
"""Sub-folder of the staging folder holding the adapted depth / pose run."""


@dataclass
class RawCameras:
    """What the networks predict for every frame of a clip (working resolution).

    Attributes:
        depth: float32 ``(N, 1, H, W)`` z-depth in the networks' mm.
        c2w: float64 ``(N, 4, 4)``, frame 0 at the origin (OpenCV axes).
        K: float64 ``(3, 3)`` pixels at the working size.
        K_estimated: whether ``K`` came from the pose net (else it was given).
    """

    depth: torch.Tensor
    c2w: torch.Tensor
    K: np.ndarray
    K_estimated: bool


def network_size(height: float, width: float) -> tuple[int, int]:
    """The depth network's input ``(h, w)``: ``height x width`` pixels rounded to multiples of 14 (ViT patch), >= 56."""
    return max(56, 14 * round(height / 14)), max(56, 14 * round(width / 14))


def training_sequence(clip: Clip, frames: list[int], K: np.ndarray | None) -> FrameSequence:
    """The clip's frames ``frames`` as a :class:`FrameSequence` (valid = FOV, no speculars, no instruments)."""
    valid = clip.valid
    return FrameSequence(
        name=clip.source.stem, source=clip.source, size=(clip.height, clip.width), length=len(frames),
        layout="video", _image=lambda k: clip.rgb[frames[k]], _mask=lambda k: valid[frames[k]],
        K=None if K is None else np.asarray(K, dtype=np.float64),
    )


def adapt_depth(config: DepthTrainConfig, sequence: FrameSequence, *,
                on_step: Callable[[int, float], None] | None = None) -> Path:
    """Self-supervised adaptation of depth, pose and intrinsics (``endo3d depth train``) on ``sequence``.

    A finished run in ``config.out`` is reused; an interrupted one continues
    (``config.resume``). Returns the run folder.
    """
    from endo3d.core.fs import staging_dir
    from endo3d.depth.run import RUN_JSON
    from endo3d.depth.train import train

    out = Path(config.out)
    if (out / RUN_JSON).is_file():
        if on_step is not None:
            on_step(config.steps, float("nan"))
        return out
    resume = staging_dir(out).is_dir()
    train(dataclasses.replace(config, resume=resume, overwrite=not resume), sequences=[sequence], on_step=on_step)
    return out


def average_motion(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """SE(3) mean of ``T_{i<-j}`` predicted as ``forward`` and as the inverse of ``backward`` = ``T_{j<-i}``."""
    return interpolate_pose(forward, invert_pose(backward), 0.5)


def chain(motions: torch.Tensor) -> torch.Tensor:
    """``(N-1, 4, 4)`` ``T_{i<-i+1}`` -> ``(N, 4, 4)`` ``c2w`` with ``c2w_0 = I`` and ``c2w_{i+1} = c2w_i T_{i<-i+1}``."""
    poses = [torch.eye(4, dtype=motions.dtype, device=motions.device)]
    for T in motions:
        poses.append(poses[-1] @ T)
    return torch.stack(poses)


@torch.no_grad()
def predict_cameras(run: Path, clip: Clip, train: list[int], K_given: np.ndarray | None, device: torch.device,
                    *, batch: int = 8, on_frame: Callable[[int], None] | None = None) -> RawCameras:
    """Depth of every frame, motions between consecutive training frames chained into poses, each test frame
    placed from the training frame before it, and the intrinsics; see the module docstring.

    Args:
        train: ascending positions of the training frames; the first must be 0.
    """
    from endo3d.depth.run import load_run
    from endo3d.depth.train import resize_image, resize_intrinsics

    assert train and train[0] == 0, "frame 0 is a training frame: it is the origin of the chain"
    loaded = load_run(run)
    net = loaded.net.to(device).eval()
    pose = loaded.pose
    assert pose is not None, "a self-supervised run always has a pose net"
    pose = pose.to(device).eval()
    size = (net.config.height, net.config.width)
    small = torch.stack([resize_image(img, size) for img in clip.rgb])
    depths = []
    for k in range(0, len(clip), batch):
        d = net.depth(small[k:k + batch].to(device))
        depths.append(F.interpolate(d, size=(clip.height, clip.width), mode="bilinear", align_corners=False).cpu())
        if on_frame is not None:
            on_frame(min(k + batch, len(clip)))
    test = sorted(set(range(len(clip))) - set(train))
    pairs = list(zip(train[:-1], train[1:])) + [(train[anchor_of(i, train)], i) for i in test]
    motions, Ks = [], []
    for k in range(0, len(pairs), batch):
        a_ids, b_ids = zip(*pairs[k:k + batch])
        a, b = small[list(a_ids)].to(device), small[list(b_ids)].to(device)
        fwd, bwd = pose(b, a), pose(a, b)  # target, source: T_{source <- target}
        motions.append(average_motion(fwd.T.double(), bwd.T.double()).cpu())
        if fwd.K is not None:
            Ks += [torch.stack([fwd.K.double().cpu(), bwd.K.double().cpu()], 1)]
    motions = torch.cat(motions)
    c2w = torch.empty(len(clip), 4, 4, dtype=torch.float64)
    c2w[train] = chain(motions[:len(train) - 1])
    for (a, b), T in zip(pairs[len(train) - 1:], motions[len(train) - 1:]):
        c2w[b] = c2w[a] @ T
    if K_given is not None:
        K = np.asarray(K_given, dtype=np.float64)
    else:
        K_net = torch.cat(Ks)[:len(train) - 1].mean((0, 1)).numpy()  # the training pairs' predictions only
        K = resize_intrinsics(K_net, size, (clip.height, clip.width))
    return RawCameras(depth=torch.cat(depths).float(), c2w=c2w, K=K, K_estimated=K_given is None)


def intrinsics_from_flags(K: tuple[float, float, float, float] | None, calibration: Path | None,
                          source_size: tuple[int, int], working_size: tuple[int, int]) -> np.ndarray | None:
    """The user's intrinsics at the working size, or None (estimate them).

    ``K`` is ``(fx, fy, cx, cy)`` in pixels of the source video; a
    calibration JSON holds ``"K"`` (3x3) and optionally the ``"width"`` and
    ``"height"`` it refers to (default: the source size), or an
    ``endo3d/v1`` meta.json (``camera.K``).

    Raises:
        InputError: an unreadable or malformed calibration file, a K that is
            not of that form (positive focal lengths, no skew), or a principal
            point outside the image.
    """
    from endo3d.core.errors import InputError
    from endo3d.depth.train import resize_intrinsics

    where: str | Path = "--K"
    if calibration is not None:
        where = calibration
        try:
            data = json.loads(Path(calibration).read_text())
            matrix = data["camera"]["K"] if "camera" in data else data["K"]
            M = np.asarray(matrix, dtype=np.float64)
            size = (int(data.get("height", source_size[0])), int(data.get("width", source_size[1])))
        except (OSError, ValueError, KeyError, TypeError, OverflowError) as e:
            raise InputError(calibration, f"not a calibration JSON with a 3x3 \"K\" ({type(e).__name__}: {e})") from None
        if M.shape != (3, 3):
            raise InputError(calibration, f"\"K\" must be 3x3, got shape {M.shape}")
    elif K is not None:
        fx, fy, cx, cy = K
        M = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
        size = source_size
    else:
        return None
    h, w = size
    if not (np.isfinite(M).all() and M[0, 0] > 0 and M[1, 1] > 0 and M[0, 1] == M[1, 0] == M[2, 0] == M[2, 1] == 0
            and M[2, 2] == 1):
        raise InputError(where, "K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with positive focal lengths "
                                "(no skew: the renderer and the networks have none)")
    if not (0 <= M[0, 2] < w and 0 <= M[1, 2] < h):
        raise InputError(where, f"principal point ({M[0, 2]:g}, {M[1, 2]:g}) lies outside the {w}x{h} image "
                                "it refers to (inconsistent K)")
    if abs(w / h - source_size[1] / source_size[0]) > 0.01 * source_size[1] / source_size[0]:
        raise InputError(where, f"K refers to a {w}x{h} image, the video is {source_size[1]}x{source_size[0]} "
                                "(different aspect ratio)")
    return resize_intrinsics(M, (h, w), working_size)
