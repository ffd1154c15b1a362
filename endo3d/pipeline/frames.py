"""The video front end of ``endo3d reconstruct VIDEO``: frames in, a :class:`Clip` out.

:func:`load_clip` turns a video file or a folder of images into the frames the
rest of the pipeline works on:

1. **Decode and select.** Frames are decoded in order; those with a time in
   ``[start_s, end_s)`` are kept, then every ``stride``-th of them, then at
   most ``max_frames`` (the first ones). ``Clip.index`` is each kept frame's
   position among all frames of the source, ``Clip.time_s`` its time in
   seconds: the stream's timestamp (``pts * time_base``) for a video,
   ``position / image_fps`` for images.
2. **Resize.** Each frame is resized as it is decoded, with FFmpeg's area
   averaging, to the working size of :func:`working_size`, so memory stays at
   ``N * 3 * H * W`` bytes of uint8 until the final float32 ``(N, 3, H, W)``.
3. **Field of view.** Endoscopes show black outside a circular aperture or a
   black border; :func:`detect_fov` finds it from the brightest moments of
   each pixel over the clip.
4. **Specular highlights.** :func:`detect_specular` marks bright, unsaturated
   pixels (light reflected by wet tissue), which break photometric losses.
5. **Instruments.** Optional user masks (a folder with one image per source
   frame, one static image, or a mask video) are selected like the frames and
   resized with nearest-neighbour sampling.

``Clip.valid`` combines the three masks: True where a pixel shows tissue that
photometric losses may use (the CONVENTIONS.md mask meaning).

Bad input (missing or unreadable files, empty selections, mismatched masks)
raises :class:`~endo3d.core.errors.InputError` naming the path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from endo3d.core.errors import InputError
from endo3d.gs.data import split
from endo3d.io.images import IMAGE_SUFFIXES, png_size, read_png, rgb_channels
from endo3d.io.video import TIME_EPS, VIDEO_SUFFIXES, probe_video, read_video

MIN_SIZE = 16  # smallest working height or width, pixels

# Field of view (see detect_fov).
_FOV_PERCENTILE = 0.9  # temporal percentile of luma per pixel
_FOV_DARK = 0.06  # sRGB luma below which a pixel is "black"
_FOV_ERODE = 0.015  # erosion radius as a fraction of the larger image side
_FOV_MIN_FRACTION = 0.2  # a smaller field of view means a dark video: keep everything
_FOV_MAX_FRAMES = 64  # frames (evenly spaced) used for the percentile

# Specular highlights (see detect_specular).
_SPECULAR_MAX_SATURATION = 0.25
_CHUNK = 32  # frames per chunk for per-pixel work on the whole clip

_LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 weights, applied to sRGB values (luma)
_ASPECT_TOLERANCE = 0.01  # instrument masks may differ in size, not in aspect ratio


@dataclass
class Clip:
    """Frames of a video or image folder at the working resolution.

    Attributes:
        rgb: float32 ``(N, 3, H, W)`` sRGB in [0, 1].
        fov: bool ``(1, H, W)``: True inside the endoscope's field of view.
        specular: bool ``(N, 1, H, W)``: True at specular highlights.
        instruments: bool ``(N, 1, H, W)``: True at instrument pixels (from
            user masks), or None.
        index: int64 ``(N,)``: frame numbers in the source (0-based position
            among all decoded frames / sorted images).
        time_s: float64 ``(N,)``: timestamps, seconds.
        fps: frame rate of the source (video: the stream's; images: the given one).
        source: the video file or image folder.
        source_size: ``(H, W)`` of the source frames, pixels.
    """

    rgb: torch.Tensor
    fov: torch.Tensor
    specular: torch.Tensor
    instruments: torch.Tensor | None
    index: np.ndarray
    time_s: np.ndarray
    fps: float
    source: Path
    source_size: tuple[int, int]

    @property
    def valid(self) -> torch.Tensor:
        """bool ``(N, 1, H, W)``: ``fov & ~specular & ~instruments``."""
        valid = self.fov.unsqueeze(0) & ~self.specular
        if self.instruments is not None:
            valid = valid & ~self.instruments
        return valid

    @property
    def height(self) -> int:
        return int(self.rgb.shape[2])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[3])

    def __len__(self) -> int:
        return int(self.rgb.shape[0])


# ---------------------------------------------------------------- sizes


def working_size(source_hw: tuple[int, int], width: int) -> tuple[int, int]:
    """``(H, W)`` of the working resolution for a working ``width`` in pixels.

    ``W = min(width, source W)`` (``width`` 0: the source width), rounded down
    to even; ``H = W * source H / source W`` rounded to the nearest even
    number. Both are at least :data:`MIN_SIZE` and never larger than the
    source (rounded down to even), so H.264 can encode them.

    Raises:
        ValueError: ``width`` is negative or in (0, MIN_SIZE), or the source
            is smaller than MIN_SIZE.
    """
    src_h, src_w = (int(v) for v in source_hw)
    if min(src_h, src_w) < MIN_SIZE:
        raise ValueError(f"source frames of {src_w}x{src_h} are smaller than {MIN_SIZE} pixels")
    if width < 0 or 0 < width < MIN_SIZE:
        raise ValueError(f"width must be 0 (source width) or >= {MIN_SIZE}, got {width}")
    w = src_w if width == 0 else min(int(width), src_w)
    w -= w % 2
    h = 2 * round(w * src_h / src_w / 2)
    h = max(MIN_SIZE, min(h, src_h - src_h % 2))
    return h, w


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    """A video file or an image folder, as probed (``files`` only for folders)."""

    path: Path
    frames: int
    height: int
    width: int
    fps: float
    files: tuple[Path, ...] = ()

    @property
    def is_video(self) -> bool:
        return not self.files


def _image_files(folder: Path) -> list[Path]:
    """Images of ``folder`` (suffixes :data:`IMAGE_SUFFIXES`, no hidden files), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of a PNG (from its header) or a JPEG (decoded by FFmpeg)."""
    if path.suffix.lower() == ".png":
        w, h = png_size(path)
        return h, w
    return _read_jpeg(path).shape[:2]


def _open_source(path: Path, image_fps: float) -> _Source:
    """Probe a video file or image folder; InputError for anything unusable."""
    if not path.exists():
        raise InputError(path, "missing")
    if path.is_dir():
        if not image_fps > 0:
            raise InputError(path, f"the image frame rate must be positive, got {image_fps}")
        files = _image_files(path)
        if not files:
            raise InputError(path, f"no images ({' '.join(IMAGE_SUFFIXES)}) in this folder")
        h, w = _image_size(files[0])
        source = _Source(path, len(files), h, w, float(image_fps), tuple(files))
    else:
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise InputError(path, f"not a video ({' '.join(VIDEO_SUFFIXES)}) or a folder of images")
        info = probe_video(path)
        if info.num_frames == 0:
            raise InputError(path, "the video has no frames")
        source = _Source(path, info.num_frames, info.height, info.width, info.fps)
    if min(source.height, source.width) < MIN_SIZE:
        raise InputError(path, f"frames of {source.width}x{source.height} are smaller than {MIN_SIZE} pixels")
    return source


def probe_clip(path: str | Path, *, image_fps: float = 25.0) -> tuple[int, int, int, float]:
    """``(frames, H, W, fps)`` of a video file or image folder, without decoding the frames.

    A video's frame count comes from its header (or a count of its packets);
    a folder's from its image files, its size from the first one, its rate is
    ``image_fps``.

    Raises:
        InputError: missing, unreadable, not a video or folder, no frames, or frames smaller than
            :data:`MIN_SIZE`.
    """
    source = _open_source(Path(path), image_fps)
    return source.frames, source.height, source.width, source.fps


# ---------------------------------------------------------------- decoding


def _read_jpeg(path: Path) -> np.ndarray:
    """A JPEG as uint8 ``(H, W, 3)`` RGB, decoded by FFmpeg."""
    import av

    if not path.is_file():
        raise InputError(path, "missing")
    try:
        with av.open(str(path)) as container:
            return next(container.decode(video=0)).to_ndarray(format="rgb24")
    except (av.error.FFmpegError, StopIteration, IndexError):
        raise InputError(path, "not a readable JPEG image") from None


def _read_image(path: Path) -> np.ndarray:
    """An image file as uint8 ``(H, W, 3)`` RGB: grey is repeated, alpha dropped, 16 bit rounded to 8."""
    if path.suffix.lower() != ".png":
        return _read_jpeg(path)
    a = read_png(path)
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return rgb_channels(a).copy()


def _resize_rgb(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` resized with FFmpeg's area averaging, as video frames are."""
    if rgb.shape[:2] == size_hw:
        return rgb
    import av

    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return frame.reformat(width=size_hw[1], height=size_hw[0], interpolation="AREA").to_ndarray(format="rgb24")


def _select_positions(times: np.ndarray, start_s: float, end_s: float | None, stride: int,
                      max_frames: int) -> np.ndarray:
    """Positions kept from frame ``times`` (s): those in [start_s, end_s), every stride-th, the first max_frames."""
    in_range = times >= start_s - TIME_EPS
    if end_s is not None:
        in_range &= times < end_s - TIME_EPS
    kept = np.flatnonzero(in_range)[::stride]
    return kept[:max_frames] if max_frames > 0 else kept


def _decode_images(source: _Source, positions: np.ndarray, size_hw: tuple[int, int]) -> list[np.ndarray]:
    """The images at ``positions``, uint8 ``(H, W, 3)`` at ``size_hw``; all must have the source size."""
    frames = []
    for position in positions:
        path = source.files[position]
        rgb = _read_image(path)
        if rgb.shape[:2] != (source.height, source.width):
            raise InputError(source.path, f"images differ in size: {source.files[0].name} is "
                                          f"{source.width}x{source.height}, {path.name} is "
                                          f"{rgb.shape[1]}x{rgb.shape[0]}")
        frames.append(_resize_rgb(rgb, size_hw))
    return frames


def _decode_video(source: _Source, start_s: float, end_s: float | None, stride: int, max_frames: int,
                  size_hw: tuple[int, int]) -> tuple[list[np.ndarray], list[int], list[float]]:
    """Selected frames of a video (resized while decoding), their indices and times (s)."""
    size = None if size_hw == (source.height, source.width) else (size_hw[1], size_hw[0])
    frames, index, times = [], [], []
    for frame in read_video(source.path, start_s=start_s, end_s=end_s, stride=stride,
                            max_frames=max_frames or None, size=size):
        frames.append(frame.rgb)
        index.append(frame.index)
        times.append(frame.time_s)
    return frames, index, times


def _to_float(frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` frames -> float32 ``(N, 3, H, W)`` in [0, 1]; the list is emptied as it goes."""
    h, w = frames[0].shape[:2]
    out = torch.empty((len(frames), 3, h, w), dtype=torch.float32)
    while frames:  # pop from the end so that each uint8 frame is freed once copied
        frame = frames.pop()
        out[len(frames)] = torch.from_numpy(frame).permute(2, 0, 1).float().div_(255.0)
    return out


def check_options(path: Path, start_s: float, end_s: float | None, stride: int, max_frames: int,
                  width: int) -> None:
    """InputError naming ``path`` for a frame selection :func:`load_clip` cannot make (see its arguments)."""
    if not (math.isfinite(start_s) and start_s >= 0):
        raise InputError(path, f"the start time must be >= 0 s, got {start_s}")
    if end_s is not None and not math.isfinite(end_s):
        raise InputError(path, f"the end time must be a number of seconds, got {end_s} (leave it out: to the end)")
    if end_s is not None and not end_s > start_s:
        raise InputError(path, f"zero-size crop: the time range [{start_s:g}, {end_s:g}) s is empty")
    if stride < 1:
        raise InputError(path, f"the frame stride must be >= 1, got {stride}")
    if max_frames < 0:
        raise InputError(path, f"the maximum frame count must be >= 0 (0: all), got {max_frames}")
    if width < 0 or 0 < width < MIN_SIZE:
        raise InputError(path, f"the working width must be 0 (source width) or >= {MIN_SIZE} pixels, got {width}")


def load_clip(path: str | Path, *, start_s: float = 0.0, end_s: float | None = None, stride: int = 1,
              max_frames: int = 0, width: int = 0, masks: Path | None = None, image_fps: float = 25.0,
              specular_threshold: float = 0.92, detect_fov_mask: bool = True) -> Clip:
    """Decode, select, resize and mask the frames of a video file or image folder.

    Args:
        path: a video file (:data:`VIDEO_SUFFIXES`) or a folder of images
            (:data:`IMAGE_SUFFIXES`, sorted by file name: zero-pad numbers).
        start_s, end_s: keep frames with time in ``[start_s, end_s)``, seconds
            (None: to the end).
        stride: then keep every ``stride``-th of those.
        max_frames: then keep the first ``max_frames`` (0: all).
        width: working width in pixels (0: the source's), see :func:`working_size`.
        masks: instrument masks, or None: a folder with one image per source
            frame (sorted by name), one image for all frames, or a video with
            as many frames as the source; see :func:`_load_instruments`.
        image_fps: frame rate of an image folder; frame i is at ``i / image_fps`` s.
        specular_threshold: see :func:`detect_specular` (>= 1 disables it).
        detect_fov_mask: find the field of view with :func:`detect_fov`;
            False: every pixel is inside.

    Raises:
        InputError: bad path, options, frames or masks; the message names the path.
    """
    path = Path(path)
    check_options(path, start_s, end_s, stride, max_frames, width)
    source = _open_source(path, image_fps)
    size_hw = working_size((source.height, source.width), width)
    if source.is_video:
        frames, index, times = _decode_video(source, start_s, end_s, stride, max_frames, size_hw)
    else:
        positions = _select_positions(np.arange(source.frames) / source.fps, start_s, end_s, stride, max_frames)
        frames = _decode_images(source, positions, size_hw)
        index, times = positions.tolist(), (positions / source.fps).tolist()
    if not frames:
        end = "the end" if end_s is None else f"{end_s:g} s"
        raise InputError(path, f"zero-size crop: no frames from {start_s:g} s to {end}; the source has "
                               f"{source.frames} frames at {source.fps:g} fps")
    rgb = _to_float(frames)
    index_array = np.asarray(index, dtype=np.int64)
    training = split(range(len(rgb)))[0]  # held-out frames shape nothing
    fov = detect_fov(rgb[training]) if detect_fov_mask else torch.ones((1,) + size_hw, dtype=torch.bool)
    instruments = None if masks is None else _load_instruments(Path(masks), source, index_array, size_hw)
    return Clip(rgb=rgb, fov=fov, specular=detect_specular(rgb, specular_threshold), instruments=instruments,
                index=index_array, time_s=np.asarray(times, dtype=np.float64), fps=source.fps, source=path,
                source_size=(source.height, source.width))


# ---------------------------------------------------------------- field of view and highlights


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``(N, 3, H, W)`` -> luma ``(N, H, W)``, Rec. 709 weights on the non-linear values."""
    weights = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("nchw,c->nhw", rgb, weights)


def _border_connected(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of bool ``(H, W)`` ``mask`` 8-connected to the image border through ``mask``.

    Morphological reconstruction: grow the mask's border pixels by 3x3 max
    pooling, limited to ``mask``, until nothing changes.
    """
    allowed = mask.float()[None, None]
    seed = torch.zeros_like(allowed)
    seed[..., 0, :] = allowed[..., 0, :]
    seed[..., -1, :] = allowed[..., -1, :]
    seed[..., :, 0] = allowed[..., :, 0]
    seed[..., :, -1] = allowed[..., :, -1]
    while True:
        before = seed
        for _ in range(8):  # check for convergence every 8 steps
            seed = F.max_pool2d(seed, 3, stride=1, padding=1) * allowed
        if torch.equal(seed, before):
            return seed[0, 0] > 0


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """bool ``(H, W)`` dilated by a disk of ``radius`` pixels (outside the image counts as False)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=mask.device)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius + 0.5).float()
    hits = F.conv2d(mask.float()[None, None], disk[None, None], padding=radius)
    return hits[0, 0] > 0.5


@torch.no_grad()
def detect_fov(rgb: torch.Tensor) -> torch.Tensor:
    """The endoscope's field of view: bool ``(1, H, W)`` from sRGB frames ``(N, 3, H, W)``.

    1. Per pixel, the 90th percentile over time of its luma (up to 64 evenly
       spaced frames): how bright it gets when lit, robust to a few
       highlights, so tissue that is dark for a while still counts as seen.
    2. Pixels whose percentile is below 0.06 are black. A fixed threshold,
       not Otsu: outside the aperture is sensor black plus coding noise
       (0.00-0.02; exactly 0 on the RViMLab laparoscopic clip), while lit
       tissue at its brightest moments is above 0.1; Otsu would split the
       tissue itself when there is no border.
    3. Only black pixels connected to the image border are outside: dark
       tissue or a lumen inside the aperture stays in (holes are filled).
    4. The outside is grown by a disk of radius 1.5 % of the larger image side
       (at least 1 pixel), to drop the aperture's dark, vignetted rim.

    No black border, or a field of view under 20 % of the image (a dark
    video), gives all True.
    """
    n, _, h, w = rgb.shape
    every = torch.linspace(0, n - 1, min(n, _FOV_MAX_FRAMES), device=rgb.device).round().long()
    luma = _luma(rgb[every])
    bright = luma.kthvalue(max(1, math.ceil(_FOV_PERCENTILE * len(every))), dim=0).values
    outside = _border_connected(bright < _FOV_DARK)
    everything = torch.ones((1, h, w), dtype=torch.bool, device=rgb.device)
    if not outside.any():
        return everything
    fov = ~_dilate(outside, max(1, round(_FOV_ERODE * max(h, w))))
    if fov.float().mean() < _FOV_MIN_FRACTION:
        return everything
    return fov[None]


@torch.no_grad()
def detect_specular(rgb: torch.Tensor, threshold: float = 0.92) -> torch.Tensor:
    """Specular highlights: bool ``(N, 1, H, W)`` from sRGB frames ``(N, 3, H, W)``.

    A highlight reflects the light source's white: bright, ``max(R, G, B) >=
    threshold``, and unsaturated, ``(max - min) / max < 0.25`` (bright red
    tissue is saturated). The result is dilated by one pixel (3x3) to cover
    the highlight's blurred edge. ``threshold >= 1`` disables it: all False.
    """
    n, _, h, w = rgb.shape
    out = torch.zeros((n, 1, h, w), dtype=torch.bool, device=rgb.device)
    if threshold >= 1:
        return out
    for first in range(0, n, _CHUNK):
        chunk = rgb[first:first + _CHUNK]
        high = chunk.amax(dim=1, keepdim=True)
        low = chunk.amin(dim=1, keepdim=True)
        highlight = (high >= threshold) & (high - low < _SPECULAR_MAX_SATURATION * high)
        out[first:first + _CHUNK] = F.max_pool2d(highlight.float(), 3, stride=1, padding=1) > 0
    return out


# ---------------------------------------------------------------- instrument masks


def _mask_from_image(path: Path) -> np.ndarray:
    """An instrument mask image as bool ``(H, W)``.

    PNG (lossless): any non-zero colour value is an instrument. JPEG (lossy):
    luma above 0.5, so that coding noise around black is not.
    """
    if path.suffix.lower() == ".png":
        a = read_png(path)
        if a.ndim == 3:
            a = a[..., :1] if a.shape[2] <= 2 else a[..., :3]
            return (a > 0).any(axis=2)
        return a > 0
    return _uint8_luma(_read_jpeg(path)) > 127.5


def _uint8_luma(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> float luma ``(H, W)`` in [0, 255]."""
    return rgb.astype(np.float32) @ np.asarray(_LUMA, dtype=np.float32)


def _mask_video_frames(path: Path, index: np.ndarray) -> list[np.ndarray]:
    """Frames ``index`` (sorted) of a mask video as bool ``(H, W)``: luma above 0.5 is an instrument."""
    wanted = set(index.tolist())
    frames = read_video(path)
    found = {}
    try:
        for frame in frames:
            if frame.index in wanted:
                found[frame.index] = _uint8_luma(frame.rgb) > 127.5
                if len(found) == len(wanted):
                    break
    finally:
        frames.close()  # type: ignore[attr-defined]  # read_video returns a generator
    missing = sorted(wanted - set(found))
    if missing:
        raise InputError(path, f"the mask video ends before frame {missing[0]}")
    return [found[i] for i in index.tolist()]


def _resize_mask(mask: np.ndarray, size_hw: tuple[int, int], source_hw: tuple[int, int],
                 path: Path) -> torch.Tensor:
    """bool ``(h, w)`` -> ``(H, W)``, nearest sampling; the aspect ratio must be the source's within 1 %."""
    h, w = mask.shape
    ratio = (h / w) / (source_hw[0] / source_hw[1])
    if abs(ratio - 1) > _ASPECT_TOLERANCE:
        raise InputError(path, f"mask of {w}x{h} does not have the aspect ratio of the "
                               f"{source_hw[1]}x{source_hw[0]} frames")
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None, None]
    return F.interpolate(tensor, size=size_hw, mode="nearest-exact")[0, 0] > 0


def _load_instruments(masks: Path, source: _Source, index: np.ndarray,
                      size_hw: tuple[int, int]) -> torch.Tensor:
    """Instrument masks for the kept frames ``index``: bool ``(N, 1, H, W)``.

    ``masks`` is one of:

    - a folder of images, one per source frame, sorted by name (the count must
      equal the source's frame count); PNG: non-zero is an instrument;
    - a single image: one static mask for every frame;
    - a video with as many frames as the source; luma > 0.5 is an instrument.

    Masks of another size are resized (nearest) if their aspect ratio matches.
    """
    source_hw = (source.height, source.width)
    if not masks.exists():
        raise InputError(masks, "missing")
    if masks.is_dir():
        files = _image_files(masks)
        if len(files) != source.frames:
            raise InputError(masks, f"{len(files)} mask images for {source.frames} source frames "
                                    f"(one per frame is needed)")
        frames = [_mask_from_image(files[i]) for i in index.tolist()]
        paths = [files[i] for i in index.tolist()]
    elif masks.suffix.lower() in IMAGE_SUFFIXES:
        static = _resize_mask(_mask_from_image(masks), size_hw, source_hw, masks)
        return static.expand(len(index), 1, *size_hw).clone()
    elif masks.suffix.lower() in VIDEO_SUFFIXES:
        count = probe_video(masks).num_frames
        if count != source.frames:
            raise InputError(masks, f"{count} mask frames for {source.frames} source frames")
        frames = _mask_video_frames(masks, index)
        paths = [masks] * len(index)
    else:
        raise InputError(masks, f"instrument masks must be a folder of images, an image "
                                f"({' '.join(IMAGE_SUFFIXES)}) or a video ({' '.join(VIDEO_SUFFIXES)})")
    return torch.stack([_resize_mask(m, size_hw, source_hw, p) for m, p in zip(frames, paths)])[:, None]
