"""Video probing, reading and writing with PyAV (FFmpeg).

Frames are uint8 RGB ``(H, W, 3)``. Times are seconds from the stream's
timestamps (``pts * time_base``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from endo3d.core.errors import InputError
from endo3d.core.fs import current_umask
from endo3d.io.images import _as_numpy



def _av() -> Any:
    """PyAV, imported on first use so that ``endo3d.io`` loads without FFmpeg's libraries."""
    import av

    return av


def _ffmpeg_errors() -> tuple[type[Exception], ...]:
    return (_av().error.FFmpegError, UnicodeDecodeError)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
"""File suffixes taken for videos where a path may be a video or a folder of images."""
TIME_EPS = 1e-6
"""A frame at time t is in ``[start_s, end_s)`` when ``t >= start_s - TIME_EPS`` and ``t < end_s - TIME_EPS``,
so that a start written as a decimal (0.28) matches a timestamp computed as pts * time_base (the video
pipeline applies the same rule to image folders)."""


def _reason(e: Exception) -> str:
    """FFmpeg's own words for an error, without the errno and file name."""
    return str(getattr(e, "strerror", None) or e)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` finds in a video file.

    Attributes:
        path: the file.
        width, height: frame size in pixels.
        fps: average frame rate of the stream.
        num_frames: frames in the stream (from its header, or counted).
        duration_s: stream duration in seconds.
    """

    path: Path
    width: int
    height: int
    fps: float
    num_frames: int
    duration_s: float


@dataclass
class VideoFrame:
    """A decoded frame.

    Attributes:
        index: number of the frame among all decoded frames from the file start.
        time_s: ``pts * time_base`` in seconds.
        rgb: uint8 ``(H, W, 3)``.
    """

    index: int
    time_s: float
    rgb: np.ndarray


def _open_video(path: Path) -> tuple[Any, Any]:
    """Open ``path`` and return (container, its first video stream)."""
    if not path.exists():
        raise InputError(path, "missing")
    if not path.is_file():
        raise InputError(path, "is not a file")
    try:
        container = _av().open(str(path))
    except _ffmpeg_errors() as e:
        raise InputError(path, f"not a readable video ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise InputError(path, "no video stream")
    return container, container.streams.video[0]


def _stream_fps(path: Path, stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise InputError(path, "the video stream has no frame rate")
    return float(rate)


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Size, frame rate, frame count and duration of the first video stream.

    The frame count comes from the stream header when it has one (MP4); else
    (e.g. MKV) the stream's packets are counted without decoding.

    Raises:
        InputError: the file is missing, unreadable, or has no video stream.
    """
    path = Path(path)
    container, stream = _open_video(path)
    try:
        fps = _stream_fps(path, stream)
        num_frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = num_frames / fps
        return VideoInfo(path, stream.width, stream.height, fps, int(num_frames), duration)
    except _ffmpeg_errors() as e:
        raise InputError(path, f"not a readable video ({_reason(e)})") from None
    finally:
        container.close()


def read_video(
    path: str | os.PathLike[str],
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
) -> Iterator[VideoFrame]:
    """Decode frames of the first video stream.

    The file is opened (and checked) when this is called; frames are decoded
    as the iterator is consumed, always from the file start, so that
    ``index`` counts every frame before ``start_s`` too.

    Args:
        path: video file.
        start_s: first time to keep, seconds (inclusive).
        end_s: stop before this time, seconds (exclusive); None = to the end.
        stride: keep every ``stride``-th frame of those in [start_s, end_s).
        max_frames: stop after this many frames; None = no limit.
        size: ``(width, height)`` to resize to with area averaging
            (FFmpeg swscale ``AREA``); None = original size.

    Returns:
        An iterator of :class:`VideoFrame`.

    Raises:
        InputError: the file is missing, unreadable, has no video stream, or
            fails to decode (raised while iterating).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (width, height) with positive values, got {size}")
    path = Path(path)
    container, stream = _open_video(path)
    fps = _stream_fps(path, stream)
    return _decode(path, container, stream, fps, start_s, end_s, stride, max_frames, size)


def _decode(path: Path, container: Any, stream: Any, fps: float, start_s: float, end_s: float | None,
            stride: int, max_frames: int | None, size: tuple[int, int] | None) -> Iterator[VideoFrame]:
    resize = {} if size is None else {"width": int(size[0]), "height": int(size[1]), "interpolation": "AREA"}
    stream.thread_type = "AUTO"
    in_range = 0  # frames seen in [start_s, end_s)
    yielded = 0
    try:
        if max_frames == 0:
            return
        for index, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else index / fps
            if end_s is not None and t >= end_s - TIME_EPS:
                return
            if t < start_s - TIME_EPS:
                continue
            in_range += 1
            if (in_range - 1) % stride == 0:
                yield VideoFrame(index, float(t), frame.to_ndarray(format="rgb24", **resize))
                yielded += 1
                if yielded == max_frames:
                    return
    except _ffmpeg_errors() as e:
        raise InputError(path, f"decoding failed ({_reason(e)})") from None
    finally:
        container.close()


def _encoder() -> str:
    """``"libx264"`` when this FFmpeg build has it, else ``"mpeg4"``."""
    try:
        _av().codec.Codec("libx264", "w")
    except _av().codec.codec.UnknownCodecError:
        return "mpeg4"
    return "libx264"


class VideoWriter:
    """Write uint8 RGB frames to a video file, atomically.

    H.264 (libx264, ``crf``) in yuv420p, or MPEG-4 part 2 when libx264 is
    missing (``crf`` then maps to a fixed quantiser ``round(crf / 5)``, 1..31).
    Frames of odd width or height are padded to even by repeating the last
    column/row (yuv420p needs even sizes). The file is written beside ``path``
    under a temporary name and renamed on a clean exit; on an exception it is
    deleted. The container format follows the suffix of ``path`` (.mp4, .mkv).

    Example:
        >>> with VideoWriter("preview.mp4", fps=30.0) as v:   # doctest: +SKIP
        ...     for rgb in frames:
        ...         v.write(rgb)

    Args:
        path: output file.
        fps: frames per second.
        crf: x264 constant rate factor (0 lossless .. 51; 23 default).
    """

    def __init__(self, path: str | os.PathLike[str], fps: float, *, crf: int = 23) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.rate = Fraction(fps).limit_denominator(1001)
        self.crf = int(crf)
        self.num_frames = 0
        self._tmp: Path | None = None
        self._container: Any = None
        self._stream: Any = None
        self._shape: tuple[int, int] | None = None

    def __enter__(self) -> "VideoWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.tmp-", suffix=self.path.suffix, dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(name)
        self._tmp.chmod(0o666 & ~current_umask())  # mkstemp makes 0600
        try:
            self._container = _av().open(name, "w")
        except (ValueError, *_ffmpeg_errors()) as e:
            self._tmp.unlink()
            raise InputError(self.path, f"cannot write a video with this suffix ({_reason(e)})") from None
        return self

    def _add_stream(self, height: int, width: int) -> None:
        codec = _encoder()
        stream = self._container.add_stream(codec, rate=self.rate)
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(self.crf)}
        else:
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = int(np.clip(round(self.crf / 5), 1, 31)) * 118  # FF_QP2LAMBDA
        self._stream = stream
        self._shape = (height, width)

    def write(self, rgb: Any) -> None:
        """Append one frame: uint8 ``(H, W, 3)``, the same size every time."""
        if self._container is None:
            raise RuntimeError("VideoWriter.write is called outside its `with` block")
        a = _as_numpy(rgb)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"video frames must be uint8 (H, W, 3), got {a.dtype} {a.shape}")
        if self._stream is None:
            self._add_stream(a.shape[0], a.shape[1])
        if a.shape[:2] != self._shape:
            raise ValueError(f"frame {self.num_frames} is {a.shape[1]}x{a.shape[0]}, "
                             f"earlier frames are {self._shape[1]}x{self._shape[0]}")
        a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)), mode="edge")
        frame = _av().VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")
        frame.pts = self.num_frames
        frame.time_base = 1 / self.rate
        self._container.mux(self._stream.encode(frame))
        self.num_frames += 1

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        tmp, container, self._container = self._tmp, self._container, None
        keep = exc_type is None and self.num_frames > 0
        try:
            if keep:
                container.mux(self._stream.encode(None))
            container.close()
            if keep:
                os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)  # gone already after the rename
        if exc_type is None and not keep:
            raise ValueError(f"{self.path}: no frames were written")
