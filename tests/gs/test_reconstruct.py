"""``endo3d reconstruct`` / ``endo3d render`` end to end on a tiny simulated tissue sequence."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from endo3d.cli.main import main
from endo3d.gs.config import DensifyConfig, ReconstructConfig
from endo3d.gs.data import load_frames
from endo3d.gs.metrics import image_metrics, mean_metrics
from endo3d.gs.reconstruct import reconstruct
from endo3d.gs import train as train_module
from endo3d.io import probe_video, read_rgb

# densification and checkpoints happen inside these 80 steps (the resume test adds an opacity reset)
TINY = dict(iterations=60, coarse_iterations=20, init_points=3000, checkpoint_every=20, progress=False,
            densify=DensifyConfig(refine_start=10, refine_every=15))


@pytest.fixture(scope="module")
def run(tissue, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    reconstruct(ReconstructConfig(input=tissue, out=out, **TINY))
    return out


def test_run_folder_has_the_conventions_outputs(run, tissue):
    for name in ("metrics.json", "point_cloud.ply", "cameras.json", "checkpoint.pt", "config.json"):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    for key in ("psnr", "ssim", "lpips", "depth_rmse_mm", "train_seconds", "render_fps", "num_gaussians",
                "device", "test_frames"):
        assert key in m
    assert m["test_frames"] == [1, 9] and m["device"] == "cpu" and m["lpips"] is None
    # --deformation auto is EndoGaussian's HexPlane for a dataset, and the run records the resolved field
    assert m["deformation"] == "hexplane" == json.loads((run / "config.json").read_text())["deformation"]
    assert sorted(p.name for p in (run / "renders").glob("*.png")) == ["000001.png", "000009.png"]
    assert not (run.parent / ".run.partial").exists()
    # a few dozen steps already fit the tissue far better than a blank image
    assert m["psnr_tissue"] > 18 and m["depth_rmse_mm"] < 15


def test_metrics_recompute_from_renders(run, tissue):
    """renders/ holds exactly what metrics.json scored."""
    m = json.loads((run / "metrics.json").read_text())
    frames = load_frames(tissue)
    scores = [image_metrics(torch.from_numpy(read_rgb(run / "renders" / f"{i:06d}.png")), frames.rgb[i],
                            frames.valid[i]) for i in m["test_frames"]]
    again = mean_metrics(scores)
    assert again["psnr"] == pytest.approx(m["psnr"], abs=1e-4)
    assert again["psnr_tissue"] == pytest.approx(m["psnr_tissue"], abs=1e-4)
    assert again["ssim"] == pytest.approx(m["ssim"], abs=1e-5)


def test_cameras_json_matches_the_input(run, tissue):
    cams = json.loads((run / "cameras.json").read_text())
    meta = json.loads((tissue / "meta.json").read_text())
    assert (cams["width"], cams["height"]) == (meta["width"], meta["height"])
    assert np.allclose(cams["K"], meta["camera"]["K"], atol=1e-4)
    assert [f["index"] for f in cams["frames"]] == [f["index"] for f in meta["frames"]]
    assert np.allclose([f["c2w"] for f in cams["frames"]], [f["c2w"] for f in meta["frames"]], atol=1e-4)


def test_point_cloud_is_a_standard_3dgs_ply(run):
    plyfile = pytest.importorskip("plyfile")
    ply = plyfile.PlyData.read(str(run / "point_cloud.ply"))
    names = [p.name for p in ply["vertex"].properties]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(45)] + ["opacity", "scale_0", "scale_1", "scale_2"]
                + ["rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected
    m = json.loads((run / "metrics.json").read_text())
    assert ply["vertex"].count == m["num_gaussians"]
    assert np.isfinite(np.stack([ply["vertex"][n] for n in names])).all()


def test_render_writes_a_playable_video(run, tmp_path):
    out = tmp_path / "orbit.mp4"
    assert main(["render", str(run), "--out", str(out), "--path", "orbit", "--frames", "6"]) == 0
    info = probe_video(out)
    assert info.num_frames == 6
    assert info.width == 2 * 128  # render + depth panel side by side
    assert main(["render", str(run), "--out", str(tmp_path / "train.mp4"), "--no-depth-panel"]) == 0
    assert probe_video(tmp_path / "train.mp4").num_frames == 10


@pytest.mark.parametrize("deformation", ["hexplane", "basis"])
def test_resume_continues_bit_for_bit(tissue, tmp_path, monkeypatch, deformation):
    settings = dict(TINY, deformation=deformation,
                    densify=DensifyConfig(refine_start=10, refine_every=15, reset_every=45))
    straight = tmp_path / "straight"
    reconstruct(ReconstructConfig(input=tissue, out=straight, **settings))
    assert json.loads((straight / "metrics.json").read_text())["num_gaussians"] != 3000  # densification ran
    if deformation == "basis":  # the default width, 0, is recorded as one frame spacing of the 10-frame clip
        config = torch.load(straight / "checkpoint.pt", weights_only=False)["config"]
        assert config["basis"]["init_width"] == pytest.approx(1 / 9)

    interrupted = tmp_path / "interrupted"
    original = train_module.Trainer.train_step

    def crash_at_50(self):
        if self.step == 50:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(train_module.Trainer, "train_step", crash_at_50)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(ReconstructConfig(input=tissue, out=interrupted, **settings))
    monkeypatch.setattr(train_module.Trainer, "train_step", original)
    assert not interrupted.exists()
    state = torch.load(tmp_path / ".interrupted.partial" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 40  # the last checkpoint before the interruption

    reconstruct(ReconstructConfig(input=tissue, out=interrupted, resume=True, **settings))
    a = torch.load(straight / "checkpoint.pt", weights_only=False)["splats"]
    b = torch.load(interrupted / "checkpoint.pt", weights_only=False)["splats"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_trainer_needs_a_resolved_field(tissue, tmp_path):
    """``--deformation auto`` means nothing to the trainer: reconstruct (dataset) or the video plan resolves it."""
    config = ReconstructConfig(input=tissue, out=tmp_path / "r")
    with pytest.raises(ValueError, match="resolved"):
        train_module.field_config(config)
    basis = dataclasses.replace(config, deformation="basis")
    assert train_module.resolve_field(basis, frames=33).basis.init_width == pytest.approx(1 / 32)  # frame spacing
    assert train_module.resolve_field(basis, frames=250).basis.init_width == 0.01  # never below Deform3DGS's
    given = dataclasses.replace(config, deformation="basis", basis=dataclasses.replace(config.basis, init_width=0.01))
    assert train_module.resolve_field(given, frames=33) is given


def test_bad_input_exits_2_with_one_line(tissue, tmp_path, capsys):
    def fails(argv, needle):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("endo3d: error:") and "\n" not in err and needle in err, err

    fails(["reconstruct", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")], "nowhere")
    no_depth = tmp_path / "no_depth"
    shutil.copytree(tissue, no_depth)
    meta = json.loads((no_depth / "meta.json").read_text())
    for f in meta["frames"]:
        f.pop("depth")
    (no_depth / "meta.json").write_text(json.dumps(meta))
    fails(["reconstruct", str(no_depth), "--out", str(tmp_path / "r")], "no depth")
    fails(["reconstruct", str(tissue), "--out", str(tmp_path / "r"), "--resume"], "nothing to resume")
    if not torch.cuda.is_available():
        fails(["reconstruct", str(tissue), "--out", str(tmp_path / "r"), "--device", "cuda"], "CUDA")
        fails(["reconstruct", str(tissue), "--out", str(tmp_path / "r"), "--rasterizer", "gsplat"], "gsplat")
    one = tmp_path / "one"
    shutil.copytree(tissue, one)
    meta = json.loads((one / "meta.json").read_text())
    meta["frames"] = meta["frames"][:1]
    (one / "meta.json").write_text(json.dumps(meta))
    fails(["reconstruct", str(one), "--out", str(tmp_path / "r")], "one frame")
    fails(["render", str(tmp_path / "nowhere"), "--out", str(tmp_path / "v.mp4")], "checkpoint.pt")
    fails(["reconstruct", str(tissue), "--out", str(tmp_path / "r"), "--hexplane.resolution", "1"], "resolution")
    fails(["reconstruct", str(tissue), "--out", str(tmp_path / "r"), "--densify.refine-every", "0"], "refine_every")
    assert not (tmp_path / "r").exists() and not (tmp_path / ".r.partial").exists()
