"""EndoNeRF folders: LLFF pose conversion, intrinsics, depth, mask polarity, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from endo3d.core.errors import InputError
from endo3d.io import open_dataset
from endo3d.io.endonerf import llff_to_opencv, read_endonerf
from endo3d.io.images import write_png

H, W, N = 64, 80, 4
FOCAL = 60.0


def look_at(eye, target) -> np.ndarray:
    """OpenCV c2w (x right, y down, z forward) at ``eye`` looking at ``target``, world -y up."""
    eye, target = np.asarray(eye, dtype=np.float64), np.asarray(target, dtype=np.float64)
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], axis=1)
    c2w[:3, 3] = eye
    return c2w


def to_llff_row(c2w: np.ndarray, hwf=(H, W, FOCAL), bounds=(1.0, 100.0)) -> np.ndarray:
    """By LLFF's definition: rotation columns are the camera's down, right, back axes."""
    right, down, forward = c2w[:3, 0], c2w[:3, 1], c2w[:3, 2]
    m = np.stack([down, right, -forward, c2w[:3, 3], np.asarray(hwf, dtype=np.float64)], axis=1)
    return np.concatenate([m.reshape(-1), bounds])


def test_llff_to_opencv_inverts_the_llff_definition():
    eyes = [[10.0, -5.0, -40.0], [0.0, 30.0, 0.1], [-25.0, 2.0, 25.0]]
    c2w = np.stack([look_at(e, [1.0, 2.0, 3.0]) for e in eyes])
    rows = np.stack([to_llff_row(c, bounds=(i, 10.0 + i)) for i, c in enumerate(c2w)])
    back, hwf, bounds = llff_to_opencv(rows)
    np.testing.assert_allclose(back, c2w, atol=1e-12)
    np.testing.assert_array_equal(hwf, [H, W, FOCAL])
    np.testing.assert_array_equal(bounds, [[0, 10], [1, 11], [2, 12]])


def test_a_point_in_front_of_an_llff_camera_has_positive_opencv_z():
    # LLFF's camera looks along -back; a point ahead of it must land at z > 0.
    rng = np.random.default_rng(0)
    for _ in range(5):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))  # a rotation: columns down, right, back
        centre = rng.normal(size=3) * 10
        row = np.concatenate([np.column_stack([q, centre, [H, W, FOCAL]]).reshape(-1), [1.0, 50.0]])
        c2w = llff_to_opencv(row[None])[0][0]
        assert np.linalg.det(c2w[:3, :3]) == pytest.approx(1.0)
        ahead = centre - 7.0 * q[:, 2] + 0.5 * q[:, 0]  # 7 ahead, a little down
        p_cam = np.linalg.inv(c2w) @ np.append(ahead, 1.0)
        np.testing.assert_allclose(p_cam[:3], [0.0, 0.5, 7.0], atol=1e-9)


def test_identity_llff_pose():
    row = np.concatenate([np.column_stack([np.eye(3), np.zeros(3), [H, W, FOCAL]]).reshape(-1), [0.1, 9.0]])
    c2w = llff_to_opencv(row[None])[0][0]
    np.testing.assert_array_equal(c2w[:3, :3], [[0, 1, 0], [1, 0, 0], [0, 0, -1]])


def write_endonerf(root: Path, *, n=N, inverted_masks=False, sizes=None) -> Path:
    """A tiny EndoNeRF folder: static camera, 8-bit depth, 255 = tool masks."""
    for name in ("images", "depth", "masks"):
        (root / name).mkdir(parents=True)
    for i in range(n):
        h, w = (sizes or {}).get(i, (H, W))
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[..., 0] = 10 * i
        rgb[..., 1] = np.arange(w, dtype=np.uint8)[None, :]
        depth = np.full((h, w), 80 + i, np.uint8)
        depth[0, 0] = 0
        tool = np.zeros((h, w), bool)
        tool[h // 2:, : w // 4] = True
        mask = np.where(tool != inverted_masks, 255, 0).astype(np.uint8)
        write_png(root / "images" / f"{i:06d}.png", rgb)
        write_png(root / "depth" / f"frame-{i:06d}.depth.png", depth)
        write_png(root / "masks" / f"frame-{i:06d}.mask.png", mask)
    np.save(root / "poses_bounds.npy", np.stack([to_llff_row(np.eye(4)) for _ in range(n)]))
    return root


def test_read_endonerf(tmp_path):
    root = write_endonerf(tmp_path / "scene")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = read_endonerf(root, depth_scale_mm=0.5)
    assert ds.format == "endonerf" and len(ds) == N
    np.testing.assert_array_equal(ds.camera.K, [[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1]])
    np.testing.assert_allclose(ds.times, np.arange(N) / 30.0)
    assert ds.meta.fps == 30.0 and ds.has("depth") and ds.has("mask") and not ds.has("flow")
    f = ds.frame(2)
    assert f.rgb.shape == (3, H, W) and f.rgb[0, 0, 0].item() == pytest.approx(20 / 255.0)
    assert f.depth.shape == (1, H, W) and f.depth[0, 1, 1].item() == pytest.approx(82 * 0.5)
    assert f.depth[0, 0, 0].item() == 0.0
    tool = torch.zeros((1, H, W), dtype=torch.uint8)
    tool[:, H // 2:, : W // 4] = 1
    assert torch.equal(f.mask, tool) and torch.equal(f.valid, tool == 0)
    assert f.extra["bounds"] == [1.0, 100.0]
    np.testing.assert_array_equal(f.c2w, llff_to_opencv(np.load(root / "poses_bounds.npy"))[0][2])
    assert ds.meta.source["mask_polarity"] == "tool_is_255"
    assert open_dataset(root).format == "endonerf"


def test_inverted_masks_are_detected_and_flipped(tmp_path):
    root = write_endonerf(tmp_path / "scene", inverted_masks=True)
    with pytest.warns(UserWarning, match=r"scene/masks: masks look inverted") as record:
        ds = read_endonerf(root)
    assert len(record) == 1
    f = ds.frame(0)
    assert f.mask[0, -1, 0].item() == 1 and f.mask[0, 0, -1].item() == 0
    assert ds.meta.source["mask_polarity"] == "tissue_is_255"
    # Asked explicitly: no warning, masks taken as they are.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_is = read_endonerf(root, mask_polarity="tool_is_255")
        flipped = read_endonerf(root, mask_polarity="tissue_is_255")
    assert as_is.frame(0).mask[0, 0, -1].item() == 1
    assert torch.equal(flipped.frame(0).mask, f.mask)


def test_missing_folders_and_files(tmp_path):
    with pytest.raises(InputError, match="nowhere: missing"):
        read_endonerf(tmp_path / "nowhere")
    root = write_endonerf(tmp_path / "a")
    (root / "poses_bounds.npy").unlink()
    with pytest.raises(InputError, match=r"a/poses_bounds\.npy: missing"):
        read_endonerf(root)
    root = write_endonerf(tmp_path / "b")
    for p in (root / "masks").iterdir():
        p.unlink()
    (root / "masks").rmdir()
    with pytest.raises(InputError, match=r"b/masks: missing"):
        read_endonerf(root)
    root = write_endonerf(tmp_path / "c")
    for p in (root / "depth").iterdir():
        p.unlink()
    with pytest.raises(InputError, match=r"c/depth: no PNG files"):
        read_endonerf(root)


def test_count_and_size_mismatches(tmp_path):
    root = write_endonerf(tmp_path / "a")
    (root / "depth" / "frame-000003.depth.png").unlink()
    with pytest.raises(InputError, match=r"a/depth: 3 PNG files, but images/ has 4"):
        read_endonerf(root)
    root = write_endonerf(tmp_path / "b")
    np.save(root / "poses_bounds.npy", np.load(root / "poses_bounds.npy")[:3])
    with pytest.raises(InputError, match=r"b/poses_bounds\.npy: 3 poses, but images/ has 4"):
        read_endonerf(root)
    root = write_endonerf(tmp_path / "c", sizes={2: (H, W + 2)})
    with pytest.raises(InputError, match=r"c/images/000002\.png: size 82x64, but 000000\.png"):
        read_endonerf(root)
    root = write_endonerf(tmp_path / "d")
    np.save(root / "poses_bounds.npy", np.stack([to_llff_row(np.eye(4), hwf=(512, 640, 500.0))] * N))
    with pytest.raises(InputError, match=r"d/poses_bounds\.npy: hwf says 640x512"):
        read_endonerf(root)
    root = write_endonerf(tmp_path / "e")
    np.save(root / "poses_bounds.npy", np.zeros((N, 15)))
    with pytest.raises(InputError, match=r"e/poses_bounds\.npy: must be a numeric N x 17 array"):
        read_endonerf(root)
    root = write_endonerf(tmp_path / "f")
    bad = np.load(root / "poses_bounds.npy")
    bad[1, 0] = 2.0  # a stretched rotation
    np.save(root / "poses_bounds.npy", bad)
    with pytest.raises(InputError, match=r"f/poses_bounds\.npy: pose 1 has a rotation that is not orthonormal"):
        read_endonerf(root)
