"""Writers of tiny fixtures in other datasets' layouts (SCARED, Hamlyn, C3VD, SimCol3D) and a TIFF writer."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np


def write_tiff(path: Path, array: np.ndarray, *, deflate: bool = False) -> None:
    """A minimal little-endian strip TIFF of a 2-D uint8/uint16/float32 array (one strip)."""
    a = np.ascontiguousarray(array)
    h, w = a.shape
    bits, fmt = {np.dtype(np.uint8): (8, 1), np.dtype(np.uint16): (16, 1), np.dtype(np.float32): (32, 3)}[a.dtype]
    data = a.astype(a.dtype.newbyteorder("<")).tobytes()
    if deflate:
        data = zlib.compress(data)
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, bits), (259, 3, 1, 8 if deflate else 1),
               (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, len(data)),
               (339, 3, 1, fmt)]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    out = bytearray(b"II" + struct.pack("<HI", 42, ifd_offset))
    out += struct.pack("<H", len(entries))
    for tag, typ, n, value in entries:
        if tag == 273:
            value = data_offset
        packed = struct.pack("<H", value) + b"\0\0" if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, n) + packed
    out += struct.pack("<I", 0)
    out += data
    path.write_bytes(bytes(out))


def rgb_frames(n: int, h: int = 24, w: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]


def make_scared(root: Path, n: int = 3, h: int = 24, w: int = 32) -> dict:
    """SCARED keyframe in EndoGaussian's layout: data/left_finalpass, disparity, reprojection_data."""
    from endo3d.io import write_png

    data = root / "data"
    for sub in ("left_finalpass", "disparity", "reprojection_data"):
        (data / sub).mkdir(parents=True)
    f, baseline, cx, cy = 100.0, 4.0, 15.5, 11.5
    Q = np.array([[1, 0, 0, -cx], [0, 1, 0, -cy], [0, 0, 0, f], [0, 0, 1 / baseline, 0]])
    depth = np.full((h, w), 50.0, dtype=np.float32)
    depth[: h // 2] = 80.0
    disparity = (f * baseline / depth).astype(np.float32)
    disparity[0, 0] = 0.0  # invalid
    for i, rgb in enumerate(rgb_frames(n, h, w)):
        name = f"frame_data{i:06d}"
        write_png(data / "left_finalpass" / f"{name}.png", rgb)
        write_tiff(data / "disparity" / f"{name}.tiff", disparity)
        (data / "reprojection_data" / f"{name}.json").write_text(json.dumps({"reprojection-matrix": Q.tolist()}))
    return {"depth": depth, "K": np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])}


def make_hamlyn(root: Path, n: int = 3, h: int = 24, w: int = 32) -> dict:
    """Hamlyn rectified sequence: image01/*.png, depth01/*.png (uint16 mm), intrinsics.txt (3x4)."""
    from endo3d.io import write_png

    (root / "image01").mkdir(parents=True)
    (root / "depth01").mkdir()
    depth = (np.arange(h * w).reshape(h, w) % 200 + 20).astype(np.uint16)
    for i, rgb in enumerate(rgb_frames(n, h, w)):
        write_png(root / "image01" / f"{i:010d}.png", rgb)
        write_png(root / "depth01" / f"{i:010d}.png", depth)
    K = np.array([[90.0, 0, 16.0], [0, 91.0, 12.0], [0, 0, 1]])
    (root / "intrinsics.txt").write_text("\n".join(" ".join(str(v) for v in row) + " 0" for row in K))
    return {"depth": depth.astype(np.float32), "K": K}


def make_c3vd(root: Path, n: int = 3, h: int = 24, w: int = 32, deflate: bool = True) -> dict:
    """C3VD registered sequence: NNNN_color.png, NNNN_depth.tiff (uint16, mm = v / 65535 * 100), pose.txt."""
    from endo3d.io import write_png

    root.mkdir(parents=True)
    value = np.full((h, w), 32768, dtype=np.uint16)
    poses = []
    for i, rgb in enumerate(rgb_frames(n, h, w)):
        write_png(root / f"{i:04d}_color.png", rgb)
        write_tiff(root / f"{i:04d}_depth.tiff", value, deflate=deflate)
        c2w = np.eye(4)
        c2w[:3, 3] = [i * 1.0, 2.0, 3.0 * i]
        c2w[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
        poses.append(c2w)
    lines = [",".join(f"{v:.6f}" for v in P.T.reshape(-1)) for P in poses]  # column-major
    (root / "pose.txt").write_text("\n".join(lines) + "\n")
    return {"depth_mm": 32768 / 65535 * 100, "poses": np.stack(poses)}


def make_simcol(root: Path, n: int = 3, h: int = 24, w: int = 24) -> dict:
    """SimCol3D scene: Frames_S1/FrameBuffer_NNNN.png, Depth_NNNN.png, SavedPosition_S1.txt (cm), quaternions."""
    from endo3d.io import write_png

    frames = root / "Frames_S1"
    frames.mkdir(parents=True)
    value = np.full((h, w), 65280 // 4, dtype=np.uint16)  # 1/4 of 20 cm
    for i, rgb in enumerate(rgb_frames(n, h, w)):
        write_png(frames / f"FrameBuffer_{i:04d}.png", rgb)
        write_png(frames / f"Depth_{i:04d}.png", value)
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])[:n]
    quat = np.array([[0.0, 0.0, 0.0, 1.0]] * n)
    (root / "SavedPosition_S1.txt").write_text("\n".join(" ".join(map(str, p)) for p in pos))
    (root / "SavedRotationQuaternion_S1.txt").write_text("\n".join(" ".join(map(str, q)) for q in quat))
    (root / "cam.txt").write_text("20 0 11.5\n0 20 11.5\n0 0 1\n")
    return {"depth_mm": (65280 // 4) / 65280 * 200, "positions_cm": pos}
