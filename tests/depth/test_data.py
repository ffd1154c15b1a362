"""Frame-sequence readers (endo3d.depth.data) on fixtures written in each layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from endo3d.core import InputError
from endo3d.depth.data import (
    c3vd_depth_to_mm,
    c3vd_pose_to_c2w,
    open_sequences,
    read_tiff,
    scared_disparity_to_depth,
    simcol_depth_to_mm,
    simcol_pose_to_c2w,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("deflate", [False, True])
def test_tiff_roundtrip(tmp_path, layouts, dtype, deflate):
    a = (np.arange(35).reshape(5, 7) * 3).astype(dtype)
    layouts.write_tiff(tmp_path / "a.tiff", a, deflate=deflate)
    b = read_tiff(tmp_path / "a.tiff")
    assert b.dtype == dtype and b.shape == (5, 7)
    np.testing.assert_array_equal(a, b)


def test_tiff_errors(tmp_path):
    with pytest.raises(InputError, match="missing"):
        read_tiff(tmp_path / "none.tiff")
    (tmp_path / "x.tiff").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="not a TIFF"):
        read_tiff(tmp_path / "x.tiff")


def test_endo3d_dataset(rigid_colon):
    (seq,) = open_sequences(rigid_colon)
    assert seq.layout == "endo3d/v1" and len(seq) == 8 and seq.size == (128, 160)
    img, depth, mask = seq.image(0), seq.depth(0), seq.mask(0)
    assert img.shape == (3, 128, 160) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert depth.shape == (1, 128, 160) and depth.max() > 1  # mm
    assert mask.dtype == torch.bool
    assert seq.K.shape == (3, 3) and seq.poses.shape == (8, 4, 4)
    half = seq.subsample(2)
    assert len(half) == 4 and torch.equal(half.image(1), seq.image(2))
    np.testing.assert_array_equal(half.poses[1], seq.poses[2])


def test_scared(tmp_path, layouts):
    truth = layouts.make_scared(tmp_path / "keyframe_1")
    (seq,) = open_sequences(tmp_path / "keyframe_1")
    assert seq.layout == "scared" and len(seq) == 3 and seq.name == "keyframe_1"
    d = seq.depth(1)[0].numpy()
    assert d[0, 0] == 0  # zero disparity = invalid
    np.testing.assert_allclose(d[1:], truth["depth"][1:], rtol=1e-5)
    np.testing.assert_allclose(seq.K, truth["K"])


def test_scared_missing_disparity(tmp_path, layouts):
    layouts.make_scared(tmp_path / "k")
    (tmp_path / "k" / "data" / "disparity" / "frame_data000002.tiff").unlink()
    with pytest.raises(InputError, match="disparity .tiff missing for frame 2"):
        open_sequences(tmp_path / "k")


def test_scared_disparity_formula():
    Q = np.array([[1, 0, 0, -10], [0, 1, 0, -8], [0, 0, 0, 500.0], [0, 0, 0.25, 0]])
    d = scared_disparity_to_depth(np.array([[50.0, 0.0, -1.0]]), Q)
    np.testing.assert_allclose(d, [[500 / (0.25 * 50), 0, 0]])


def test_hamlyn(tmp_path, layouts):
    truth = layouts.make_hamlyn(tmp_path / "rectified01")
    layouts.make_hamlyn(tmp_path / "rectified02", n=4)
    seqs = open_sequences(tmp_path)  # a folder of rectified* sequences
    assert [s.name for s in seqs] == ["rectified01", "rectified02"] and [len(s) for s in seqs] == [3, 4]
    np.testing.assert_array_equal(seqs[0].depth(2)[0].numpy(), truth["depth"])
    np.testing.assert_allclose(seqs[0].K, truth["K"])
    (seq,) = open_sequences(tmp_path / "rectified01")
    assert seq.layout == "hamlyn"


def test_hamlyn_missing_depth(tmp_path, layouts):
    layouts.make_hamlyn(tmp_path / "rectified01")
    (tmp_path / "rectified01" / "depth01" / f"{1:010d}.png").unlink()
    with pytest.raises(InputError, match="no depth PNG"):
        open_sequences(tmp_path / "rectified01")


@pytest.mark.parametrize("deflate", [False, True])
def test_c3vd(tmp_path, layouts, deflate):
    truth = layouts.make_c3vd(tmp_path / "cecum_t1_a", deflate=deflate)
    (seq,) = open_sequences(tmp_path / "cecum_t1_a")
    assert seq.layout == "c3vd" and seq.eval_cap_mm == 100.0 and seq.K is None
    np.testing.assert_allclose(seq.depth(0).numpy(), truth["depth_mm"], rtol=1e-6)
    np.testing.assert_allclose(seq.poses, truth["poses"], atol=1e-6)


def test_c3vd_bad_pose(tmp_path, layouts):
    layouts.make_c3vd(tmp_path / "c")
    (tmp_path / "c" / "pose.txt").write_text("1 2 3\n")
    with pytest.raises(InputError, match="16 numbers"):
        open_sequences(tmp_path / "c")


def test_c3vd_conversions():
    assert c3vd_depth_to_mm(np.array([0, 65535], dtype=np.uint16)).tolist() == [0.0, 100.0]
    M = np.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(c3vd_pose_to_c2w(M.T.reshape(1, 16))[0], M)


def test_simcol(tmp_path, layouts):
    truth = layouts.make_simcol(tmp_path / "SyntheticColon_I")
    (seq,) = open_sequences(tmp_path / "SyntheticColon_I" / "Frames_S1")
    assert seq.layout == "simcol3d" and len(seq) == 3
    np.testing.assert_allclose(seq.depth(0).numpy(), truth["depth_mm"], rtol=1e-6)
    # identity rotation, positions in cm -> mm with the y axis mirrored
    np.testing.assert_allclose(seq.poses[2][:3, 3], [20.0, -40.0, 60.0])
    np.testing.assert_allclose(seq.poses[2][:3, :3], np.eye(3), atol=1e-12)
    assert seq.K[0, 0] == 20
    (scene,) = open_sequences(tmp_path / "SyntheticColon_I")  # the scene folder finds Frames_S1
    assert scene.name == "Frames_S1"


def test_simcol_conversions():
    assert simcol_depth_to_mm(np.array([0, 65280], dtype=np.uint16)).tolist() == [0.0, 200.0]
    # Unity camera turned 90 degrees about its up axis (+y): looks along world +x.
    q = np.array([[0.0, np.sin(np.pi / 4), 0.0, np.cos(np.pi / 4)]])
    c2w = simcol_pose_to_c2w(np.array([[1.0, 2.0, 3.0]]), q)[0]
    R = c2w[:3, :3]
    assert np.isclose(np.linalg.det(R), 1.0)  # right-handed, a proper rotation
    np.testing.assert_allclose(R[:, 2], [1, 0, 0], atol=1e-12)  # optical axis (+z) along world x
    np.testing.assert_allclose(R[:, 1], [0, 1, 0], atol=1e-12)  # camera y down = world -(Unity up) = +y mirrored
    np.testing.assert_allclose(c2w[:3, 3], [10, -20, 30])


def test_image_folder_and_video(tmp_path, layouts):
    from endo3d.io import VideoWriter, write_png

    folder = tmp_path / "imgs"
    folder.mkdir()
    frames = layouts.rgb_frames(3, 16, 20)
    for i, f in enumerate(frames):
        write_png(folder / f"f{i:03d}.png", f)
    (seq,) = open_sequences(folder)
    assert seq.layout == "images" and len(seq) == 3 and seq.K is None and not seq.has_depth
    torch.testing.assert_close(seq.image(1), torch.from_numpy(frames[1].transpose(2, 0, 1)).float() / 255)
    with VideoWriter(tmp_path / "clip.mp4", fps=10.0) as v:
        for f in frames:
            v.write(f)
    (vid,) = open_sequences(tmp_path / "clip.mp4")
    assert vid.layout == "video" and len(vid) == 3 and vid.size == (16, 20)


def test_jpeg_frames(tmp_path):
    import open3d as o3d

    folder = tmp_path / "jpg"
    folder.mkdir()
    a = np.full((8, 10, 3), 128, dtype=np.uint8)
    o3d.t.io.write_image(str(folder / "0001.jpg"), o3d.t.geometry.Image(o3d.core.Tensor(a)))
    (seq,) = open_sequences(folder)
    assert seq.image(0).shape == (3, 8, 10) and abs(float(seq.image(0).mean()) - 128 / 255) < 0.02


def test_errors(tmp_path):
    with pytest.raises(InputError, match="missing"):
        open_sequences(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no frames found"):
        open_sequences(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not a video file"):
        open_sequences(tmp_path / "notes.txt")
