"""Frame sequences for depth training and evaluation, from every supported layout.

Every reader returns :class:`FrameSequence` objects: frames in time order,
read lazily, in endo3d's conventions (CONVENTIONS.md): RGB ``(3, H, W)``
float32 in [0, 1], z-depth ``(1, H, W)`` in mm (0 = invalid), a validity
mask ``(1, H, W)`` bool (True = tissue to use), poses ``c2w`` (OpenCV, mm),
``K`` in pixels (OpenCV pixel centres). Unit and axis conversions of other
datasets happen here, each in one named function:

============ ====================================================================
layout       files
============ ====================================================================
endo3d/v1    ``meta.json`` (via :func:`endo3d.io.open_dataset`)
EndoNeRF     ``poses_bounds.npy`` + ``images/`` (via :func:`endo3d.io.open_dataset`)
SCARED       ``left_finalpass/*.png``, ``disparity/*.tiff``, ``reprojection_data/*.json``
             (EndoGaussian's loader layout; the folder or its ``data/`` parent)
Hamlyn       ``image01/`` (+ ``depth01/`` uint16 mm, ``intrinsics.txt``) in a
             ``rectifiedNN`` folder; a folder of ``rectified*`` folders gives several
C3VD         ``NNNN_color.png``, ``NNNN_depth.tiff``, ``pose.txt``
SimCol3D     ``FrameBuffer_NNNN.png``, ``Depth_NNNN.png``, poses
             ``../SavedPosition_<S>.txt`` / ``../SavedRotationQuaternion_<S>.txt``
images       a folder of ``.png`` / ``.jpg`` frames (sorted by name)
video        a video file (``.mp4``, ``.avi``, ``.mkv``, ``.mov``, ...)
============ ====================================================================
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from endo3d.core.errors import InputError
from endo3d.io import is_dataset
from endo3d.io.images import IMAGE_SUFFIXES
from endo3d.io.video import VIDEO_SUFFIXES

__all__ = [
    "FrameSequence",
    "VIDEO_SUFFIXES",
    "c3vd_depth_to_mm",
    "c3vd_pose_to_c2w",
    "open_sequences",
    "read_image",
    "read_tiff",
    "scared_disparity_to_depth",
    "simcol_depth_to_mm",
    "simcol_pose_to_c2w",
]



@dataclass
class FrameSequence:
    """A sequence of frames in time order, read lazily.

    Attributes:
        name: a short label (folder name).
        source: the folder or file it came from.
        size: ``(H, W)`` of the images.
        K: float64 ``(3, 3)`` intrinsics at ``size``, or None when unknown.
        poses: float64 ``(N, 4, 4)`` ``c2w`` (OpenCV, mm), or None.
        layout: which reader made it (``"endo3d/v1"``, ``"c3vd"``, ...).
        eval_cap_mm: the evaluation depth cap this data usually uses (150; C3VD 100).
    """

    name: str
    source: Path
    size: tuple[int, int]
    length: int
    layout: str
    _image: Callable[[int], torch.Tensor] = field(repr=False)
    _depth: Callable[[int], torch.Tensor] | None = field(default=None, repr=False)
    _mask: Callable[[int], torch.Tensor] | None = field(default=None, repr=False)
    K: np.ndarray | None = None
    poses: np.ndarray | None = None
    eval_cap_mm: float = 150.0

    def __len__(self) -> int:
        return self.length

    @property
    def has_depth(self) -> bool:
        return self._depth is not None

    def _check(self, i: int) -> None:
        if not 0 <= i < self.length:
            raise IndexError(f"frame {i} out of range (0..{self.length - 1})")

    def image(self, i: int) -> torch.Tensor:
        """Frame ``i``: float32 ``(3, H, W)`` RGB in [0, 1]."""
        self._check(i)
        return self._image(i)

    def depth(self, i: int) -> torch.Tensor | None:
        """Ground-truth z-depth float32 ``(1, H, W)`` in mm (0 = invalid), or None."""
        self._check(i)
        return None if self._depth is None else self._depth(i)

    def mask(self, i: int) -> torch.Tensor | None:
        """bool ``(1, H, W)``, True = tissue to use (False: outside the FOV, instruments), or None."""
        self._check(i)
        return None if self._mask is None else self._mask(i)

    def subsample(self, step: int) -> "FrameSequence":
        """Every ``step``-th frame (``step`` >= 1)."""
        if step == 1:
            return self
        idx = list(range(0, self.length, step))
        img, dep, msk = self._image, self._depth, self._mask
        return FrameSequence(
            self.name, self.source, self.size, len(idx), self.layout,
            lambda i: img(idx[i]),
            None if dep is None else (lambda i: dep(idx[i])),
            None if msk is None else (lambda i: msk(idx[i])),
            K=self.K, poses=None if self.poses is None else self.poses[idx], eval_cap_mm=self.eval_cap_mm,
        )


# ---------------------------------------------------------------------------
# Files


def read_image(path: Path) -> torch.Tensor:
    """An 8/16-bit PNG or a JPEG as float32 ``(3, H, W)`` in [0, 1]."""
    from endo3d.io import read_rgb

    if not path.is_file():
        raise InputError(path, "missing")
    if path.suffix.lower() == ".png":
        return torch.from_numpy(read_rgb(path))
    import open3d as o3d  # JPEG through libjpeg (Open3D)

    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        img = o3d.t.io.read_image(str(path))
    if img.is_empty():
        raise InputError(path, "unreadable image")
    a = np.asarray(img.as_tensor().numpy())
    if a.ndim == 2:
        a = a[..., None]
    a = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., :3]
    scale = 65535.0 if a.dtype == np.uint16 else 255.0
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32) / scale)


def _read_png_values(path: Path) -> np.ndarray:
    from endo3d.io import read_png

    return read_png(path)


_TIFF_TYPES = {1: "B", 2: "c", 3: "H", 4: "I", 16: "Q"}
_SAMPLE_DTYPES = {(1, 8): np.uint8, (1, 16): np.uint16, (1, 32): np.uint32, (2, 8): np.int8, (2, 16): np.int16,
                  (2, 32): np.int32, (3, 32): np.float32, (3, 64): np.float64}


def read_tiff(path: Path) -> np.ndarray:
    """The first image of a TIFF file, values as stored, ``(H, W)`` or ``(H, W, C)``.

    Reads baseline strip TIFFs without compression or with Deflate, in
    uint8/16/32, int and float32/64 samples, which covers files written by
    OpenCV with ``IMWRITE_TIFF_COMPRESSION`` none/deflate and by numpy tools.
    Other compressions (e.g. LZW, OpenCV's default) are read through Pillow
    when it is installed.

    Raises:
        InputError: missing, not a TIFF, or an unsupported variant.
    """
    if not path.is_file():
        raise InputError(path, "missing")
    data = path.read_bytes()
    if data[:2] not in (b"II", b"MM"):
        raise InputError(path, "not a TIFF file")
    e = "<" if data[:2] == b"II" else ">"
    try:
        if struct.unpack(e + "H", data[2:4])[0] != 42:
            raise InputError(path, "not a classic TIFF (BigTIFF is not supported)")
        (offset,) = struct.unpack(e + "I", data[4:8])
        (count,) = struct.unpack(e + "H", data[offset:offset + 2])
        tags: dict[int, tuple[int, ...]] = {}
        for k in range(count):
            entry = data[offset + 2 + 12 * k: offset + 14 + 12 * k]
            tag, typ, n = struct.unpack(e + "HHI", entry[:8])
            code = _TIFF_TYPES.get(typ)
            if code is None or code == "c":
                continue
            size = struct.calcsize(code) * n
            raw = entry[8:8 + size] if size <= 4 else data[struct.unpack(e + "I", entry[8:12])[0]:][:size]
            tags[tag] = struct.unpack(e + code * n, raw)
    except struct.error:
        raise InputError(path, "truncated TIFF header") from None
    width, height = tags[256][0], tags[257][0]
    bits = tags.get(258, (1,))[0]
    compression = tags.get(259, (1,))[0]
    channels = tags.get(277, (1,))[0]
    fmt = tags.get(339, (1,))[0]
    dtype = _SAMPLE_DTYPES.get((fmt, bits))
    if compression not in (1, 8, 32946) or dtype is None or tags.get(284, (1,))[0] != 1 or 273 not in tags:
        return _read_tiff_pillow(path)
    chunks = []
    for off, n in zip(tags[273], tags[279]):
        chunk = data[off:off + n]
        chunks.append(zlib.decompress(chunk) if compression != 1 else chunk)
    raw = b"".join(chunks)
    need = width * height * channels * np.dtype(dtype).itemsize
    if len(raw) < need:
        raise InputError(path, "truncated TIFF image data")
    a = np.frombuffer(raw[:need], dtype=np.dtype(dtype).newbyteorder(e)).astype(dtype)
    if tags.get(317, (1,))[0] != 1:
        raise InputError(path, "TIFF predictor is not supported")
    a = a.reshape(height, width, channels)
    return a[..., 0] if channels == 1 else a


def _read_tiff_pillow(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise InputError(path, "compressed TIFF variant: install Pillow to read it") from None
    try:
        with Image.open(path) as im:
            return np.array(im)
    except Exception as exc:  # Pillow raises many types
        raise InputError(path, f"unreadable TIFF ({type(exc).__name__})") from None


def _numbered(folder: Path, pattern: str) -> dict[int, Path]:
    """Files in ``folder`` whose name matches ``pattern`` (one group: the frame number)."""
    rx = re.compile(pattern, re.IGNORECASE)
    out = {}
    for p in folder.iterdir():
        m = rx.fullmatch(p.name)
        if m:
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _size_of(loader: Callable[[int], torch.Tensor]) -> tuple[int, int]:
    img = loader(0)
    return int(img.shape[-2]), int(img.shape[-1])


def _check_matching(source: Path, what: str, frames: list[int], others: dict[int, Path]) -> None:
    missing = [i for i in frames if i not in others]
    if missing:
        raise InputError(source, f"{what} missing for frame {missing[0]} ({len(missing)} of {len(frames)} frames)")


# ---------------------------------------------------------------------------
# Unit / axis conversions (one named function each)


def c3vd_depth_to_mm(value: np.ndarray) -> np.ndarray:
    """C3VD ``NNNN_depth.tiff`` uint16 -> mm: ``v / 65535 * 100`` (0..100 mm)."""
    return value.astype(np.float32) / 65535.0 * 100.0


def c3vd_pose_to_c2w(values: np.ndarray) -> np.ndarray:
    """C3VD ``pose.txt`` rows (16 values, column-major 4x4 ``c2w`` in mm) -> ``(N, 4, 4)`` row-major.

    C3VD's camera frame is OpenCV's (x right, y down, z forward), so only the
    storage order changes.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1, 16)
    return values.reshape(-1, 4, 4).transpose(0, 2, 1).copy()


