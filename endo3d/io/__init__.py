"""Reading and writing data: PNG channels, ``endo3d/v1`` datasets, EndoNeRF folders, video.

Conventions (units, frames, the ``endo3d/v1`` layout) are those of
CONVENTIONS.md; every dataset reader returns a :class:`Dataset` whose frames
are :class:`Frame` objects.
"""

from __future__ import annotations

import os
from pathlib import Path

from endo3d.io.dataset import (
    CHANNELS,
    Dataset,
    DatasetMeta,
    DatasetWriter,
    Frame,
    FrameRecord,
    is_test_frame,
    read_dataset,
    read_meta,
    write_frame_files,
)
from endo3d.io.endonerf import EndoNerfDataset, endonerf_intrinsics, llff_to_opencv, read_endonerf
from endo3d.io.images import (
    PngInfo,
    decode_depth,
    decode_flow,
    decode_normals,
    encode_depth,
    encode_flow,
    encode_normals,
    png_info,
    png_size,
    read_png,
    read_rgb,
    rgb_to_uint8,
    write_png,
    write_rgb,
)
from endo3d.io.video import VideoFrame, VideoInfo, VideoWriter, probe_video, read_video


def is_dataset(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a dataset folder :func:`open_dataset` reads (``meta.json``: endo3d/v1, or
    ``poses_bounds.npy``: EndoNeRF)."""
    root = Path(path)
    return root.is_dir() and ((root / "meta.json").exists() or (root / "poses_bounds.npy").exists())


def open_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Open a dataset folder of either format, with each reader's defaults.

    An EndoNeRF folder (``poses_bounds.npy``, no ``meta.json``) goes to
    :func:`read_endonerf`; anything else to :func:`read_dataset`.
    """
    root = Path(path)
    if not (root / "meta.json").exists() and (root / "poses_bounds.npy").exists():
        return read_endonerf(root)
    return read_dataset(root)


__all__ = [
    "CHANNELS", "Dataset", "DatasetMeta", "DatasetWriter", "EndoNerfDataset", "Frame", "FrameRecord", "PngInfo",
    "VideoFrame", "VideoInfo", "VideoWriter", "decode_depth", "decode_flow", "decode_normals", "encode_depth",
    "encode_flow", "encode_normals", "endonerf_intrinsics", "is_dataset", "is_test_frame", "llff_to_opencv", "open_dataset", "png_info",
    "png_size", "probe_video", "read_dataset", "read_endonerf", "read_meta", "read_png",
    "read_rgb", "read_video", "rgb_to_uint8", "write_frame_files", "write_png", "write_rgb",
]
