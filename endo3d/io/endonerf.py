"""Reader for EndoNeRF folders, returning the same :class:`Dataset` as ``endo3d/v1``.

An EndoNeRF folder holds ``images/*.png``, ``depth/*.png`` (stereo depth,
0 = invalid), ``masks/*.png`` (255 = tool) and ``poses_bounds.npy`` (N x 17,
LLFF layout). Files of each folder are matched by sorted name.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from endo3d.core.errors import InputError
from endo3d.geometry.camera import Camera
from endo3d.geometry.se3 import pose_problems
from endo3d.io.dataset import Dataset, DatasetMeta, FrameRecord
from endo3d.io.images import png_info, read_png

# EndoNeRF stores no timestamps; its clips were recorded at 30 fps.
ENDONERF_FPS = 30.0
MaskPolarity = Literal["auto", "tool_is_255", "tissue_is_255"]
_FOLDERS = ("images", "depth", "masks")


def llff_to_opencv(poses_bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LLFF ``poses_bounds`` -> OpenCV camera-to-world poses.

    Each row holds a row-major 3x5 matrix ``[R | t | hwf]`` and ``near, far``.
    LLFF's rotation columns are the camera's (down, right, back) axes in the
    world; OpenCV's are (right, down, forward) = (col 1, col 0, -col 2). The
    translation (camera centre) is unchanged.

    Args:
        poses_bounds: float ``(N, 17)``.

    Returns:
        c2w float64 ``(N, 4, 4)`` (OpenCV, in the file's length unit), hwf
        float64 ``(3,)`` = (height, width, focal) of row 0, and bounds float64
        ``(N, 2)`` = (near, far).
    """
    a = np.asarray(poses_bounds, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 17 or a.shape[0] == 0:
        raise ValueError(f"poses_bounds must be (N, 17) with N >= 1, got shape {a.shape}")
    m = a[:, :15].reshape(-1, 3, 5)
    c2w = np.zeros((a.shape[0], 4, 4))
    c2w[:, :3, 0] = m[:, :, 1]
    c2w[:, :3, 1] = m[:, :, 0]
    c2w[:, :3, 2] = -m[:, :, 2]
    c2w[:, :3, 3] = m[:, :, 3]
    c2w[:, 3, 3] = 1.0
    return c2w, m[0, :, 4].copy(), a[:, 15:17].copy()


def endonerf_intrinsics(width: int, height: int, focal: float) -> np.ndarray:
    """float64 ``(3, 3)`` K of an EndoNeRF image: ``[[f, 0, W/2], [0, f, H/2], [0, 0, 1]]``.

    EndoNeRF casts NeRF-style rays through pixel corners without a half-pixel
    offset, so in endo3d's pixel-centre convention the principal point is
    exactly ``(W / 2, H / 2)``.
    """
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def _tool_pixels(path: Path) -> np.ndarray:
    """bool ``(H, W)``: mask pixels at or above half range (first channel if colour)."""
    a = read_png(path)
    if a.ndim == 3:
        a = a[..., 0]
    return a >= (128 if a.dtype == np.uint8 else 32768)


class EndoNerfDataset(Dataset):
    """An EndoNeRF folder seen as a :class:`Dataset` (``format == "endonerf"``).

    Depth is the raw PNG value times ``meta.depth_scale_mm``; masks become
    labels 0 (tissue) and 1 (tool).
    """

    format = "endonerf"

    def __init__(self, path: Path, meta: DatasetMeta, *, tool_is_255: bool) -> None:
        super().__init__(path, meta)
        self.tool_is_255 = tool_is_255

    def _read_depth(self, path: Path) -> np.ndarray:
        a = read_png(path)
        if a.ndim != 2:
            raise InputError(path, f"depth must be a 1-channel PNG, found {a.shape[2]} channels")
        return (a.astype(np.float64) * self.meta.depth_scale_mm).astype(np.float32)

    def _read_mask(self, path: Path) -> np.ndarray:
        tool = _tool_pixels(path)
        return (tool if self.tool_is_255 else ~tool).astype(np.uint8)


def _list_pngs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(folder, "missing" if not folder.exists() else "is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise InputError(folder, "no PNG files")
    return files


def read_endonerf(
    path: str | os.PathLike[str],
    *,
    depth_scale_mm: float = 1.0,
    mask_polarity: MaskPolarity = "auto",
) -> EndoNerfDataset:
    """Open an EndoNeRF folder as a validated :class:`Dataset`.

    - Poses: :func:`llff_to_opencv`; K: :func:`endonerf_intrinsics`.
    - Times: ``index / 30`` s (EndoNeRF has no timestamps; 30 fps assumed,
      ``fps = 30`` in the meta).
    - Depth: raw PNG value x ``depth_scale_mm`` (EndoNeRF does not document the
      unit; EndoGaussian uses the raw values, i.e. ``depth_scale_mm = 1``).
    - Masks: a pixel >= 128 is "set"; with EndoNeRF's polarity (255 = tool) set
      pixels get label 1 (tool) and others 0 (tissue). ``mask_polarity``:
      ``"tool_is_255"``, ``"tissue_is_255"`` (inverted masks), or ``"auto"``:
      inverted when on average more than half of each mask is set, which is
      reported with one warning naming the masks folder (converted data often
      has inverted masks). The choice is recorded in ``meta.source``.
    - Per-frame ``extra["bounds"]`` holds LLFF's (near, far).

    Raises:
        InputError: a missing folder or file, counts of images, depth maps,
            masks and poses that differ, images of different sizes, an hwf that
            does not match the images, or a non-rigid pose.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(root, "missing" if not root.exists() else "is not a folder")
    if mask_polarity not in ("auto", "tool_is_255", "tissue_is_255"):
        raise ValueError(f"mask_polarity must be 'auto', 'tool_is_255' or 'tissue_is_255', got {mask_polarity!r}")
    if not depth_scale_mm > 0:
        raise ValueError(f"depth_scale_mm must be positive, got {depth_scale_mm}")
    poses_path = root / "poses_bounds.npy"
    if not poses_path.is_file():
        raise InputError(poses_path, "missing")
    try:
        poses_bounds = np.load(poses_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(poses_path, f"not a readable .npy array ({e})") from None
    if (poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17 or len(poses_bounds) == 0
            or not np.issubdtype(poses_bounds.dtype, np.number)):
        raise InputError(poses_path, f"must be a numeric N x 17 array, got {poses_bounds.dtype} {poses_bounds.shape}")
    images, depths, masks = (_list_pngs(root / name) for name in _FOLDERS)
    n = len(images)
    for name, files in zip(_FOLDERS[1:], (depths, masks)):
        if len(files) != n:
            raise InputError(root / name, f"{len(files)} PNG files, but images/ has {n}")
    if len(poses_bounds) != n:
        raise InputError(poses_path, f"{len(poses_bounds)} poses, but images/ has {n} PNG files")

    first = png_info(images[0])
    width, height = first.width, first.height
    for file in images + depths + masks:
        info = png_info(file)
        if (info.width, info.height) != (width, height):
            raise InputError(file, f"size {info.width}x{info.height}, but {images[0].name} in images/ is "
                                   f"{width}x{height}")
    for file in depths:
        if png_info(file).channels != 1:
            raise InputError(file, "depth must be a 1-channel PNG")

    c2w, hwf, bounds = llff_to_opencv(poses_bounds)
    if not np.all(poses_bounds[:, 4:15:5] == hwf):
        raise InputError(poses_path, "(height, width, focal) differs between frames")
    if (hwf[0], hwf[1]) != (height, width):
        raise InputError(poses_path, f"hwf says {hwf[1]:g}x{hwf[0]:g} (width x height), "
                                     f"but the images are {width}x{height}")
    camera = Camera("pinhole", width, height, endonerf_intrinsics(width, height, float(hwf[2])))
    problems = camera.problems()
    if problems:
        raise InputError(poses_path, f"camera from hwf: {problems[0]}")
    for i, pose in enumerate(c2w):
        pose_problem = pose_problems(torch.from_numpy(pose))
        if pose_problem is not None:
            raise InputError(poses_path, f"pose {i} {pose_problem}")

    if mask_polarity == "auto":
        tool_fraction = float(np.mean([_tool_pixels(m).mean() for m in masks]))
        tool_is_255 = tool_fraction <= 0.5
        if not tool_is_255:
            warnings.warn(
                f"{root / 'masks'}: masks look inverted (on average {tool_fraction:.0%} of each mask is 255, "
                "EndoNeRF's tool value); reading 255 as tissue. Pass mask_polarity='tool_is_255' to override.",
                stacklevel=2,
            )
    else:
        tool_is_255 = mask_polarity == "tool_is_255"

    frames = [
        FrameRecord(
            i, i / ENDONERF_FPS, c2w[i],
            {"rgb": f"images/{images[i].name}", "depth": f"depth/{depths[i].name}", "mask": f"masks/{masks[i].name}"},
            extra={"bounds": bounds[i].tolist()},
        )
        for i in range(n)
    ]
    source = {"format": "endonerf", "path": str(root),
              "mask_polarity": "tool_is_255" if tool_is_255 else "tissue_is_255"}
    meta = DatasetMeta(width, height, ENDONERF_FPS, float(depth_scale_mm), camera, frames, source=source)
    return EndoNerfDataset(root, meta, tool_is_255=tool_is_255)
