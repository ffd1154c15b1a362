"""PNG reading and writing, and the on-disk encodings of depth, normals and flow.

The encodings are those of the ``endo3d/v1`` dataset format (CONVENTIONS.md):

- depth: uint16, ``depth_mm = value * scale_mm``, 0 = invalid;
- normals: uint16 x 3, ``n = value / 65535 * 2 - 1``, (0, 0, 0) = invalid;
- flow: KITTI, uint16 x 3 (R = u, G = v, B = valid), ``flow = (value - 2**15) / 64``.

Arrays here are numpy, channel-last ``(H, W, C)`` as stored on disk, except
:func:`read_rgb`, which returns the in-memory layout ``(3, H, W)`` float32.

PNG files go through Open3D (``open3d.t.io``), which uses libpng's simplified
API: it reads and writes uint8 and uint16 with 1 or 3 channels, unlike Pillow,
which cannot write 16-bit RGB. That API converts pixel values when a file's
colour-space chunks (gAMA, sRGB) disagree with what it assumes (sRGB for 8-bit,
linear for 16-bit); :func:`read_png` reads such files from a copy without those
chunks so that it always returns the values as stored.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from endo3d.core.errors import Endo3dError, InputError

PathLike = str | os.PathLike[str]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File suffixes of the frames of an image folder."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Channels of each PNG colour type once libpng has expanded palettes.
_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_COLOUR_SPACE_CHUNKS = (b"gAMA", b"sRGB", b"cHRM", b"iCCP")
_GAMMA_LINEAR = 100000  # gAMA chunk value of gamma 1.0

# PNG writing is our own (``encode_png``): the "Up" row filter then zlib at
# level 1. libpng through Open3D offers only "fast" (no filter) or "default"
# (adaptive filters, zlib 6). Measured on one core, 320x256 simulator frames
# (write time, file size):
#                       ours (Up, zlib 1)   Open3D fast      Open3D default
#   8-bit RGB, noisy      4.7 ms 150 KiB     8.1 ms 191 KiB   30 ms 128 KiB
#   16-bit depth          2.3 ms  64 KiB     5.4 ms 112 KiB   19 ms  60 KiB
#   16-bit normals       13.4 ms 406 KiB    18.1 ms 476 KiB   33 ms 383 KiB
#   16-bit KITTI flow     3.2 ms  68 KiB    10.1 ms 139 KiB   24 ms  43 KiB
# i.e. 2-8x faster than libpng's default at 1.0-1.6x its size. zlib's
# run-length strategy (``strategy="rle"``) halves the time again for noisy
# data (16-bit normals 11.9 -> 5.8 ms at the same size; RGB 3.7 -> 3.0 ms and
# smaller) but loses on smooth data (depth, flow: 40 % larger).
ZLIB_LEVEL = 1
_STRATEGIES = {"default": zlib.Z_DEFAULT_STRATEGY, "rle": zlib.Z_RLE}
_FILTER_UP = 2


def _as_numpy(x: Any) -> np.ndarray:
    """A numpy view of ``x``; a torch tensor is detached and moved to the CPU."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _open3d() -> Any:
    # Imported on first use: open3d takes about a second to import and most
    # users of endo3d.io (video, header checks, encodings) never need it.
    import open3d

    return open3d


@dataclass(frozen=True)
class _PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int
    # Payloads of the gAMA and sRGB chunks; cHRM and iCCP present map to b"".
    colour_chunks: dict[bytes, bytes]
    has_alpha_chunk: bool  # a tRNS chunk (only on grey, RGB or palette images)

    @property
    def channels(self) -> int:
        """Channels after decoding: palettes expand to RGB, tRNS adds alpha."""
        return _CHANNELS[self.color_type] + (1 if self.has_alpha_chunk else 0)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "missing")
    if not path.is_file():
        raise InputError(path, "is not a file")


def _read_ihdr(path: Path, f: Any) -> tuple[int, int, int, int]:
    head = f.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise InputError(path, "not a PNG file")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", head[16:26])
    if color_type not in _CHANNELS or width == 0 or height == 0:
        raise InputError(path, f"invalid PNG header ({width}x{height}, colour type {color_type})")
    return width, height, bit_depth, color_type


@dataclass(frozen=True)
class PngInfo:
    """What :func:`read_png` will return for a file, from its IHDR header.

    Attributes:
        width, height: size in pixels.
        dtype: ``np.uint8`` (bit depth 1..8) or ``np.uint16`` (bit depth 16).
        channels: 1 grey, 2 grey + alpha, 3 RGB or palette, 4 RGBA (a tRNS
            chunk, which adds alpha, is not looked at).
    """

    width: int
    height: int
    dtype: type
    channels: int


