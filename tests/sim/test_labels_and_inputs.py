"""Label consistency at the edges of what a camera sees, and bad scene input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from endo3d.cli.main import main
from endo3d.geometry import depth_to_points
from endo3d.io import read_dataset
from endo3d.sim.instrument import GraspScript, InstrumentPart
from endo3d.sim.scenes.registry import load_spec


def test_jaws_open_away_from_each_other():
    script = GraspScript(trocar=np.array([100.0, 0.0, 80.0]), grasps=np.zeros((1, 3)), up=np.array([0.0, 0.0, 1.0]),
                         period=2.0, pull=np.zeros(3), jaw_open_rad=0.7, grasp_depth_mm=6.0)
    tip = np.array([0.0, 0.0, 10.0, 1.0])  # a point on the jaw axis, instrument frame
    t = 0.3 * 2.0  # fully open: each jaw turned by half the opening
    body = np.linalg.inv(InstrumentPart(script, "body")(t))
    upper = (body @ InstrumentPart(script, "upper")(t) @ tip)[:3]
    lower = (body @ InstrumentPart(script, "lower")(t) @ tip)[:3]
    # the upper jaw is built on +y, the lower on -y: opening moves them further apart
    np.testing.assert_allclose([upper[1], lower[1]], [10 * np.sin(0.35), -10 * np.sin(0.35)], atol=1e-9)


def test_fisheye_labels_agree_pixel_by_pixel(tmp_path, dataset_factory):
    """A 160-degree fisheye sees rays beyond 90 degrees: pixels without a
    positive z-depth are invalid in every label, and labels agree."""
    root = dataset_factory(tmp_path, "colon_fisheye", frames=3, width=80, height=64)
    ds = read_dataset(root)
    for i in range(2):
        f = ds.frame(i)
        tissue = f.mask[0] == 0
        assert torch.equal(tissue, f.depth[0] > 0)
        assert torch.equal(tissue, f.normal.norm(dim=0) > 0)
        assert not f.flow_valid[0][~tissue].any()
        assert (f.rgb[:, f.mask[0] == 255] == 0).all()
        X = depth_to_points(f.depth[None], ds.camera)[0]
        assert ((f.normal * X).sum(0)[tissue] < 0).all()  # every normal faces the camera


def test_valid_flow_lands_on_labelled_pixels(tissue: Path):
    ds = read_dataset(tissue)
    for i in range(len(ds) - 1):
        f, g = ds.frame(i), ds.frame(i + 1)
        v, u = torch.nonzero(f.flow_valid[0], as_tuple=True)
        tu = (u + f.flow[0, v, u]).round().long().clamp(0, ds.camera.width - 1)
        tv = (v + f.flow[1, v, u]).round().long().clamp(0, ds.camera.height - 1)
        assert (g.mask[0, tv, tu] != 255).all()


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path):
    (tmp_path / "colon").mkdir()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert load_spec("colon")[1].kind == "colon"
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("text, problem", [
    ('kind = "colon"\n[palette]\nresolution = 1000', "palette.resolution must be a power of two"),
    ('kind = "colon"\n[camera]\nhfov_deg = 190.0', "camera.hfov_deg must be in (0, 170)"),
    ('kind = "colon"\n[camera]\nmodel = "fisheye"', "fisheye camera needs 4 distortion coefficients"),
    ('kind = "tissue"\n[instrument]\ncycle_s = 0.0', "instrument.cycle_s must be > 0"),
    ('kind = "tissue"\nvertices_per_side = 1', "vertices_per_side must be >= 2"),
    ('kind = "airway"\n[render]\ndepth_scale_mm = 0.0', "render.depth_scale_mm must be > 0"),
    ('kind = "mesh"\nmesh = "x.ply"\n[[keyframes]]\ntime_s = 0.0\neye = [1.0, 2.0, 3.0]\ntarget = [1.0, 2.0, 3.0]',
     "eye and target must differ"),
    ('kind = "colon"\nfold_depth = nan', "fold_depth must be a finite number"),
    ('kind = "colon"\n[sensor]\nexposure = inf', "exposure must be a finite number"),
    ('kind = ["colon"]', "'kind' must be one of"),
    ('kind = "colon"\n[render]\nmax_range_mm = 200.0\ndepth_scale_mm = 0.0005', "beyond what the 16-bit depth"),
    ('kind = "tissue"\ntilt_deg = 90.0', "cannot build the scene"),
    ('kind = "colon"\n[deform]\nvertical_bias = 0.5', "vertical_bias applies to the tissue scene only"),
    ('kind = "tissue"\n[instrument]\ntrocar_mm = [0.0, 0.0, 0.0]\ngrasp_region_mm = 0.0', "no finite position"),
])
def test_bad_scene_values_are_one_line_errors(tmp_path, capsys, text, problem):
    scene = tmp_path / "bad.toml"
    scene.write_text(text)
    code = main(["simulate", "--scene", str(scene), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and problem in err and str(scene) in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, problem", [
    (["--seed", "-1"], "--seed: must be in [0, 2^63)"),
    (["--fps", "1e-300"], "--fps: must be positive and at most 10000"),
    (["--width", "100000", "--height", "100000"], "larger than 8192x8192"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, argv, problem):
    code = main(["simulate", "--scene", "colon", "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and problem in err and err.count("\n") == 1


def test_output_under_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    code = main(["simulate", "--scene", "colon", "--out", str(tmp_path / "afile" / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and "is not a writable folder" in err


def test_mesh_with_dangling_faces(tmp_path, capsys):
    (tmp_path / "bad.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf 1 2 9\n")
    code = main(["simulate", "--scene", str(tmp_path / "bad.obj"), "--out", str(tmp_path / "out"), "--frames", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.obj" in err and err.count("\n") == 1
