"""Video probing, reading and atomic writing."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

import endo3d.io.video as video
from endo3d.core.errors import InputError
from endo3d.io.video import VideoWriter, probe_video, read_video

H, W, N, FPS = 64, 80, 12, 25
REAL_CLIP = Path("/work/shared/data/real/laparoscopic_rvimlab/endo_640x360.mp4")


def pattern(i: int, h: int = H, w: int = W) -> np.ndarray:
    """A grey background (60) with a bright bar (220) moving right by 4 px per frame."""
    a = np.full((h, w, 3), 60, np.uint8)
    a[:, 4 * i: 4 * i + 12] = (220, 200, 180)
    return a


def write_clip(path: Path, n: int = N, h: int = H, w: int = W) -> Path:
    with VideoWriter(path, FPS) as v:
        for i in range(n):
            v.write(pattern(i, h, w))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("video") / "clip.mp4")


def test_probe(clip):
    info = probe_video(clip)
    assert (info.width, info.height, info.num_frames) == (W, H, N)
    assert info.fps == pytest.approx(FPS) and info.duration_s == pytest.approx(N / FPS)


def test_read_back_count_times_and_pixels(clip):
    frames = list(read_video(clip))
    assert [f.index for f in frames] == list(range(N))
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(N) / FPS, atol=1e-9)
    for f in frames:
        assert f.rgb.dtype == np.uint8 and f.rgb.shape == (H, W, 3)
        # Flat background far from the bar (bar spans x < 56 over the clip).
        assert np.abs(f.rgb[8:56, 64:76].astype(int) - 60).max() <= 3
    # The bar's colour survives at its centre.
    assert np.abs(frames[5].rgb[32, 26].astype(int) - [220, 200, 180]).max() <= 8


def test_stride_max_frames_start_end(clip):
    assert [f.index for f in read_video(clip, stride=3)] == [0, 3, 6, 9]
    assert [f.index for f in read_video(clip, max_frames=2)] == [0, 1]
    assert [f.index for f in read_video(clip, max_frames=0)] == []
    picked = list(read_video(clip, start_s=0.2, stride=2, max_frames=3))
    assert [f.index for f in picked] == [5, 7, 9]
    assert picked[0].time_s == pytest.approx(0.2)
    assert [f.index for f in read_video(clip, start_s=0.08, end_s=0.28)] == [2, 3, 4, 5, 6]


def test_resize(clip):
    f = next(read_video(clip, size=(40, 32)))
    assert f.rgb.shape == (32, 40, 3)
    assert np.abs(f.rgb[4:28, 32:38].astype(int) - 60).max() <= 3


def test_odd_sizes_are_padded_to_even(tmp_path):
    path = write_clip(tmp_path / "odd.mp4", n=3, h=H - 1, w=W - 1)
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (W, H, 3)
    f = next(read_video(path))
    assert np.abs(f.rgb[-1, 64:76].astype(int) - 60).max() <= 3  # padded row repeats the last one


def test_mkv_frame_count_is_counted(tmp_path):
    path = write_clip(tmp_path / "clip.mkv", n=7)
    assert probe_video(path).num_frames == 7  # MKV headers carry no frame count


def test_mpeg4_fallback_without_libx264(tmp_path, monkeypatch):
    assert video._encoder() == "libx264"
    real_codec = av.codec.Codec

    def codec_without_x264(name, mode="r"):
        if name == "libx264":
            raise av.codec.codec.UnknownCodecError(name)
        return real_codec(name, mode)

    monkeypatch.setattr(av.codec, "Codec", codec_without_x264)
    assert video._encoder() == "mpeg4"
    path = write_clip(tmp_path / "m4.mp4", n=4)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert probe_video(path).num_frames == 4
    f = next(read_video(path))
    assert np.abs(f.rgb[8:56, 64:76].astype(int) - 60).max() <= 4


def test_writer_is_atomic(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(tmp_path / "out.mp4", FPS) as v:
            v.write(pattern(0))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "out.mp4", FPS):
            pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="earlier frames are 80x64"):
        with VideoWriter(tmp_path / "out.mp4", FPS) as v:
            v.write(pattern(0))
            v.write(pattern(0, H, W + 2))
    assert list(tmp_path.iterdir()) == []


def test_errors(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a text file, not a video\n" * 20)
    with pytest.raises(InputError, match=r"notes\.mp4: not a readable video"):
        probe_video(fake)
    with pytest.raises(InputError, match=r"notes\.mp4: not a readable video"):
        read_video(fake)
    with pytest.raises(InputError, match=r"gone\.mp4: missing"):
        probe_video(tmp_path / "gone.mp4")
    with pytest.raises(ValueError, match="stride"):
        read_video(tmp_path / "gone.mp4", stride=0)


@pytest.mark.skipif(not REAL_CLIP.exists(), reason=f"{REAL_CLIP} not present")
def test_real_laparoscopic_clip():
    info = probe_video(REAL_CLIP)
    assert (info.width, info.height, info.num_frames, info.fps) == (640, 360, 250, 25.0)
    frames = list(read_video(REAL_CLIP, start_s=9.0, stride=5, size=(320, 180)))
    assert [f.index for f in frames] == [225, 230, 235, 240, 245]
    assert frames[0].rgb.shape == (180, 320, 3) and frames[0].time_s == pytest.approx(9.0)