def png_info(path: PathLike) -> PngInfo:
    """Size, dtype and channels of a PNG from its IHDR header (reads 33 bytes).

    Raises:
        InputError: the file is missing or is not a PNG.
    """
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as f:
        width, height, bit_depth, color_type = _read_ihdr(path, f)
    return PngInfo(width, height, np.uint16 if bit_depth == 16 else np.uint8, _CHANNELS[color_type])


def png_size(path: PathLike) -> tuple[int, int]:
    """``(width, height)`` of a PNG from its IHDR header alone (reads 33 bytes).

    Raises:
        InputError: the file is missing or is not a PNG.
    """
    info = png_info(path)
    return info.width, info.height


def _read_header(path: Path) -> _PngHeader:
    """IHDR plus the chunks before the first IDAT that change decoded values."""
    with open(path, "rb") as f:
        width, height, bit_depth, color_type = _read_ihdr(path, f)
        colour: dict[bytes, bytes] = {}
        has_trns = False
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(path, "truncated PNG (no image data)")
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IDAT":
                break
            if kind in (b"gAMA", b"sRGB"):
                colour[kind] = f.read(length)
                f.seek(4, os.SEEK_CUR)
            else:
                if kind in _COLOUR_SPACE_CHUNKS:
                    colour[kind] = b""
                has_trns |= kind == b"tRNS"
                f.seek(length + 4, os.SEEK_CUR)
    return _PngHeader(width, height, bit_depth, color_type, colour, has_trns)


def _values_as_stored(header: _PngHeader) -> bool:
    """Whether libpng's simplified API decodes this file without value changes.

    It assumes 8-bit data is sRGB and 16-bit data is linear and converts files
    whose colour-space chunks say otherwise; files without such chunks, and the
    two configurations Open3D itself writes, are read as stored.
    """
    chunks = header.colour_chunks
    if not chunks:
        return True
    if header.bit_depth == 16:
        gamma = chunks.get(b"gAMA")
        return (b"sRGB" not in chunks and b"iCCP" not in chunks
                and gamma is not None and struct.unpack(">I", gamma)[0] == _GAMMA_LINEAR)
    return set(chunks) == {b"sRGB"}


def _without_colour_chunks(data: bytes) -> bytes:
    """The PNG bytes ``data`` with its gAMA, sRGB, cHRM and iCCP chunks removed."""
    out = [data[:8]]
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if kind not in _COLOUR_SPACE_CHUNKS:
            out.append(data[pos:end])
        pos = end
    return b"".join(out)