def simcol_depth_to_mm(value: np.ndarray) -> np.ndarray:
    """SimCol3D ``Depth_NNNN.png`` uint16 -> mm: ``v / 255 / 256`` is [0, 1] for 0..20 cm."""
    return value.astype(np.float32) / (255.0 * 256.0) * 200.0


_FLIP_Y = np.diag([1.0, -1.0, 1.0, 1.0])


def simcol_pose_to_c2w(positions_cm: np.ndarray, quaternions_xyzw: np.ndarray) -> np.ndarray:
    """SimCol3D poses (Unity, left-handed, y up; positions in cm, quaternions x y z w) -> ``c2w`` OpenCV mm.

    Unity's camera looks along +z with +y up, in a left-handed world.
    Conjugating the Unity pose with ``diag(1, -1, 1)`` (as SimCol3D's own
    evaluation code does) mirrors the world's y axis, which makes it
    right-handed, and turns the camera's +y up into +y down: x right, y down,
    z forward is OpenCV's camera frame. Positions are scaled cm -> mm.
    """
    from endo3d.geometry import quaternion_to_matrix

    pos = np.asarray(positions_cm, dtype=np.float64).reshape(-1, 3) * 10.0
    q = np.asarray(quaternions_xyzw, dtype=np.float64).reshape(-1, 4)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    T = np.tile(np.eye(4), (len(pos), 1, 1))
    T[:, :3, :3] = quaternion_to_matrix(torch.from_numpy(q[:, [3, 0, 1, 2]])).numpy()  # xyzw -> wxyz
    T[:, :3, 3] = pos
    return _FLIP_Y @ T @ _FLIP_Y


