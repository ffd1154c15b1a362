"""PNG I/O and the depth / normal / flow encodings of endo3d/v1."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from endo3d.core.errors import InputError
from endo3d.io.images import (
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
    write_png,
    write_rgb,
)

H, W = 64, 80


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_by_hand(a: np.ndarray, color_type: int, extra_chunks: bytes = b"") -> bytes:
    """A PNG built from the specification (filter 0 rows, big-endian samples)."""
    h, w = a.shape[:2]
    bit_depth = 16 if a.dtype == np.uint16 else 8
    samples = a.astype(">u2" if bit_depth == 16 else "u1")
    raw = b"".join(b"\x00" + samples[i].tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra_chunks
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_is_exact(tmp_path, dtype, channels):
    rng = np.random.default_rng(0)
    shape = (H, W) if channels == 1 else (H, W, channels)
    a = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    write_png(tmp_path / "x.png", a)
    b = read_png(tmp_path / "x.png")
    assert b.dtype == dtype and b.shape == shape
    np.testing.assert_array_equal(a, b)
    assert png_size(tmp_path / "x.png") == (W, H)
    info = png_info(tmp_path / "x.png")
    assert (info.width, info.height, info.dtype, info.channels) == (W, H, dtype, channels)


@pytest.mark.parametrize("level, strategy", [(0, "default"), (9, "default"), (1, "rle")])
def test_png_compression_does_not_change_values(tmp_path, level, strategy):
    a = np.arange(H * W * 3, dtype=np.uint16).reshape(H, W, 3) * 7
    write_png(tmp_path / "x.png", a, level=level, strategy=strategy)
    np.testing.assert_array_equal(read_png(tmp_path / "x.png"), a)


@pytest.mark.parametrize(
    "a, color_type",
    [
        (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + 7, 0),
        (np.arange(36, dtype=np.uint16).reshape(3, 4, 3) * 1800 + 3, 2),
        (np.arange(36, dtype=np.uint8).reshape(3, 4, 3) * 7, 2),
    ],
)
@pytest.mark.parametrize(
    "colour_chunk",
    [b"", _chunk(b"sRGB", b"\x00"), _chunk(b"gAMA", struct.pack(">I", 100000)),
     _chunk(b"gAMA", struct.pack(">I", 45455))],
    ids=["plain", "sRGB", "gamma1", "gamma045"],
)
def test_read_png_returns_values_as_stored(tmp_path, a, color_type, colour_chunk):
    # Files written by other tools, whatever colour-space chunks they carry.
    path = tmp_path / "other.png"
    path.write_bytes(_png_by_hand(a, color_type, colour_chunk))
    b = read_png(path)
    assert b.dtype == a.dtype
    np.testing.assert_array_equal(b, a)


def test_png_size_reads_only_the_header(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(_png_by_hand(np.zeros((7, 9), np.uint8), 0)[:40])  # truncated after IHDR
    assert png_size(path) == (9, 7)
    with pytest.raises(InputError, match=r"x\.png: truncated PNG \(no image data\)"):
        read_png(path)


def test_png_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png: missing"):
        read_png(tmp_path / "nope.png")
    with pytest.raises(InputError, match=r"nope\.png: missing"):
        png_size(tmp_path / "nope.png")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(InputError, match=r"text\.png: not a PNG"):
        png_size(text)
    with pytest.raises(InputError, match=r"text\.png: not a PNG"):
        read_png(text)
    corrupt = tmp_path / "corrupt.png"
    good = _png_by_hand(np.zeros((8, 8), np.uint8), 0)
    corrupt.write_bytes(good[:45] + b"\xff" * 10 + good[55:])
    with pytest.raises(InputError, match=r"corrupt\.png: unreadable PNG"):
        read_png(corrupt)


def test_write_png_rejects_unsupported_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_png(tmp_path / "x.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="channels"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 4), np.uint16))
    with pytest.raises(ValueError, match=".png"):
        write_png(tmp_path / "x.jpg", np.zeros((4, 4), np.uint8))


def test_depth_encoding_follows_the_format():
    scale = 0.01
    d = np.array([[12.344, 12.346, 0.0, -3.0], [np.nan, np.inf, 65535 * scale, 65535 * scale + 0.001]])
    u = encode_depth(d, scale)
    assert u.dtype == np.uint16
    np.testing.assert_array_equal(u, [[1234, 1235, 0, 0], [0, 0, 65535, 0]])
    back = decode_depth(u, scale)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, [[12.34, 12.35, 0, 0], [0, 0, 655.35, 0]], rtol=1e-6)


def test_depth_round_trip_within_half_a_step():
    rng = np.random.default_rng(1)
    scale = 0.05
    d = rng.uniform(1.0, 3000.0, size=(H, W))
    err = np.abs(decode_depth(encode_depth(d, scale), scale) - d)
    assert err.max() <= scale / 2 + 1e-4  # float32 output at 3000 mm: ulp 2.4e-4


def test_normal_encoding_follows_the_format():
    n = np.array([[[1.0, 0.0, -1.0], [0.0, 0.6, -0.8], [0.0, 0.0, 0.0]]])
    u = encode_normals(n)
    np.testing.assert_array_equal(u[0, 0], [65535, round(0.5 * 65535), 0])
    np.testing.assert_array_equal(u[0, 2], [0, 0, 0])  # all-zero normal: invalid
    decoded, valid = decode_normals(u)
    np.testing.assert_array_equal(valid, [[True, True, False]])
    np.testing.assert_array_equal(decoded[0, 2], 0.0)
    explicit = encode_normals(n, valid=np.array([[True, False, False]]))
    np.testing.assert_array_equal(explicit[0, 1], [0, 0, 0])


def test_normal_round_trip_within_one_step():
    rng = np.random.default_rng(2)
    n = rng.normal(size=(H, W, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    decoded, valid = decode_normals(encode_normals(n))
    assert valid.all()
    assert np.abs(decoded - n).max() <= 1 / 65535 + 1e-7


def test_flow_encoding_is_kitti(tmp_path):
    flow = np.zeros((2, 3, 2))
    flow[0, 0] = [1.5, -2.25]
    flow[0, 1] = [1000.0, -1000.0]  # beyond the uint16 range: not a label, so invalid
    flow[0, 2] = [np.nan, 0.0]
    valid = np.ones((2, 3), bool)
    valid[1, 2] = False
    u = encode_flow(flow, valid)
    np.testing.assert_array_equal(u[0, 0], [2**15 + 96, 2**15 - 144, 1])
    np.testing.assert_array_equal(u[0, 1], [2**15, 2**15, 0])
    assert u[0, 2, 2] == 0 and u[1, 2, 2] == 0 and u[1, 1, 2] == 1
    # On disk: R = u, G = v, B = valid.
    write_png(tmp_path / "flow.png", u)
    raw = read_png(tmp_path / "flow.png")
    assert raw[0, 0, 0] == 2**15 + 96 and raw[0, 0, 1] == 2**15 - 144 and raw[0, 0, 2] == 1
    decoded, ok = decode_flow(raw)
    np.testing.assert_allclose(decoded[0, 0], [1.5, -2.25])
    np.testing.assert_array_equal(ok, [[True, False, False], [True, True, False]])
    np.testing.assert_array_equal(decoded[0, 2], 0.0)


def test_flow_round_trip_within_a_64th_pixel():
    rng = np.random.default_rng(3)
    flow = rng.uniform(-100, 100, size=(H, W, 2))
    decoded, valid = decode_flow(encode_flow(flow, np.ones((H, W), bool)))
    assert valid.all()
    assert np.abs(decoded - flow).max() <= 1 / 128 + 1e-9


def test_rgb_float_and_uint8(tmp_path):
    rng = np.random.default_rng(4)
    img = rng.uniform(-0.1, 1.1, size=(3, H, W)).astype(np.float32)
    write_rgb(tmp_path / "f.png", img)
    back = read_rgb(tmp_path / "f.png")
    assert back.dtype == np.float32 and back.shape == (3, H, W)
    assert np.abs(back - np.clip(img, 0, 1)).max() <= 0.5 / 255 + 1e-6
    u8 = rng.integers(0, 255, size=(H, W, 3), endpoint=True).astype(np.uint8)
    write_rgb(tmp_path / "u.png", u8)
    np.testing.assert_array_equal(read_png(tmp_path / "u.png"), u8)
    np.testing.assert_allclose(read_rgb(tmp_path / "u.png"), u8.transpose(2, 0, 1) / 255.0, atol=1e-7)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        write_rgb(tmp_path / "bad.png", img.transpose(1, 2, 0))


def test_read_rgb_accepts_grey_and_rgba(tmp_path):
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    write_png(tmp_path / "g.png", grey)
    np.testing.assert_allclose(read_rgb(tmp_path / "g.png"), np.broadcast_to(grey / 255.0, (3, H, W)), atol=1e-7)
    rgba = np.dstack([np.full((H, W, 3), 200, np.uint8), np.zeros((H, W), np.uint8)])
    write_png(tmp_path / "a.png", rgba)
    np.testing.assert_allclose(read_rgb(tmp_path / "a.png"), 200 / 255.0, atol=1e-7)


@pytest.mark.parametrize("dtype, channels", [(np.uint8, 1), (np.uint8, 3), (np.uint8, 4), (np.uint16, 1)])
def test_png_reads_the_same_without_open3d(tmp_path, monkeypatch, dtype, channels):
    """Without open3d (GPU images lack it) Pillow decodes, with the same values and shapes."""
    import endo3d.io.images as images_module

    pytest.importorskip("PIL")
    rng = np.random.default_rng(channels)
    a = rng.integers(0, np.iinfo(dtype).max, size=(9, 13, channels) if channels > 1 else (9, 13), dtype=dtype)
    write_png(tmp_path / "a.png", a)
    with_open3d = read_png(tmp_path / "a.png")

    def no_open3d():
        raise ImportError("No module named 'open3d'")

    monkeypatch.setattr(images_module, "_open3d", no_open3d)
    without = read_png(tmp_path / "a.png")
    assert without.dtype == with_open3d.dtype and np.array_equal(without, with_open3d)
    assert np.array_equal(without, a)
