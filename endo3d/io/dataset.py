"""The ``endo3d/v1`` dataset: reading, validation and writing.

The on-disk layout and ``meta.json`` keys are fixed by CONVENTIONS.md
("Dataset on disk"). Every reader (this one, :mod:`endo3d.io.endonerf`)
returns a :class:`Dataset` whose :meth:`Dataset.frame` gives the same
:class:`Frame`: tensors in the in-memory layout (channel-first float32),
millimetres, OpenCV ``c2w``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from endo3d.core.errors import InputError
from endo3d.core.fs import atomic_output_dir
from endo3d.geometry.camera import Camera
from endo3d.geometry.se3 import pose_problems
from endo3d.io.images import (
    _as_numpy,
    decode_depth,
    decode_flow,
    decode_normals,
    encode_depth,
    encode_flow,
    encode_normals,
    png_info,
    read_png,
    read_rgb,
    rgb_to_uint8,
    write_png,
)

FORMAT = "endo3d/v1"
CHANNELS = ("rgb", "depth", "normal", "flow", "mask")
# The top-level and per-frame keys that CONVENTIONS.md defines; others are
# kept in ``extra`` and written back unchanged.
_REQUIRED_KEYS = ("format", "units", "width", "height", "fps", "depth_scale_mm", "camera", "frames")
_TOP_KEYS = (*_REQUIRED_KEYS, "lights", "source", "mesh")
_FRAME_KEYS = ("index", "time", "c2w", *CHANNELS, "K")
# What each channel's PNG holds: (dtype, channels).
_PNG_KIND: dict[str, tuple[type, int]] = {
    "rgb": (np.uint8, 3), "depth": (np.uint16, 1), "normal": (np.uint16, 3),
    "flow": (np.uint16, 3), "mask": (np.uint8, 1),
}


@dataclass
class Frame:
    """One frame of a dataset, in memory.

    Attributes:
        index: frame number, 0..N-1 in time order.
        time: timestamp in seconds.
        c2w: float64 ``(4, 4)`` camera-to-world, OpenCV camera frame, mm.
        K: float64 ``(3, 3)`` intrinsics in pixels (the frame's override or
            the dataset camera's).
        rgb: float32 ``(3, H, W)`` sRGB in [0, 1].
        depth: float32 ``(1, H, W)`` z-depth in mm, 0 = invalid; or None.
        normal: float32 ``(3, H, W)`` camera-frame normals, zeros where
            invalid; or None.
        flow: float32 ``(2, H, W)`` forward flow to frame ``index + 1`` in
            pixels (du, dv), zeros where invalid; or None.
        flow_valid: bool ``(1, H, W)``; None exactly when ``flow`` is.
        mask: uint8 ``(1, H, W)`` labels: 0 tissue, 1..254 instruments,
            255 invalid; or None.
        extra: the frame's ``meta.json`` keys that this reader does not know.
    """

    index: int
    time: float
    c2w: np.ndarray
    K: np.ndarray
    rgb: torch.Tensor
    depth: torch.Tensor | None = None
    normal: torch.Tensor | None = None
    flow: torch.Tensor | None = None
    flow_valid: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> torch.Tensor:
        """bool ``(1, H, W)``: tissue pixels (``mask == 0``); all True without a mask."""
        if self.mask is None:
            return torch.ones((1,) + tuple(self.rgb.shape[1:]), dtype=torch.bool)
        return self.mask == 0


@dataclass
class FrameRecord:
    """One entry of ``meta.json["frames"]``.

    Attributes:
        index: frame number.
        time: seconds.
        c2w: float64 ``(4, 4)``.
        files: PNG paths relative to the dataset folder by channel
            (``"rgb"`` always; ``"depth"``, ``"normal"``, ``"flow"``, ``"mask"``
            when present), in :data:`CHANNELS` order.
        K: float64 ``(3, 3)`` per-frame override, or None.
        extra: other keys of the entry, written back unchanged.
    """

    index: int
    time: float
    c2w: np.ndarray
    files: dict[str, str]
    K: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``meta.json`` entry: index, time, c2w, file paths, K, extra keys."""
        out: dict[str, Any] = {"index": self.index, "time": self.time, "c2w": self.c2w.tolist()}
        out.update((c, self.files[c]) for c in CHANNELS if c in self.files)
        if self.K is not None:
            out["K"] = self.K.tolist()
        out.update(self.extra)
        return out


@dataclass
class DatasetMeta:
    """The contents of ``meta.json`` (CONVENTIONS.md).

    Attributes:
        width, height: image size in pixels.
        fps: frames per second.
        depth_scale_mm: mm per unit of the depth PNGs.
        camera: the intrinsic camera (its size is ``width`` x ``height``).
        frames: one record per frame, in index order.
        lights: light descriptions (dicts as in CONVENTIONS.md).
        source: what produced the data.
        mesh: path of the t = 0 tissue mesh (PLY, world mm), or None.
        extra: top-level keys this reader does not know, written back unchanged.
    """

    width: int
    height: int
    fps: float
    depth_scale_mm: float
    camera: Camera
    frames: list[FrameRecord]
    lights: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    mesh: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``meta.json`` object, keys in CONVENTIONS.md order, extras last."""
        out: dict[str, Any] = {
            "format": FORMAT, "units": "mm", "width": self.width, "height": self.height,
            "fps": self.fps, "depth_scale_mm": self.depth_scale_mm,
            "camera": self.camera.to_json(), "frames": [f.to_json() for f in self.frames],
            "lights": self.lights, "source": self.source,
        }
        if self.mesh is not None:
            out["mesh"] = self.mesh
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: Any, path: str | os.PathLike[str]) -> "DatasetMeta":
        """Parse a ``meta.json`` object; ``path`` names it in errors.

        Checks types and required keys only; :meth:`problems` checks values.

        Raises:
            InputError: wrong ``format``/``units``, a missing key or a value of
                the wrong type.
        """
        p = _Parser(path)
        if not isinstance(obj, dict):
            raise InputError(path, "is not a JSON object")
        for key in _REQUIRED_KEYS:
            if key not in obj:
                raise InputError(path, f"missing key {key!r}")
        if obj["format"] != FORMAT:
            raise InputError(path, f"not an {FORMAT} dataset (format is {obj['format']!r})")
        if obj["units"] != "mm":
            raise InputError(path, f"units must be 'mm', got {obj['units']!r}")
        width, height = p.integer(obj["width"], "width"), p.integer(obj["height"], "height")
        block = obj["camera"]
        if not isinstance(block, dict) or "K" not in block:
            raise InputError(path, "camera must be an object with a 'K' matrix")
        camera = Camera(str(block.get("model", "pinhole")), width, height,
                        p.matrix(block["K"], 3, "camera K"), p.numbers(block.get("dist", []), "camera dist"))
        if not isinstance(obj["frames"], list):
            raise InputError(path, "frames must be a list")
        frames = [p.frame(entry, i) for i, entry in enumerate(obj["frames"])]
        lights = obj.get("lights", [])
        if not isinstance(lights, list) or not all(isinstance(x, dict) for x in lights):
            raise InputError(path, "lights must be a list of objects")
        source = obj.get("source", {})
        if not isinstance(source, dict):
            raise InputError(path, "source must be an object")
        mesh = obj.get("mesh")
        if mesh is not None and not isinstance(mesh, str):
            raise InputError(path, "mesh must be a path string")
        return cls(width, height, p.number(obj["fps"], "fps"), p.number(obj["depth_scale_mm"], "depth_scale_mm"),
                   camera, frames, lights, source, mesh,
                   {k: v for k, v in obj.items() if k not in _TOP_KEYS})

    def problems(self) -> list[str]:
        """What is invalid in the values, as short phrases; empty when valid.

        Checks: positive fps and depth scale; the camera and per-frame ``K``
        (:meth:`Camera.problems`); at least one frame; frames numbered 0..N-1
        in order with increasing finite times; rigid finite poses
        (:func:`endo3d.geometry.se3.pose_problems`, tolerance 1e-4).
        """
        out = self._header_problems()
        if not self.frames:
            out.append("no frames")
        previous = -math.inf
        for i, f in enumerate(self.frames):
            if f.index != i:
                out.append(f"frame at position {i} has index {f.index}: frames must be numbered 0..N-1 in order")
                break
            if not math.isfinite(f.time):
                out.append(f"frame {i} time is not finite")
            elif f.time <= previous:
                out.append(f"frame {i} time {f.time} s is not after frame {i - 1} ({previous} s)")
            previous = f.time
            pose_problem = pose_problems(torch.from_numpy(f.c2w))
            if pose_problem is not None:
                out.append(f"frame {i} c2w {pose_problem}")
            if f.K is not None:
                frame_camera = Camera(self.camera.model, self.width, self.height, f.K, self.camera.dist)
                out += [f"frame {i} K: {q}" for q in frame_camera.problems()]
        return out

    def _header_problems(self) -> list[str]:
        """The checks of :meth:`problems` that do not involve frames."""
        out = []
        if not (math.isfinite(self.fps) and self.fps > 0):
            out.append(f"fps must be positive, got {self.fps}")
        if not (math.isfinite(self.depth_scale_mm) and self.depth_scale_mm > 0):
            out.append(f"depth_scale_mm must be positive, got {self.depth_scale_mm}")
        out += [f"camera: {q}" for q in self.camera.problems()]
        return out


class _Parser:
    """Type checks for ``meta.json`` values; errors name the file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path

    def fail(self, problem: str) -> InputError:
        return InputError(self.path, problem)

    def number(self, value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{what} must be a number, got {value!r}")
        return float(value)

    def integer(self, value: Any, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{what} must be an integer, got {value!r}")
        return value

    def numbers(self, value: Any, what: str) -> tuple[float, ...]:
        if not isinstance(value, list):
            raise self.fail(f"{what} must be a list of numbers")
        return tuple(self.number(v, what) for v in value)

    def matrix(self, value: Any, n: int, what: str) -> np.ndarray:
        if not (isinstance(value, list) and len(value) == n
                and all(isinstance(row, list) and len(row) == n for row in value)):
            raise self.fail(f"{what} must be a {n}x{n} list of numbers")
        return np.array([[self.number(v, what) for v in row] for row in value], dtype=np.float64)

    def frame(self, entry: Any, i: int) -> FrameRecord:
        if not isinstance(entry, dict):
            raise self.fail(f"frame {i} is not an object")
        for key in ("index", "time", "c2w", "rgb"):
            if key not in entry:
                raise self.fail(f"frame {i}: missing key {key!r}")
        if not isinstance(entry["rgb"], str):
            raise self.fail(f"frame {i} rgb must be a path string")
        files = {}
        for c in CHANNELS:
            if entry.get(c) is not None:
                if not isinstance(entry[c], str):
                    raise self.fail(f"frame {i} {c} must be a path string")
                files[c] = entry[c]
        K = entry.get("K")
        return FrameRecord(
            self.integer(entry["index"], f"frame {i} index"), self.number(entry["time"], f"frame {i} time"),
            self.matrix(entry["c2w"], 4, f"frame {i} c2w"), files,
            None if K is None else self.matrix(K, 3, f"frame {i} K"),
            {k: v for k, v in entry.items() if k not in _FRAME_KEYS},
        )


def _file_problems(root: Path, meta: DatasetMeta) -> Iterator[tuple[Path, str]]:
    """(file, problem) for each frame file that is missing, or not the PNG it should be."""
    for f in meta.frames:
        for channel, rel in f.files.items():
            path = root / rel
            if not path.is_file():
                yield path, "missing"
                continue
            try:
                info = png_info(path)
            except InputError as e:
                yield path, e.problem
                continue
            if (info.width, info.height) != (meta.width, meta.height):
                yield path, (f"size {info.width}x{info.height}, but meta.json says "
                             f"{meta.width}x{meta.height}")
            dtype, channels = _PNG_KIND[channel]
            if (info.dtype, info.channels) != (dtype, channels):
                yield path, (f"{channel} must be a {_describe(dtype, channels)} PNG, "
                             f"found {_describe(info.dtype, info.channels)}")
    if meta.mesh is not None and not (root / meta.mesh).is_file():
        yield root / meta.mesh, "missing"


def _describe(dtype: type, channels: int) -> str:
    return f"{8 if dtype == np.uint8 else 16}-bit {channels}-channel"


def _read_kind(path: Path, dtype: type, channels: int) -> np.ndarray:
    """:func:`read_png`, checking the decoded dtype and channel count."""
    a = read_png(path)
    got = a.shape[2] if a.ndim == 3 else 1
    if a.dtype != dtype or got != channels:
        raise InputError(path, f"expected a {_describe(dtype, channels)} PNG, found {_describe(a.dtype.type, got)}")
    return a


class Dataset:
    """A validated dataset whose frames are read from disk on demand.

    Attributes:
        path: the dataset folder.
        meta: its :class:`DatasetMeta` (for other formats, the equivalent).
        format: ``"endo3d/v1"``; readers of other formats set their own.
    """

    format = FORMAT

    def __init__(self, path: Path, meta: DatasetMeta) -> None:
        self.path = path
        self.meta = meta

    @property
    def camera(self) -> Camera:
        """The intrinsic camera (per-frame overrides are in :attr:`Frame.K`)."""
        return self.meta.camera

    def __len__(self) -> int:
        return len(self.meta.frames)

    def __iter__(self) -> Iterator[Frame]:
        return (self.frame(i) for i in range(len(self)))

    @property
    def poses(self) -> np.ndarray:
        """float64 ``(N, 4, 4)`` camera-to-world matrices."""
        return np.stack([f.c2w for f in self.meta.frames])

    @property
    def times(self) -> np.ndarray:
        """float64 ``(N,)`` timestamps in seconds."""
        return np.array([f.time for f in self.meta.frames], dtype=np.float64)

    def has(self, channel: str) -> bool:
        """Whether every frame has ``channel`` (``"flow"``: every frame but the last may lack it).

        ``channel`` is ``"depth"``, ``"normal"``, ``"flow"`` or ``"mask"``.
        """
        if channel not in CHANNELS[1:]:
            raise ValueError(f"unknown channel {channel!r}; one of {CHANNELS[1:]}")
        frames = self.meta.frames
        needed = frames[:-1] if channel == "flow" else frames
        return any(channel in f.files for f in frames) and all(channel in f.files for f in needed)

    def frame(self, i: int) -> Frame:
        """Read frame ``i`` (0 <= i < N) from disk."""
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range (0..{len(self) - 1})")
        rec = self.meta.frames[i]
        file = {c: self.path / rel for c, rel in rec.files.items()}
        out = Frame(
            index=rec.index, time=rec.time, c2w=rec.c2w.copy(),
            K=(self.camera.K if rec.K is None else rec.K).copy(),
            rgb=torch.from_numpy(read_rgb(file["rgb"])), extra=dict(rec.extra),
        )
        if "depth" in file:
            out.depth = torch.from_numpy(self._read_depth(file["depth"]))[None]
        if "normal" in file:
            n, _ = decode_normals(_read_kind(file["normal"], np.uint16, 3))
            out.normal = torch.from_numpy(np.ascontiguousarray(n.transpose(2, 0, 1)))
        if "flow" in file:
            flow, valid = decode_flow(_read_kind(file["flow"], np.uint16, 3))
            out.flow = torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1)))
            out.flow_valid = torch.from_numpy(valid)[None]
        if "mask" in file:
            out.mask = torch.from_numpy(self._read_mask(file["mask"]))[None]
        return out

    def _read_depth(self, path: Path) -> np.ndarray:
        """float32 ``(H, W)`` depth in mm from a depth PNG."""
        return decode_depth(_read_kind(path, np.uint16, 1), self.meta.depth_scale_mm)

    def _read_mask(self, path: Path) -> np.ndarray:
        """uint8 ``(H, W)`` labels from a mask PNG."""
        return _read_kind(path, np.uint8, 1)