def scared_disparity_to_depth(disparity: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """SCARED rectified disparity (px) -> z-depth in mm with the reprojection matrix ``Q``.

    ``depth = Q[2, 3] / (Q[3, 2] * disparity)`` (EndoGaussian's loader);
    zero, negative or non-finite results are 0 (invalid).
    """
    d = np.asarray(disparity, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = Q[2, 3] / (Q[3, 2] * d)
    depth[~np.isfinite(depth) | (depth <= 0) | (d <= 0)] = 0.0
    return depth.astype(np.float32)


# ---------------------------------------------------------------------------
# Readers


def _from_dataset(root: Path) -> FrameSequence:
    from endo3d.io import open_dataset

    ds = open_dataset(root)
    if len(ds) == 0:
        raise InputError(root, "dataset has no frames")
    first = ds.frame(0)
    has_depth = first.depth is not None
    has_mask = first.mask is not None

    def mask(i: int) -> torch.Tensor:
        return ds.frame(i).valid

    return FrameSequence(
        root.name, root, (int(first.rgb.shape[1]), int(first.rgb.shape[2])), len(ds), ds.format,
        lambda i: ds.frame(i).rgb, (lambda i: ds.frame(i).depth) if has_depth else None,
        mask if has_mask else None, K=np.asarray(first.K, dtype=np.float64), poses=ds.poses,
    )


def _from_images(root: Path) -> FrameSequence:
    files = _image_files(root)
    if not files:
        raise InputError(root, "no .png or .jpg frames in this folder")

    def image(i: int) -> torch.Tensor:
        return read_image(files[i])

    return FrameSequence(root.name, root, _size_of(image), len(files), "images", image)


def _from_video(path: Path) -> FrameSequence:
    from endo3d.io import read_video

    frames: list[np.ndarray] = [f.rgb for f in read_video(path)]
    if not frames:
        raise InputError(path, "video has no frames")

    def image(i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(frames[i].transpose(2, 0, 1))).float() / 255.0

    return FrameSequence(path.stem, path, frames[0].shape[:2], len(frames), "video", image)


def _read_numbers(path: Path) -> np.ndarray:
    try:
        text = path.read_text()
        return np.array([float(x) for x in text.replace(",", " ").split()], dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read numbers ({exc})") from None


def _hamlyn(root: Path) -> FrameSequence:
    images = _image_files(root / "image01")
    if not images:
        raise InputError(root / "image01", "no .png or .jpg frames")
    depth_dir = root / "depth01"
    depth_files: list[Path] | None = None
    if depth_dir.is_dir():
        by_stem = {p.stem: p for p in depth_dir.iterdir() if p.suffix.lower() == ".png"}
        missing = [p.name for p in images if p.stem not in by_stem]
        if missing:
            raise InputError(depth_dir, f"no depth PNG for {missing[0]} ({len(missing)} frames)")
        depth_files = [by_stem[p.stem] for p in images]
    K = None
    kfile = root / "intrinsics.txt"
    if kfile.is_file():
        v = _read_numbers(kfile)
        if v.size not in (9, 12):
            raise InputError(kfile, f"expected a 3x3 or 3x4 matrix, got {v.size} numbers")
        K = v.reshape(3, -1)[:, :3].copy()

    def image(i: int) -> torch.Tensor:
        return read_image(images[i])

    def depth(i: int) -> torch.Tensor:
        assert depth_files is not None
        v = _read_png_values(depth_files[i])
        if v.dtype != np.uint16 or v.ndim != 2:
            raise InputError(depth_files[i], "Hamlyn depth must be a 16-bit single-channel PNG (mm)")
        return torch.from_numpy(v.astype(np.float32))[None]

    return FrameSequence(root.name, root, _size_of(image), len(images), "hamlyn", image,
                         depth if depth_files else None, K=K)


def _scared(root: Path) -> FrameSequence:
    left = _numbered(root / "left_finalpass", r"\D*(\d+)\.png")
    if not left:
        raise InputError(root / "left_finalpass", "no .png frames")
    frames = list(left)
    disp = _numbered(root / "disparity", r"\D*(\d+)\.tiff?") if (root / "disparity").is_dir() else {}
    reproj = _numbered(root / "reprojection_data", r"\D*(\d+)\.json") if (root / "reprojection_data").is_dir() else {}
    has_depth = bool(disp)
    if has_depth:
        _check_matching(root / "disparity", "disparity .tiff", frames, disp)
        _check_matching(root / "reprojection_data", "reprojection .json", frames, reproj)

    def q_matrix(i: int) -> np.ndarray:
        path = reproj[frames[i]]
        try:
            obj = json.loads(path.read_text())
            Q = np.asarray(obj["reprojection-matrix"], dtype=np.float64).reshape(4, 4)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(path, f"no 4x4 'reprojection-matrix' ({type(exc).__name__}: {exc})") from None
        return Q

    def image(i: int) -> torch.Tensor:
        return read_image(left[frames[i]])

    def depth(i: int) -> torch.Tensor:
        d = read_tiff(disp[frames[i]]).astype(np.float32)
        if d.ndim == 3:
            d = d[..., 0]
        return torch.from_numpy(scared_disparity_to_depth(d, q_matrix(i)))[None]

    K = None
    if reproj:  # rectified left camera: f = Q[2,3], c = -Q[0,3], -Q[1,3]
        Q = q_matrix(0)
        K = np.array([[Q[2, 3], 0, -Q[0, 3]], [0, Q[2, 3], -Q[1, 3]], [0, 0, 1]], dtype=np.float64)
    name = root.parent.name if root.name == "data" else root.name
    return FrameSequence(name, root, _size_of(image), len(frames), "scared", image,
                         depth if has_depth else None, K=K)


def _c3vd(root: Path) -> FrameSequence:
    color = _numbered(root, r"(\d+)_color\.png")
    if not color:
        raise InputError(root, "no NNNN_color.png frames")
    frames = list(color)
    depth_files = _numbered(root, r"(\d+)_depth\.tiff?")
    if depth_files:
        _check_matching(root, "NNNN_depth.tiff", frames, depth_files)
    poses = None
    pose_file = root / "pose.txt"
    if pose_file.is_file():
        rows = [line.replace(",", " ").split() for line in pose_file.read_text().splitlines() if line.strip()]
        if any(len(r) != 16 for r in rows):
            raise InputError(pose_file, "every line must hold 16 numbers (a column-major 4x4 c2w)")
        if len(rows) < len(frames):
            raise InputError(pose_file, f"{len(rows)} poses for {len(frames)} frames")
        all_poses = c3vd_pose_to_c2w(np.array(rows, dtype=np.float64))
        poses = all_poses[frames] if max(frames) < len(all_poses) else all_poses[: len(frames)]

    def image(i: int) -> torch.Tensor:
        return read_image(color[frames[i]])

    def depth(i: int) -> torch.Tensor:
        v = read_tiff(depth_files[frames[i]])
        if v.ndim == 3:
            v = v[..., 0]
        return torch.from_numpy(c3vd_depth_to_mm(v))[None]

    # C3VD's camera is omnidirectional (Scaramuzza): no pinhole K; learn it or pass a model.
    return FrameSequence(root.name, root, _size_of(image), len(frames), "c3vd", image,
                         depth if depth_files else None, poses=poses, eval_cap_mm=100.0)


def _simcol(root: Path) -> FrameSequence:
    rgb = _numbered(root, r"FrameBuffer_(\d+)\.png")
    if not rgb:
        raise InputError(root, "no FrameBuffer_NNNN.png frames")
    frames = list(rgb)
    depth_files = _numbered(root, r"Depth_(\d+)\.png")
    if depth_files:
        _check_matching(root, "Depth_NNNN.png", frames, depth_files)
    poses = None
    m = re.fullmatch(r"Frames_(.+)", root.name)
    if m:
        pos_file = root.parent / f"SavedPosition_{m.group(1)}.txt"
        rot_file = root.parent / f"SavedRotationQuaternion_{m.group(1)}.txt"
        if pos_file.is_file() and rot_file.is_file():
            pos, rot = _read_numbers(pos_file), _read_numbers(rot_file)
            if pos.size % 3 or rot.size % 4 or pos.size // 3 != rot.size // 4:
                raise InputError(pos_file, f"{pos.size} position values and {rot.size} quaternion values do not match")
            if pos.size // 3 < len(frames):
                raise InputError(pos_file, f"{pos.size // 3} poses for {len(frames)} frames")
            poses = simcol_pose_to_c2w(pos.reshape(-1, 3), rot.reshape(-1, 4))[frames]
    K = None
    for cam in (root / "cam.txt", root.parent / "cam.txt"):
        if cam.is_file():
            v = _read_numbers(cam)
            if v.size != 9:
                raise InputError(cam, f"expected a 3x3 K (9 numbers), got {v.size}")
            K = v.reshape(3, 3)
            break

    def image(i: int) -> torch.Tensor:
        return read_image(rgb[frames[i]])

    def depth(i: int) -> torch.Tensor:
        v = _read_png_values(depth_files[frames[i]])
        if v.ndim == 3:
            v = v[..., 0]
        return torch.from_numpy(simcol_depth_to_mm(v))[None]

    return FrameSequence(root.name, root, _size_of(image), len(frames), "simcol3d", image,
                         depth if depth_files else None, K=K, poses=poses)


def _detect(path: Path) -> list[FrameSequence]:
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return [_from_video(path)]
        raise InputError(path, f"not a video file (known suffixes: {', '.join(VIDEO_SUFFIXES)}) nor a folder")
    if not path.is_dir():
        raise InputError(path, "missing")
    if is_dataset(path):
        return [_from_dataset(path)]
    if (path / "data" / "left_finalpass").is_dir():
        return [_scared(path / "data")]
    if (path / "left_finalpass").is_dir():
        return [_scared(path)]
    if (path / "image01").is_dir():
        return [_hamlyn(path)]
    hamlyn = sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("rectified"))
    if hamlyn:
        # EndoDAC's copy nests rectifiedNN/rectifiedNN/image01.
        return [_hamlyn(p / p.name if (p / p.name / "image01").is_dir() else p) for p in hamlyn]
    names = [p.name for p in path.iterdir()]
    if any(re.fullmatch(r"\d+_color\.png", n) for n in names):
        return [_c3vd(path)]
    if any(re.fullmatch(r"FrameBuffer_\d+\.png", n, re.IGNORECASE) for n in names):
        return [_simcol(path)]
    if _image_files(path):
        return [_from_images(path)]
    frames_dirs = sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("Frames_"))
    if frames_dirs:  # a SimCol3D scene folder
        return [_simcol(p) for p in frames_dirs]
    raise InputError(path, "no frames found (not a dataset, SCARED, Hamlyn, C3VD or SimCol3D folder, "
                           "image folder or video)")


def open_sequences(paths: Path | list[Path] | tuple[Path, ...], *, frame_step: int = 1) -> list[FrameSequence]:
    """Open every input (folder or video) as frame sequences; see the module docstring for layouts.

    Raises:
        InputError: a missing input, an unknown layout, no frames, or files
            missing/inconsistent inside a layout (naming the path).
    """
    if isinstance(paths, (str, Path)):
        paths = [Path(paths)]
    out: list[FrameSequence] = []
    for p in paths:
        out.extend(s.subsample(frame_step) for s in _detect(Path(p)))
    return out
