"""The video front end: frame selection, resizing, field of view, speculars, instrument masks, bad input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from endo3d.core.errors import InputError
from endo3d.io import VideoWriter, write_png
from endo3d.pipeline.frames import Clip, detect_fov, detect_specular, load_clip, probe_clip, working_size

H, W, N, FPS = 96, 128, 16, 25.0
CENTRE, RADIUS = (48.0, 64.0), 46.0  # the aperture, pixels (row, column)
BLOB, BLOB_RADIUS = (48, 40), 7  # a dark spot of tissue inside the aperture
DOTS_PER_FRAME, DOT = 4, 4  # white highlights of DOT x DOT pixels at even positions (chroma is 2x2)


@dataclass
class Synthetic:
    video: Path
    frames: np.ndarray  # uint8 (N, H, W, 3)
    aperture: np.ndarray  # bool (H, W)
    dots: np.ndarray  # bool (N, H, W): planted highlights


def _disk(centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[:H, :W]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def _dot_positions(rng: np.random.Generator) -> list[tuple[int, int]]:
    """Even (row, col) corners of highlights inside the aperture, away from its rim and from the blob."""
    positions = []
    while len(positions) < DOTS_PER_FRAME:
        r, c = 2 * rng.integers(8, 40), 2 * rng.integers(10, 54)
        inside = (r + 2 - CENTRE[0]) ** 2 + (c + 2 - CENTRE[1]) ** 2 < (RADIUS - 10) ** 2
        off_blob = (r + 2 - BLOB[0]) ** 2 + (c + 2 - BLOB[1]) ** 2 > (BLOB_RADIUS + 6) ** 2
        apart = all(abs(r - q) + abs(c - p) > 12 for q, p in positions)
        if inside and off_blob and apart:
            positions.append((r, c))
    return positions


def make_frames(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reddish moving texture (max channel <= 0.65, saturated) in a black disk, a dark blob, white dots."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:H, :W].astype(np.float64)
    aperture = _disk(CENTRE, RADIUS)
    blob = _disk(BLOB, BLOB_RADIUS)
    frames = np.zeros((N, H, W, 3), np.uint8)
    dots = np.zeros((N, H, W), bool)
    for i in range(N):
        wave = 0.5 + 0.25 * np.sin((cols + 2 * i) / 5.0) + 0.25 * np.cos((rows - i) / 7.0)
        rgb = np.stack([0.35 + 0.3 * wave, 0.12 + 0.12 * wave, 0.08 + 0.08 * wave], axis=-1)
        rgb[blob] = 0.02
        rgb[~aperture] = 0.0
        for r, c in _dot_positions(rng):
            rgb[r:r + DOT, c:c + DOT] = 1.0
            dots[i, r:r + DOT, c:c + DOT] = True
        frames[i] = np.rint(rgb * 255)
    return frames, aperture, dots


def write_video(path: Path, frames: np.ndarray, fps: float = FPS) -> Path:
    with VideoWriter(path, fps, crf=10) as video:
        for frame in frames:
            video.write(frame)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Synthetic:
    frames, aperture, dots = make_frames()
    video = write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames)
    return Synthetic(video, frames, aperture, dots)


@pytest.fixture(scope="module")
def full(synthetic) -> Clip:
    """The synthetic video loaded at its own size."""
    return load_clip(synthetic.video)


def write_images(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir()
    for i, frame in enumerate(frames):
        write_png(folder / f"{i:04d}.png", frame)
    return folder


def rectangles(n: int = N) -> np.ndarray:
    """Instrument masks: bool (n, H, W), a 20x10 bar at even coordinates moving right by 4 px a frame."""
    masks = np.zeros((n, H, W), bool)
    for i in range(n):
        masks[i, 10:30, 4 * i: 4 * i + 10] = True
    return masks


# ---------------------------------------------------------------- sizes and selection


def test_working_size():
    assert working_size((360, 640), 160) == (90, 160)
    assert working_size((360, 640), 0) == (360, 640)
    assert working_size((360, 640), 1000) == (360, 640)  # never larger than the source
    assert working_size((97, 131), 0) == (96, 130)  # even, within an odd source
    assert working_size((100, 1000), 16) == (16, 16)  # at least 16 high
    assert working_size((480, 640), 101) == (76, 100)
    for bad in (-1, 8):
        with pytest.raises(ValueError):
            working_size((360, 640), bad)


def test_probe(synthetic, tmp_path):
    assert probe_clip(synthetic.video) == (N, H, W, FPS)
    folder = write_images(tmp_path / "images", synthetic.frames[:5])
    assert probe_clip(folder, image_fps=10.0) == (5, H, W, 10.0)


def test_full_clip(full, synthetic):
    assert len(full) == N and (full.height, full.width) == (H, W) and full.source_size == (H, W)
    assert full.rgb.dtype == torch.float32 and full.rgb.shape == (N, 3, H, W)
    assert full.fov.dtype == torch.bool and full.fov.shape == (1, H, W)
    assert full.specular.dtype == torch.bool and full.specular.shape == (N, 1, H, W)
    assert full.instruments is None and full.valid.shape == (N, 1, H, W)
    assert full.index.dtype == np.int64 and full.time_s.dtype == np.float64
    np.testing.assert_array_equal(full.index, np.arange(N))
    np.testing.assert_allclose(full.time_s, np.arange(N) / FPS, atol=1e-9)
    assert full.fps == FPS and full.source == synthetic.video
    error = np.abs(full.rgb.permute(0, 2, 3, 1).numpy() - synthetic.frames / 255.0)
    assert np.median(error) < 0.02


@pytest.mark.parametrize("options, expected", [
    (dict(start_s=0.12, end_s=0.5, stride=2, max_frames=3), [3, 5, 7]),
    (dict(start_s=0.12, end_s=0.5), list(range(3, 13))),
    (dict(stride=5), [0, 5, 10, 15]),
    (dict(max_frames=4), [0, 1, 2, 3]),
    (dict(start_s=0.6, stride=3), [15]),
])
def test_selection(synthetic, options, expected):
    clip = load_clip(synthetic.video, width=64, detect_fov_mask=False, **options)
    np.testing.assert_array_equal(clip.index, expected)
    np.testing.assert_allclose(clip.time_s, np.asarray(expected) / FPS, atol=1e-9)
    assert clip.rgb.shape == (len(expected), 3, 48, 64)


def test_resize_averages(synthetic, full):
    half = load_clip(synthetic.video, width=64, max_frames=4)
    assert half.rgb.shape == (4, 3, 48, 64)
    pooled = torch.nn.functional.avg_pool2d(full.rgb[:4], 2)
    assert (half.rgb - pooled).abs().mean() < 0.02


def test_image_folder(synthetic, tmp_path):
    folder = write_images(tmp_path / "images", synthetic.frames[:10])
    clip = load_clip(folder, image_fps=10.0, start_s=0.3, stride=2)
    np.testing.assert_array_equal(clip.index, [3, 5, 7, 9])
    np.testing.assert_allclose(clip.time_s, [0.3, 0.5, 0.7, 0.9])
    assert clip.fps == 10.0 and clip.source == folder
    expected = torch.from_numpy(synthetic.frames[[3, 5, 7, 9]]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(clip.rgb, expected)  # lossless, no resize
    small = load_clip(folder, width=64, max_frames=2)
    assert small.rgb.shape == (2, 3, 48, 64) and small.source_size == (H, W)
    first_two = torch.from_numpy(synthetic.frames[:2]).permute(0, 3, 1, 2).float() / 255
    assert (small.rgb - torch.nn.functional.avg_pool2d(first_two, 2)).abs().max() < 0.01


def test_jpeg_folder(synthetic, tmp_path):
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "jpegs"
    folder.mkdir()
    for i in range(3):
        image.fromarray(synthetic.frames[i]).save(folder / f"frame{i}.jpg", quality=95)
    clip = load_clip(folder)
    assert clip.rgb.shape == (3, 3, H, W)
    assert np.abs(clip.rgb[0].permute(1, 2, 0).numpy() - synthetic.frames[0] / 255).mean() < 0.03


# ---------------------------------------------------------------- field of view and speculars


def test_fov_matches_aperture_and_keeps_dark_tissue(full, synthetic):
    fov = full.fov[0].numpy()
    iou = (fov & synthetic.aperture).sum() / (fov | synthetic.aperture).sum()
    assert iou > 0.9
    assert not fov[~synthetic.aperture].any()  # eroded: never outside the aperture
    assert fov[_disk(BLOB, BLOB_RADIUS + 2)].all()  # dark tissue inside stays


def test_fov_without_border_or_in_the_dark():
    torch.manual_seed(0)
    bright = 0.2 + 0.6 * torch.rand(5, 3, 48, 64)
    assert detect_fov(bright).all()
    dark = bright.clone()
    dark[:, :, 20:28, 28:36] = 0.0  # black inside, not touching the border
    assert detect_fov(dark).all()
    night = 0.03 * torch.rand(5, 3, 48, 64)
    night[:, :, 20:28, 28:36] = 0.5  # only a small lit patch: a dark video, not a tiny aperture
    assert detect_fov(night).all()


def test_fov_letterbox():
    rgb = torch.full((4, 3, 64, 80), 0.5)
    rgb[:, :, :8] = 0.0
    rgb[:, :, -8:] = 0.01
    fov = detect_fov(rgb)[0]
    assert not fov[:9].any() and not fov[-9:].any() and fov[12:-12].all()


def test_specular_recall_and_precision(full, synthetic):
    found = full.specular[:, 0].numpy()
    near_dot = torch.nn.functional.max_pool2d(torch.from_numpy(synthetic.dots).float()[:, None], 5, 1, 2)[:, 0] > 0
    recall = found[synthetic.dots].mean()
    precision = near_dot.numpy()[found].mean()
    assert recall > 0.95 and precision > 0.95
    assert not full.valid[:, 0].numpy()[synthetic.dots].any()


def test_specular_colour_threshold_and_dilation():
    rgb = torch.full((1, 3, 16, 16), 0.3)
    rgb[0, :, 4, 4] = 0.97  # white highlight: one pixel, dilated to 3x3
    rgb[0, :, 10, 10] = torch.tensor([1.0, 0.4, 0.3])  # bright but saturated red: tissue
    found = detect_specular(rgb)[0, 0]
    assert found[3:6, 3:6].all() and found.sum() == 9
    assert not detect_specular(rgb, threshold=1.0).any()
    assert not detect_specular(rgb, threshold=0.98).any()


# ---------------------------------------------------------------- instrument masks


def test_mask_folder(synthetic, tmp_path):
    truth = rectangles()
    folder = tmp_path / "masks"
    folder.mkdir()
    for i, mask in enumerate(truth):
        write_png(folder / f"{i:03d}.png", mask.astype(np.uint8) * 7)  # any non-zero value
    clip = load_clip(synthetic.video, width=64, stride=3, masks=folder)
    assert clip.instruments.dtype == torch.bool and clip.instruments.shape == (6, 1, 48, 64)
    expected = torch.from_numpy(truth[clip.index][:, 1::2, 1::2])  # nearest sampling of a 2x downscale
    assert torch.equal(clip.instruments[:, 0], expected)
    assert not (clip.valid & clip.instruments).any()


def test_mask_single_file(synthetic, tmp_path):
    static = np.zeros((H // 2, W // 2), np.uint8)  # half size: same aspect ratio
    static[-10:] = 255
    write_png(tmp_path / "overlay.png", static)
    clip = load_clip(synthetic.video, max_frames=3, masks=tmp_path / "overlay.png")
    assert clip.instruments.shape == (3, 1, H, W)
    assert clip.instruments[:, 0, -20:].all() and not clip.instruments[:, 0, :-20].any()


def test_mask_video(synthetic, tmp_path):
    truth = rectangles()
    video = write_video(tmp_path / "masks.mp4", np.repeat(truth[..., None], 3, axis=3).astype(np.uint8) * 255)
    clip = load_clip(synthetic.video, start_s=0.2, stride=4, masks=video)
    np.testing.assert_array_equal(clip.index, [5, 9, 13])
    wrong = (clip.instruments[:, 0].numpy() != truth[clip.index]).mean()
    assert wrong < 0.005


def test_mask_count_and_aspect_errors(synthetic, tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    for i in range(N - 1):
        write_png(folder / f"{i:03d}.png", np.zeros((H, W), np.uint8))
    with pytest.raises(InputError) as error:
        load_clip(synthetic.video, masks=folder)
    assert str(error.value).startswith(str(folder))
    assert f"{N - 1} " in str(error.value) and f"{N} " in str(error.value)
    square = tmp_path / "square.png"
    write_png(square, np.zeros((50, 50), np.uint8))
    with pytest.raises(InputError, match="aspect ratio") as error:
        load_clip(synthetic.video, max_frames=1, masks=square)
    assert str(error.value).startswith(str(square))


# ---------------------------------------------------------------- bad input


BAD_INPUTS = [
    "missing", "wrong suffix", "unreadable video", "empty folder", "start equals end", "start after end",
    "start beyond the clip", "negative start", "stride 0", "negative max_frames", "tiny width",
    "images of different sizes", "corrupt image", "zero image fps", "missing masks", "masks of an unknown kind",
    "tiny frames",
]


@pytest.fixture(scope="module")
def bad_inputs(synthetic, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each bad case: (the path its error must start with, load_clip arguments)."""
    tmp = tmp_path_factory.mktemp("bad")
    text = tmp / "notes.txt"
    text.write_text("not a video")
    garbage = tmp / "broken.mp4"
    garbage.write_bytes(b"\0garbage" * 64)
    empty = tmp / "empty"
    empty.mkdir()
    mixed = write_images(tmp / "mixed", synthetic.frames[:2])
    write_png(mixed / "0002.png", synthetic.frames[2, :64])
    corrupt = write_images(tmp / "corrupt", synthetic.frames[:1])
    (corrupt / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    tiny = write_images(tmp / "tiny", synthetic.frames[:2, :8, :8])
    video = synthetic.video

    def on(path: Path, **options) -> tuple[Path, dict]:
        return path, dict(path=path, **options)

    def with_masks(masks: Path) -> tuple[Path, dict]:
        return masks, dict(path=video, masks=masks, max_frames=1)

    return {
        "missing": on(tmp / "nowhere.mp4"),
        "wrong suffix": on(text),
        "unreadable video": on(garbage),
        "empty folder": on(empty),
        "start equals end": on(video, start_s=0.2, end_s=0.2),
        "start after end": on(video, start_s=0.4, end_s=0.1),
        "start beyond the clip": on(video, start_s=100.0),
        "negative start": on(video, start_s=-1.0),
        "stride 0": on(video, stride=0),
        "negative max_frames": on(video, max_frames=-1),
        "tiny width": on(video, width=8),
        "images of different sizes": on(mixed),
        "corrupt image": on(corrupt),
        "zero image fps": on(mixed, image_fps=0.0),
        "missing masks": with_masks(tmp / "no_masks"),
        "masks of an unknown kind": with_masks(text),
        "tiny frames": on(tiny),
    }


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_input_error(bad_inputs, case):
    prefix, options = bad_inputs[case]
    with pytest.raises(InputError) as error:
        load_clip(**options)
    message = str(error.value)
    assert message.startswith(str(prefix)) and "\n" not in message, message


@pytest.mark.parametrize("case", ["missing", "wrong suffix", "unreadable video", "empty folder", "tiny frames"])
def test_probe_bad_input(bad_inputs, case):
    path, _ = bad_inputs[case]
    with pytest.raises(InputError) as error:
        probe_clip(path)
    assert str(error.value).startswith(str(path))
