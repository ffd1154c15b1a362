"""``endo3d reconstruct VIDEO`` end to end on tiny simulated input (an image folder and an mp4), resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from endo3d.cli.main import main
from endo3d.gs.config import ReconstructConfig
from endo3d.io import VideoWriter, probe_video, read_png, read_rgb, write_png
from endo3d.pipeline.config import VideoSettings
from endo3d.pipeline.fusion import read_mesh_ply
from endo3d.pipeline.plan import make_plan
from endo3d.gs.data import split
from endo3d.pipeline.run import STAGES, nearest_training_frame

# every stage runs, each for a few steps
TINY = ["--width", "64", "--adapt-steps", "4", "--video.pose-warmup", "1", "--video.depth-batch", "2",
        "--video.pose-width", "8", "--video.align-steps", "5", "--iterations", "20", "--coarse-iterations", "5",
        "--init-points", "300", "--no-progress"]


@pytest.fixture(scope="module")
def video(tissue, tmp_path_factory) -> Path:
    """The simulated tissue frames as an mp4 (what a user has), 10 frames at 128x96."""
    path = tmp_path_factory.mktemp("video") / "tissue.mp4"
    with VideoWriter(path, fps=10.0) as writer:
        for k in range(10):
            writer.write(read_png(tissue / "rgb" / f"{k:06d}.png"))
    return path


@pytest.fixture(scope="module")
def run(video, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["reconstruct", str(video), "--out", str(out), *TINY]) == 0
    return out


def test_split_and_nearest_training_frame():
    train, test = split(range(18))
    assert test == [1, 9, 17] and len(train) == 15
    assert nearest_training_frame(1, train) == 0 and nearest_training_frame(9, train) == 8
    assert nearest_training_frame(17, train) == 16


def test_plan_fills_zeros_from_the_video_and_device():
    fast = make_plan(ReconstructConfig(input=Path("v.mp4"), out=Path("r"), fast=True), frames=250, fps=25.0,
                     source_size=(360, 640), cuda=False)
    assert (fast.width, fast.height, fast.stride, fast.adapt_steps) == (160, 90, math.ceil(250 / 48), 150)
    assert fast.net_height % 14 == 0 and fast.net_width % 14 == 0
    clipped = make_plan(ReconstructConfig(input=Path("v.mp4"), out=Path("r"), start=2.0, end=4.0, width=1000),
                        frames=250, fps=25.0, source_size=(360, 640), cuda=True)
    assert clipped.stride == 1 and clipped.width == 640  # 50 frames fit; never wider than the video
    assert clipped.pose_warmup == clipped.adapt_steps // 4
    assert (clipped.net_width, clipped.net_height) == (322, 182)  # half the working 640x360 on CUDA, 14-aligned
    assert (fast.net_width, fast.net_height) == (160 // 14 * 14, 84)
    narrow = make_plan(ReconstructConfig(input=Path("v.mp4"), out=Path("r"), video=VideoSettings(net_width=9000)),
                       frames=250, fps=25.0, source_size=(360, 640), cuda=True)
    assert narrow.net_width == 644  # never wider than the working width (640, rounded to 14)
    assert fast.focal_probe_steps == 300 // 5  # the focal is estimated, so it is probed
    given = make_plan(ReconstructConfig(input=Path("v.mp4"), out=Path("r"), fast=True, K=(100.0, 100.0, 80.0, 45.0)),
                      frames=250, fps=25.0, source_size=(360, 640), cuda=False)
    unprobed = make_plan(ReconstructConfig(input=Path("v.mp4"), out=Path("r"), video=VideoSettings(focal_probe=False)),
                         frames=250, fps=25.0, source_size=(360, 640), cuda=False)
    assert given.focal_probe_steps == 0 and unprobed.focal_probe_steps == 0
    # --deformation auto: the temporal bases for a video, without camera refinement; a named field is kept,
    # and the HexPlane field refines the cameras
    user = ReconstructConfig(input=Path("v.mp4"), out=Path("r"))
    bases = fast.gaussian_config(user)
    assert (bases.deformation, bases.refine_poses) == ("basis", "off")
    hexplane = fast.gaussian_config(dataclasses.replace(user, deformation="hexplane"))
    assert (hexplane.deformation, hexplane.refine_poses) == ("hexplane", "on")
    forced = fast.gaussian_config(dataclasses.replace(user, refine_poses="on"))
    assert (forced.deformation, forced.refine_poses) == ("basis", "on")


def test_run_folder_has_every_output(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_frames"] == [1, 9]
    for key in ("psnr", "ssim", "train_seconds", "render_fps", "num_gaussians"):
        assert isinstance(metrics[key], (int, float)) and math.isfinite(metrics[key]), key
    assert math.isfinite(metrics["baseline_nearest_frame"]["psnr"])
    assert metrics["metric_scale"] is False and metrics["depth_rmse_mm"] is None
    basis = json.loads((run / "config.json").read_text())["basis"]
    assert metrics["deformation"] == "basis" and basis["init_width"] == pytest.approx(1 / 9)  # 10 frames
    assert set(metrics["stage_seconds"]) == set(STAGES)
    cameras = json.loads((run / "cameras.json").read_text())
    assert (cameras["width"], cameras["height"]) == (64, 48) and len(cameras["frames"]) == 10
    c2w = np.array([f["c2w"] for f in cameras["frames"]])
    R = c2w[:, :3, :3]
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    K = np.array(cameras["K"])
    assert K[0, 0] > 0 and K[1, 1] > 0 and 0 <= K[0, 2] < 64 and 0 <= K[1, 2] < 48
    probe = metrics["cameras"]["focal_probe"]  # K was estimated, so it was probed
    assert probe["relative_change"] == 0.1 and isinstance(probe["determined"], bool)
    assert len(probe["objective_rise"]) == 2 and all(math.isfinite(r) for r in probe["objective_rise"])
    assert sorted(p.name for p in (run / "renders").glob("*.png")) == ["000001.png", "000009.png"]
    depth = [np.load(run / "depth" / f"{i:06d}.npy") for i in range(10)]
    assert all(d.shape == (48, 64) and d.dtype == np.float32 and (d > 0).mean() > 0.5 for d in depth)
    assert read_png(run / "depth" / "000000.png").shape == (48, 64, 3)
    mesh = read_mesh_ply(run / "mesh.ply")
    assert len(mesh.faces) > 0
    for name in ("point_cloud.ply", "checkpoint.pt", "report.html", "pipeline.json"):
        assert (run / name).is_file(), name
    assert not (run.parent / f".{run.name}.partial").exists()


def test_metrics_recompute_from_the_renders_and_the_video(run, video):
    """The held-out PSNR in metrics.json is the PSNR of the stored 8-bit renders against the decoded frames."""
    from endo3d.gs.metrics import image_metrics
    from endo3d.pipeline.frames import load_clip

    metrics = json.loads((run / "metrics.json").read_text())
    clip = load_clip(video, width=64)
    for row in metrics["per_frame"]:
        i = row["index"]
        render = torch.from_numpy(read_rgb(run / "renders" / f"{i:06d}.png"))
        m = image_metrics(render, clip.rgb[i], clip.valid[i])
        assert m.psnr == pytest.approx(row["psnr"], abs=1e-4)
        baseline = image_metrics(clip.rgb[nearest_training_frame(i, split(range(len(clip)))[0])], clip.rgb[i],
                                 clip.valid[i])
        assert baseline.psnr == pytest.approx(row["baseline_psnr"], abs=1e-4)


def test_report_names_the_stages_and_shows_the_strip(run):
    html = (run / "report.html").read_text()
    for stage in ("depth", "cameras", "gaussians"):
        assert stage in html
    assert html.count("<img") == 2 * 3 + 1  # two held-out frames x (input, render, depth) + the mesh
    assert "nearest training frame" in html
    assert "focal length" in html and "at -/+10 %" in html


def test_render_command_works_on_a_video_run(run, tmp_path):
    out = tmp_path / "orbit.mp4"
    assert main(["render", str(run), "--out", str(out), "--path", "orbit", "--frames", "4"]) == 0
    assert probe_video(out).num_frames == 4


def test_resume_skips_finished_stages(tissue, tmp_path, monkeypatch):
    """Interrupted in the Gaussian stage, ``--resume`` reuses the depth run, cameras and mesh (training the depth
    network again would fail here) and finishes."""
    from endo3d.depth import train as depth_train
    from endo3d.gs.train import Trainer

    out = tmp_path / "run"
    argv = ["reconstruct", str(tissue / "rgb"), "--out", str(out), *TINY]
    original_fit = Trainer.fit

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    assert main(argv) == 130  # Ctrl-C
    staging = tmp_path / ".run.partial"
    assert (staging / "depth_model" / "run.json").is_file() and (staging / "cameras.pt").is_file()
    assert (staging / "mesh.ply").is_file() and not out.exists()
    before = torch.load(staging / "cameras.pt", weights_only=False)["c2w"]
    first = json.loads((staging / "stage_seconds.json").read_text())
    assert first["depth"] > 0 and first["gaussians"] > 0  # the interrupted attempt's time counts too

    monkeypatch.setattr(Trainer, "fit", original_fit)

    def no_training(*args, **kwargs):
        raise AssertionError("the finished depth stage ran again")

    monkeypatch.setattr(depth_train, "train", no_training)
    assert main([*argv[:4], "--width", "80", *argv[6:], "--resume"]) == 2  # other settings: refused
    assert main([*argv, "--resume"]) == 0
    assert torch.equal(torch.load(out / "cameras.pt", weights_only=False)["c2w"], before)  # the stage was reused
    seconds = json.loads((out / "metrics.json").read_text())["stage_seconds"]
    assert all(seconds[k] >= first[k] for k in ("depth", "cameras", "mesh", "gaussians"))  # the first attempt's
    assert seconds["frames"] > first["frames"] and not (out / "stage_seconds.json").exists()


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tissue, tmp_path, capsys):
    def fails(argv, needle):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("endo3d: error:") and "\n" not in err and needle in err, err

    out = ["--out", str(tmp_path / "r")]
    fails(["reconstruct", str(tmp_path / "nowhere.mp4"), *out], "nowhere.mp4: missing")
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    fails(["reconstruct", str(junk), *out], "junk.mp4")
    one = tmp_path / "one"
    one.mkdir()
    (one / "000000.png").write_bytes((tissue / "rgb" / "000000.png").read_bytes())
    fails(["reconstruct", str(one), *out], "frame")
    fails(["reconstruct", str(tissue / "rgb"), *out, "--start", "100"], "rgb")  # nothing left after the crop
    fails(["reconstruct", str(tissue / "rgb"), *out, "--K", "100", "100", "500", "40"], "principal point")
    fails(["reconstruct", str(tissue / "rgb"), *out, "--end", "0"], "--end")
    fails(["reconstruct", str(tissue / "rgb"), *out, "--end", "inf"], "end time")
    fails(["reconstruct", str(tissue / "rgb"), *out, "--start", "nan"], "start time")
    fails(["reconstruct", str(tissue / "rgb"), *out, "--width", "8"], "working width")
    fails(["reconstruct", str(tissue), *out, "--stride", "2"], "--stride")
    assert not (tmp_path / "r").exists() and not (tmp_path / ".r.partial").exists()


def test_held_out_images_move_only_their_own_cameras_and_degenerate_ones_still_score(tissue, tmp_path):
    """Held-out frame 1 replaced by a white-out (no valid pixel: its PSNR is n/a) and held-out frame 9 by a copy
    of training frame 8 (the baseline is perfect: PSNR at its cap): the run finishes, and the training cameras,
    the intrinsics and the training frames' depth equal those of the unchanged clip."""
    from endo3d.gs.metrics import PSNR_CAP_DB

    changed = tmp_path / "changed"
    changed.mkdir()
    for k in range(10):
        image = read_png(tissue / "rgb" / f"{k:06d}.png")
        if k == 1:
            image = np.full_like(image, 255)
        elif k == 9:
            image = read_png(tissue / "rgb" / "000008.png")
        write_png(changed / f"{k:06d}.png", image)
    runs = {}
    for name, source in (("same", tissue / "rgb"), ("changed", changed)):
        runs[name] = tmp_path / f"run_{name}"
        assert main(["reconstruct", str(source), "--out", str(runs[name]), *TINY]) == 0
    cams = {k: json.loads((r / "cameras.json").read_text()) for k, r in runs.items()}
    train = split(range(10))[0]
    for i in train:
        assert cams["changed"]["frames"][i]["c2w"] == cams["same"]["frames"][i]["c2w"], i
        assert np.array_equal(np.load(runs["changed"] / "depth" / f"{i:06d}.npy"),
                              np.load(runs["same"] / "depth" / f"{i:06d}.npy")), i
    assert cams["changed"]["K"] == cams["same"]["K"]
    assert cams["changed"]["frames"][1]["c2w"] != cams["same"]["frames"][1]["c2w"]  # its own camera did move
    metrics = json.loads((runs["changed"] / "metrics.json").read_text())
    white, copy = metrics["per_frame"]
    assert white["psnr"] is None and white["baseline_psnr"] is None
    assert copy["baseline_psnr"] == PSNR_CAP_DB
    assert "PSNR n/a dB" in (runs["changed"] / "report.html").read_text()