def read_meta(path: str | os.PathLike[str]) -> DatasetMeta:
    """Read and validate ``meta.json`` of the dataset folder ``path`` (files unchecked).

    Raises:
        InputError: naming ``meta.json``: missing, not JSON, or invalid.
    """
    root = Path(path)
    meta_path = root / "meta.json"
    if not root.is_dir():
        raise InputError(root, "missing" if not root.exists() else "is not a folder")
    if not meta_path.is_file():
        raise InputError(meta_path, "missing")
    try:
        obj = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(meta_path, f"not valid JSON ({e})") from None
    meta = DatasetMeta.from_json(obj, meta_path)
    problems = meta.problems()
    if problems:
        raise InputError(meta_path, problems[0])
    return meta


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Open an ``endo3d/v1`` dataset folder and validate it.

    Validation reads ``meta.json`` and the PNG headers (not the pixels) of
    every frame file: see :meth:`DatasetMeta.problems` and the checks of
    missing files, size (against ``width`` x ``height``) and PNG kind
    (rgb 8-bit x 3, depth 16-bit x 1, normal and flow 16-bit x 3, mask 8-bit x 1).

    Raises:
        InputError: the first problem found, naming the offending file.
    """
    root = Path(path)
    meta = read_meta(root)
    for file, problem in _file_problems(root, meta):
        raise InputError(file, problem)
    return Dataset(root, meta)


def _hw(a: Any, what: str, trailing: tuple[int, ...], dtype: Any = None) -> np.ndarray:
    """``a`` as numpy with shape ``(H, W) + trailing`` checked (and dtype, if given)."""
    x = _as_numpy(a)
    if x.ndim != 2 + len(trailing) or x.shape[2:] != trailing:
        raise ValueError(f"{what} must have shape (H, W{''.join(f', {t}' for t in trailing)}), got {x.shape}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{what} must be {np.dtype(dtype).name}, got {x.dtype}")
    return x


def write_frame_files(
    root: str | os.PathLike[str],
    index: int,
    *,
    rgb: Any,
    depth: Any = None,
    depth_scale_mm: float = 0.01,
    normal: Any = None,
    normal_valid: Any = None,
    flow: Any = None,
    flow_valid: Any = None,
    mask: Any = None,
    extra_images: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write one frame's PNGs under ``root`` as ``<channel>/<index:06d>.png``.

    Safe to call from worker processes (it touches only its own files and
    creates folders with ``exist_ok``). Arrays are numpy or CPU tensors.

    Args:
        root: the dataset folder (e.g. :attr:`DatasetWriter.root`).
        index: frame number.
        rgb: float ``(3, H, W)`` in [0, 1] or uint8 ``(H, W, 3)``, sRGB.
        depth: float ``(H, W)`` z-depth in mm (<= 0 or non-finite = invalid).
        depth_scale_mm: mm per unit of the depth PNG.
        normal: float ``(H, W, 3)`` camera-frame normals.
        normal_valid: bool ``(H, W)``; None = finite non-zero normals.
        flow: float ``(H, W, 2)`` forward flow in pixels.
        flow_valid: bool ``(H, W)``; None = finite flow.
        mask: uint8 ``(H, W)`` labels (0 tissue, 1..254 tools, 255 invalid).
        extra_images: folder name -> uint8 or uint16 ``(H, W)`` or
            ``(H, W, C)``, written to ``<name>/<index:06d>.png``.

    Returns:
        Relative paths (posix) by key: ``"rgb"``, and each channel or extra
        image written.
    """
    root = Path(root)
    name = f"{index:06d}.png"
    rgb8 = rgb_to_uint8(rgb)
    hw = rgb8.shape[:2]
    images: dict[str, np.ndarray] = {"rgb": rgb8}
    if depth is not None:
        images["depth"] = encode_depth(_hw(depth, "depth", ()), depth_scale_mm)
    if normal is not None:
        images["normal"] = encode_normals(_hw(normal, "normal", (3,)), normal_valid)
    if flow is not None:
        images["flow"] = encode_flow(_hw(flow, "flow", (2,)), flow_valid)
    if mask is not None:
        images["mask"] = _hw(mask, "mask", (), np.uint8)
    for key, image in (extra_images or {}).items():
        if key in CHANNELS or not key or key != Path(key).name or key.startswith("."):
            raise ValueError(f"extra image name {key!r} must be a plain folder name other than {CHANNELS}")
        images[key] = _as_numpy(image)
    out = {}
    for key, image in images.items():
        if image.shape[:2] != hw:
            raise ValueError(f"{key} is {image.shape[1]}x{image.shape[0]}, rgb is {hw[1]}x{hw[0]}")
        (root / key).mkdir(exist_ok=True)
        noisy = key in ("rgb", "normal") or image.dtype == np.uint8
        write_png(root / key / name, image, strategy="rle" if noisy else "default")
        out[key] = f"{key}/{name}"
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class DatasetWriter:
    """Write an ``endo3d/v1`` dataset atomically.

    Use as a context manager. Inside, :attr:`root` is a temporary folder
    beside ``out_dir``; frame files go there (:meth:`write_frame`, or
    :func:`write_frame_files` in worker processes followed by
    :meth:`add_frame`). On a clean exit ``meta.json`` is written (frames
    sorted by index; the dataset is validated as :func:`read_dataset` would)
    and the folder is renamed to ``out_dir``; on an exception nothing is left.
    Only the small per-frame records are held in memory.

    Example:
        >>> with DatasetWriter(out, camera=cam, fps=30.0) as w:   # doctest: +SKIP
        ...     for i in range(n):
        ...         w.write_frame(i, i / 30.0, c2w[i], rgb=rgb[i], depth=depth[i])

    Args:
        out_dir: the final dataset folder.
        camera: the intrinsic camera; its size is the image size.
        fps: frames per second.
        depth_scale_mm: mm per unit of the depth PNGs.
        lights: ``meta.json["lights"]`` entries.
        source: ``meta.json["source"]``.
        extra: further top-level keys (not those of CONVENTIONS.md).
        overwrite: replace an existing ``out_dir``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        camera: Camera,
        fps: float,
        depth_scale_mm: float = 0.01,
        lights: Sequence[dict[str, Any]] = (),
        source: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.overwrite = overwrite
        clash = set(extra or {}) & set(_TOP_KEYS)
        if clash:
            raise ValueError(f"extra keys {sorted(clash)} are meta.json keys of CONVENTIONS.md")
        self._meta = DatasetMeta(camera.width, camera.height, float(fps), float(depth_scale_mm), camera, [],
                                 [dict(x) for x in lights], dict(source or {}), None, dict(extra or {}))
        problems = self._meta._header_problems()
        if problems:
            raise ValueError(f"{self.out_dir}: {problems[0]}")
        self._records: dict[int, FrameRecord] = {}
        self._context: Any = None
        self.root: Path | None = None

    def __enter__(self) -> "DatasetWriter":
        self._context = atomic_output_dir(self.out_dir, self.overwrite)
        self.root = self._context.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as e:
                self._context.__exit__(type(e), e, e.__traceback__)
                raise
        return bool(self._context.__exit__(exc_type, exc, tb))

    def _require_root(self) -> Path:
        if self.root is None:
            raise RuntimeError("DatasetWriter is used outside its `with` block")
        return self.root

    def add_frame(self, index: int, time: float, c2w: Any, files: dict[str, str], K: Any = None,
                  **extra_keys: Any) -> None:
        """Record a frame whose files are already under :attr:`root`.

        Args:
            index: frame number (each once; 0..N-1 in time order by the end).
            time: seconds.
            c2w: ``(4, 4)`` rigid camera-to-world, mm.
            files: relative paths by key as :func:`write_frame_files` returns;
                keys other than the channels are stored as extra frame keys.
            K: optional ``(3, 3)`` per-frame intrinsics.
            **extra_keys: further JSON-serialisable frame keys.
        """
        self._require_root()
        index = int(index)
        if index < 0 or index in self._records:
            raise ValueError(f"frame index {index} is negative or already added")
        if "rgb" not in files:
            raise ValueError(f"frame {index}: files must include 'rgb'")
        pose = np.array(_as_numpy(c2w), dtype=np.float64)
        if pose.shape != (4, 4):
            raise ValueError(f"frame {index} c2w must be 4x4, got shape {pose.shape}")
        pose_problem = pose_problems(torch.from_numpy(pose))
        problems = [] if pose_problem is None else [f"c2w {pose_problem}"]
        Kmat = None
        if K is not None:
            Kmat = np.array(_as_numpy(K), dtype=np.float64).reshape(3, 3)
            cam = self._meta.camera
            problems += [f"K: {q}" for q in Camera(cam.model, cam.width, cam.height, Kmat, cam.dist).problems()]
        other = {k: v for k, v in files.items() if k not in CHANNELS}
        clash = sorted((set(other) | set(extra_keys)) & set(_FRAME_KEYS) | set(other) & set(extra_keys))
        if clash:
            problems.append(f"keys {clash} clash with frame keys or file keys")
        if problems:
            raise ValueError(f"frame {index} {problems[0]}")
        extra = {**other, **extra_keys}
        json.dumps(extra, default=_json_default, allow_nan=False)
        self._records[index] = FrameRecord(index, float(time), pose,
                                           {c: files[c] for c in CHANNELS if c in files}, Kmat, extra)

    def write_frame(self, index: int, time: float, c2w: Any, *, rgb: Any, depth: Any = None, normal: Any = None,
                    normal_valid: Any = None, flow: Any = None, flow_valid: Any = None, mask: Any = None,
                    extra_images: dict[str, Any] | None = None, K: Any = None, **extra_keys: Any) -> None:
        """:func:`write_frame_files` into :attr:`root`, then :meth:`add_frame`."""
        files = write_frame_files(
            self._require_root(), index, rgb=rgb, depth=depth, depth_scale_mm=self._meta.depth_scale_mm,
            normal=normal, normal_valid=normal_valid, flow=flow, flow_valid=flow_valid, mask=mask,
            extra_images=extra_images,
        )
        self.add_frame(index, time, c2w, files, K=K, **extra_keys)

    def set_mesh(self, relpath: str) -> None:
        """Record the tissue mesh, a PLY file at ``relpath`` under :attr:`root`."""
        self._require_root()
        self._meta.mesh = str(relpath)

    def _finish(self) -> None:
        root = self._require_root()
        meta = self._meta
        meta.frames = [self._records[i] for i in sorted(self._records)]
        problems = meta.problems() + [f"{os.path.relpath(p, root)}: {q}" for p, q in _file_problems(root, meta)]
        if problems:
            raise ValueError(f"{self.out_dir}: dataset not written: {problems[0]}")
        text = json.dumps(meta.to_json(), indent=1, allow_nan=False, default=_json_default)
        (root / "meta.json").write_text(text + "\n", encoding="utf-8")


def is_test_frame(index: int) -> bool:
    """The held-out rule of every evaluation (CONVENTIONS.md, as EndoGaussian / Deform3DGS): frame ``index``
    is a test frame when ``(index - 1) % 8 == 0`` (frames 1, 9, 17, ...)."""
    return (index - 1) % 8 == 0
