"""The frames a reconstruction trains and is evaluated on, held in memory.

A dataset of either format (``endo3d/v1`` or EndoNeRF) becomes one
:class:`FrameSet`: stacked images, tissue masks, depth, cameras and the
normalised time ``t = index / (N - 1)`` of every frame. The split follows the
anchors' protocol: frame ``i`` is held out for testing when
``(i - 1) % 8 == 0`` (frames 1, 9, 17, ...) and is never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from endo3d.core.errors import InputError
from endo3d.io import Dataset, is_test_frame, open_dataset


def split(indices: Sequence[int]) -> tuple[list[int], list[int]]:
    """Training and held-out *positions* of frames numbered ``indices`` (held out: :func:`is_test_frame`)."""
    test = [k for k, i in enumerate(indices) if is_test_frame(int(i))]
    return [k for k in range(len(indices)) if k not in test], test


@dataclass
class FrameSet:
    """All frames of a sequence, stacked.

    Attributes:
        rgb: float32 ``(N, 3, H, W)`` sRGB in [0, 1], as stored.
        valid: bool ``(N, 1, H, W)``: tissue pixels to fit (mask label 0;
            all True without masks).
        depth: float32 ``(N, 1, H, W)`` z-depth in mm (0 = invalid) to train on, or None.
        gt_depth: the dataset's own depth, the reference of the depth error
            (the same tensor as ``depth`` unless ``depth_dir`` replaced it), or None.
        c2w: float32 ``(N, 4, 4)`` camera-to-world, OpenCV, mm.
        K: float32 ``(N, 3, 3)`` intrinsics in pixels.
        t: float32 ``(N,)`` normalised time ``index / (N - 1)`` (0 for one frame).
        index: int ``(N,)`` frame numbers.
        time_s: float64 ``(N,)`` timestamps in seconds.
        train: frame positions used for training; test: those held out.
        source: the dataset folder.
    """

    rgb: torch.Tensor
    valid: torch.Tensor
    depth: torch.Tensor | None
    gt_depth: torch.Tensor | None
    c2w: torch.Tensor
    K: torch.Tensor
    t: torch.Tensor
    index: np.ndarray
    time_s: np.ndarray
    train: list[int]
    test: list[int]
    source: Path

    @property
    def width(self) -> int:
        return int(self.rgb.shape[-1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[-2])

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def to(self, device: torch.device | str) -> "FrameSet":
        """The same frames with every tensor on ``device``."""
        move = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return FrameSet(**move)


def load_frames(path: str | Path, *, depth_dir: Path | None = None) -> FrameSet:
    """Read every frame of the dataset at ``path`` into a :class:`FrameSet`.

    Args:
        path: an ``endo3d/v1`` or EndoNeRF folder.
        depth_dir: optional folder of per-frame depth maps to train on instead
            of the dataset's: ``NNNNNN.npy`` float ``(H, W)`` z-depth in mm
            (e.g. from ``endo3d depth predict``), one per frame. The
            dataset's own depth, if any, stays the reference for evaluation.

    Raises:
        InputError: an empty dataset, a sequence of fewer than two frames
            (nothing to hold out), frames of different sizes, or a
            ``depth_dir`` that does not match the frames.
    """
    root = Path(path)
    dataset = open_dataset(root)
    n = len(dataset)
    if n == 0:
        raise InputError(root, "the dataset has no frames")
    if n < 2:
        raise InputError(root, "only one frame: a reconstruction needs at least 2 (frame 1 is held out for testing)")
    if dataset.camera.model != "pinhole":
        raise InputError(root, f"camera model {dataset.camera.model!r}: reconstruction needs a pinhole camera "
                               "(undistort the images first)")
    frames = list(dataset)
    size = frames[0].rgb.shape
    for f in frames:
        if f.rgb.shape != size:
            raise InputError(root, f"frame {f.index} is {f.rgb.shape[2]}x{f.rgb.shape[1]}, "
                                   f"frame {frames[0].index} is {size[2]}x{size[1]}")
    gt_depth = _stack_depth(dataset, frames)
    depth = _read_depth_dir(depth_dir, frames) if depth_dir is not None else gt_depth
    index = np.array([f.index for f in frames])
    train, test = split(index)
    return FrameSet(
        rgb=torch.stack([f.rgb for f in frames]),
        valid=torch.stack([f.valid for f in frames]),
        depth=depth, gt_depth=gt_depth,
        c2w=torch.from_numpy(np.stack([f.c2w for f in frames])).float(),
        K=torch.from_numpy(np.stack([f.K for f in frames])).float(),
        t=torch.arange(n, dtype=torch.float32) / max(n - 1, 1),
        index=index, time_s=np.array([f.time for f in frames], dtype=np.float64), train=train, test=test, source=root,
    )


def _stack_depth(dataset: Dataset, frames: list) -> torch.Tensor | None:
    if not dataset.has("depth"):
        return None
    return torch.stack([f.depth for f in frames])


def _read_depth_dir(folder: Path, frames: list) -> torch.Tensor:
    if not folder.is_dir():
        raise InputError(folder, "missing" if not folder.exists() else "is not a folder")
    maps = []
    height, width = frames[0].rgb.shape[1:]
    for f in frames:
        file = folder / f"{f.index:06d}.npy"
        if not file.is_file():
            raise InputError(file, "missing (one depth map per frame, named by frame index)")
        try:
            d = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(file, f"not a readable .npy array ({e})") from None
        if d.shape != (height, width) or not np.issubdtype(d.dtype, np.floating):
            raise InputError(file, f"must be a float ({height}, {width}) array, got {d.dtype} {d.shape}")
        d = np.where(np.isfinite(d) & (d > 0), d, 0).astype(np.float32)
        maps.append(torch.from_numpy(d)[None])
    return torch.stack(maps)