def _pillow_read(path: Path) -> np.ndarray | None:
    """Pillow's decoding, for machines without open3d (e.g. a GPU image): values as stored, ``(H, W, C)``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode in ("1", "L") or image.mode.startswith("I"):
                image = image.convert("L") if image.mode == "1" else image
            array = np.array(image)
    except (OSError, ValueError):
        return None
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind in "iu" and array.dtype != np.uint8:
        array = array.astype(np.uint16)
    return array[..., None] if array.ndim == 2 else array


def _open3d_read(path: Path) -> np.ndarray | None:
    try:
        o3d = _open3d()
    except ImportError:
        return _pillow_read(path)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        image = o3d.t.io.read_image(str(path))
    if image.is_empty():
        return None
    return np.array(image.as_tensor().numpy(), copy=True)


def read_png(path: PathLike) -> np.ndarray:
    """Read a PNG with its values as stored.

    Returns:
        uint8 or uint16 array, ``(H, W)`` for one channel, else ``(H, W, C)``
        (C = 2 grey + alpha, 3 RGB, 4 RGBA). Palette images come back as RGB;
        1-, 2- and 4-bit grey is scaled to uint8 (1-bit 1 -> 255).

    Raises:
        InputError: missing, not a PNG, truncated or corrupt, or a 16-bit image
            with alpha (libpng's simplified API premultiplies it).
    """
    path = Path(path)
    _check_file(path)
    header = _read_header(path)
    if header.bit_depth == 16 and header.channels in (2, 4):
        raise InputError(path, "16-bit PNG with alpha is not supported")
    if _values_as_stored(header):
        array = _open3d_read(path)
    else:
        with tempfile.TemporaryDirectory(prefix="endo3d-png-") as tmp:
            copy = Path(tmp) / "image.png"
            copy.write_bytes(_without_colour_chunks(path.read_bytes()))
            array = _open3d_read(copy)
    if array is None or array.shape[:2] != (header.height, header.width):
        raise InputError(path, "unreadable PNG (corrupt or truncated)")
    return array[..., 0] if array.shape[2] == 1 else array


def write_png(path: PathLike, array: Any, *, level: int = ZLIB_LEVEL, strategy: str = "default") -> None:
    """Write a uint8 or uint16 image as PNG (the parent folder must exist).

    Args:
        path: output file, ending in ``.png``.
        array: uint8 ``(H, W)`` or ``(H, W, C)`` with C in 1, 2, 3, 4; or uint16
            ``(H, W)`` or ``(H, W, C)`` with C in 1, 3. Numpy or a CPU tensor.
        level: zlib compression level, 0 (none) to 9 (smallest, slowest).
        strategy: zlib strategy, ``"default"`` or ``"rle"`` (faster on noisy
            images, see the measurements above).

    Raises:
        ValueError: unsupported dtype, shape or file name.
        Endo3dError: the file could not be written.
    """
    path = Path(path)
    a = _as_numpy(array)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: a PNG file name must end in .png")
    if a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: PNG needs uint8 or uint16 data, got {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    allowed = (1, 2, 3, 4) if a.dtype == np.uint8 else (1, 3)
    if a.ndim != 3 or a.shape[2] not in allowed or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{path}: cannot write {a.dtype} array of shape {a.shape} as PNG "
                         f"(channels allowed: {allowed})")
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(_STRATEGIES)}, got {strategy!r}")
    try:
        path.write_bytes(encode_png(a, level, _STRATEGIES[strategy]))
    except OSError as e:
        raise Endo3dError(f"{path}: could not write PNG ({e.strerror or e})") from None


def encode_png(a: np.ndarray, level: int, strategy: int) -> bytes:
    """PNG bytes of ``(H, W, C)`` uint8/uint16 data: IHDR, one IDAT, IEND.

    Every row uses filter type 2 ("Up": each byte minus the byte above),
    which suits smooth images; multi-byte samples are big-endian.
    """
    h, w, c = a.shape
    depth = 16 if a.dtype == np.uint16 else 8
    raw = np.ascontiguousarray(a, dtype=">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    rows = np.empty((h, raw.shape[1] + 1), dtype=np.uint8)
    rows[:, 0] = _FILTER_UP
    rows[0, 1:] = raw[0]
    np.subtract(raw[1:], raw[:-1], out=rows[1:, 1:])
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    header = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    packer = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    data = packer.compress(rows.tobytes()) + packer.flush()
    return _PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def encode_depth(depth_mm: Any, scale_mm: float) -> np.ndarray:
    """z-depth in mm -> uint16 ``round(depth / scale_mm)``.

    Args:
        depth_mm: float ``(H, W)``, mm. Values <= 0, non-finite, or beyond
            ``65535 * scale_mm`` become 0 (invalid).
        scale_mm: mm per unit, > 0 (``depth_scale_mm`` of meta.json).

    Returns:
        uint16 ``(H, W)``.
    """
    d = _as_numpy(depth_mm).astype(np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {d.shape}")
    if not scale_mm > 0:
        raise ValueError(f"depth scale must be positive, got {scale_mm}")
    ok = np.isfinite(d) & (d > 0) & (d <= 65535 * scale_mm)
    return np.where(ok, np.rint(np.where(ok, d, 0.0) / scale_mm), 0).astype(np.uint16)


def decode_depth(value: Any, scale_mm: float) -> np.ndarray:
    """uint16 ``(H, W)`` -> float32 ``(H, W)`` z-depth in mm (0 = invalid)."""
    v = _as_numpy(value)
    if v.dtype != np.uint16 or v.ndim != 2:
        raise ValueError(f"depth PNG data must be uint16 (H, W), got {v.dtype} {v.shape}")
    return (v.astype(np.float64) * scale_mm).astype(np.float32)


def encode_normals(normals: Any, valid: Any = None) -> np.ndarray:
    """Camera-frame unit normals -> uint16 ``round((n + 1) / 2 * 65535)``.

    Args:
        normals: float ``(H, W, 3)``, components clipped to [-1, 1].
        valid: bool ``(H, W)``; ``None`` means pixels whose normal is finite
            and not all zero. Invalid pixels are written as (0, 0, 0).

    Returns:
        uint16 ``(H, W, 3)``.
    """
    n = _as_numpy(normals).astype(np.float64)
    if n.ndim != 3 or n.shape[2] != 3:
        raise ValueError(f"normals must be (H, W, 3), got shape {n.shape}")
    ok = np.isfinite(n).all(axis=2)
    if valid is None:
        ok &= (n != 0).any(axis=2)
    else:
        ok &= _mask_like(valid, n.shape[:2], "normal valid mask")
    n = np.clip(np.where(ok[..., None], n, -1.0), -1.0, 1.0)
    return np.rint((n + 1.0) / 2.0 * 65535.0).astype(np.uint16)


def decode_normals(value: Any) -> tuple[np.ndarray, np.ndarray]:
    """uint16 ``(H, W, 3)`` -> (normals float32 ``(H, W, 3)``, valid bool ``(H, W)``).

    Normals are ``value / 65535 * 2 - 1``, not renormalised; zeros where invalid.
    """
    v = _as_numpy(value)
    if v.dtype != np.uint16 or v.ndim != 3 or v.shape[2] != 3:
        raise ValueError(f"normal PNG data must be uint16 (H, W, 3), got {v.dtype} {v.shape}")
    valid = (v != 0).any(axis=2)
    n = v.astype(np.float64) / 65535.0 * 2.0 - 1.0
    return np.where(valid[..., None], n, 0.0).astype(np.float32), valid


def encode_flow(flow: Any, valid: Any = None) -> np.ndarray:
    """Forward optical flow in pixels -> KITTI uint16 ``(H, W, 3)``.

    Channels: 0 = u, 1 = v, each ``round(flow * 64 + 2**15)``; 2 = valid (1 or 0).
    Invalid pixels, and flow beyond what 16 bits hold (about +-512 px), store
    zero flow and are marked invalid.

    Args:
        flow: float ``(H, W, 2)``, (du, dv) in pixels.
        valid: bool ``(H, W)``; ``None`` means pixels with finite flow.
    """
    f = _as_numpy(flow).astype(np.float64)
    if f.ndim != 3 or f.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got shape {f.shape}")
    ok = np.isfinite(f).all(axis=2)
    if valid is not None:
        ok &= _mask_like(valid, f.shape[:2], "flow valid mask")
    uv = np.rint(np.where(ok[..., None], f, 0.0) * 64.0 + 2.0**15)
    ok &= ((uv >= 0) & (uv <= 65535)).all(axis=2)
    uv = np.where(ok[..., None], uv, 2.0**15)
    return np.concatenate([uv, ok[..., None]], axis=2).astype(np.uint16)


def decode_flow(value: Any) -> tuple[np.ndarray, np.ndarray]:
    """KITTI uint16 ``(H, W, 3)`` -> (flow float32 ``(H, W, 2)`` px, valid bool ``(H, W)``).

    Flow is ``(value - 2**15) / 64``; zeros where invalid.
    """
    v = _as_numpy(value)
    if v.dtype != np.uint16 or v.ndim != 3 or v.shape[2] != 3:
        raise ValueError(f"flow PNG data must be uint16 (H, W, 3), got {v.dtype} {v.shape}")
    valid = v[..., 2] != 0
    f = (v[..., :2].astype(np.float64) - 2.0**15) / 64.0
    return np.where(valid[..., None], f, 0.0).astype(np.float32), valid


def _mask_like(mask: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    m = _as_numpy(mask)
    if m.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {m.shape}")
    return m.astype(bool)


def read_rgb(path: PathLike) -> np.ndarray:
    """Read a colour PNG as float32 ``(3, H, W)`` in [0, 1] (sRGB values as stored).

    8-bit values are divided by 255 (16-bit by 65535); grey is repeated into
    three channels and alpha is dropped.

    Raises:
        InputError: see :func:`read_png`.
    """
    a = read_png(path)
    scale = 255.0 if a.dtype == np.uint8 else 65535.0
    return rgb_channels(a).transpose(2, 0, 1).astype(np.float32) / np.float32(scale)


def rgb_channels(a: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` or ``(H, W, C)`` image array as ``(H, W, 3)``: grey (with or without alpha) repeated,
    alpha dropped. A read-only view where no copy is needed."""
    if a.ndim == 2:
        a = a[..., None]
    a = a[..., :1] if a.shape[2] <= 2 else a[..., :3]
    return np.broadcast_to(a, a.shape[:2] + (3,))


def rgb_to_uint8(image: Any) -> np.ndarray:
    """An RGB image as uint8 ``(H, W, 3)``.

    Args:
        image: float ``(3, H, W)`` in [0, 1] (clipped; ``round(x * 255)``), or
            uint8 ``(H, W, 3)`` returned unchanged. Numpy or a CPU tensor.
    """
    a = _as_numpy(image)
    if a.dtype == np.uint8:
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"uint8 RGB must be (H, W, 3), got shape {a.shape}")
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"RGB must be float (3, H, W) or uint8 (H, W, 3), got {a.dtype}")
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"float RGB must be (3, H, W), got shape {a.shape}")
    a = np.nan_to_num(a.astype(np.float32), nan=0.0)
    return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)


def write_rgb(path: PathLike, image: Any) -> None:
    """Write an 8-bit sRGB PNG from float ``(3, H, W)`` in [0, 1] or uint8 ``(H, W, 3)``."""
    write_png(path, rgb_to_uint8(image))
