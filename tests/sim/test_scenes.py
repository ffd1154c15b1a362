"""Scene files, presets, mesh scenes, and the renderer against a closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from endo3d.core.errors import InputError
from endo3d.io import read_dataset
from endo3d.sim.config import SimulateConfig
from endo3d.sim.frame import FrameRenderer
from endo3d.sim.scene import CameraSpec, LightSpec, RenderSpec, Scene, SensorSpec
from endo3d.sim.scenes.registry import load_spec, preset_names
from endo3d.sim.simulate import simulate
from endo3d.sim.surface import Surface, UniformMaterial
from endo3d.sim.trajectory import Keyframes


def test_presets():
    assert {"colon", "airway", "tissue"} <= set(preset_names())
    for name in preset_names():
        _, spec = load_spec(name)
        assert spec.kind in {"colon", "airway", "tissue", "mesh"}


@pytest.mark.parametrize("text, message", [
    ('kind = "colon"\nradius = 3', "unknown key 'radius'"),
    ('kind = "colon"\nradius_mm = "wide"', "radius_mm must be a number"),
    ('kind = "colon"\n[camera]\nmodel = "orthographic"', "camera.model"),
    ('radius_mm = 3.0', "'kind' must be one of"),
    ('kind = "colon"\nradius_mm = ', "not valid TOML"),
])
def test_bad_scene_files_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as error:
        load_spec(str(path))
    assert str(path) in str(error.value)


def test_unknown_scene_and_missing_mesh():
    with pytest.raises(InputError, match="unknown scene"):
        load_spec("stomach")
    with pytest.raises(InputError, match="mesh file not found"):
        load_spec("nowhere/organ.obj")


def test_mesh_scene_from_file_and_scene_file(tmp_path):
    organ = trimesh.creation.icosphere(subdivisions=4, radius=30.0)
    organ.vertices[:, 2] *= 0.7
    organ.export(tmp_path / "organ.ply")
    out = tmp_path / "orbit"
    simulate(SimulateConfig(scene=str(tmp_path / "organ.ply"), out=out, frames=3, width=64, height=48, workers=1,
                            preview=False), progress=False)
    ds = read_dataset(out)
    hit = ds.frame(1).mask[0] == 0
    assert hit.float().mean() > 0.2  # the organ fills part of the view
    depth = ds.frame(1).depth[0][hit]
    assert 30.0 < float(depth.min()) < float(depth.max()) < 2.2 * 30 + 30  # outside the organ, looking at it

    (tmp_path / "inside.toml").write_text(
        'kind = "mesh"\nmesh = "organ.ply"\n'
        '[[keyframes]]\ntime_s = 0.0\neye = [0.0, 0.0, 0.0]\ntarget = [20.0, 0.0, 0.0]\n'
        '[[keyframes]]\ntime_s = 1.0\neye = [0.0, 0.0, 0.0]\ntarget = [0.0, 20.0, 0.0]\n')
    out = tmp_path / "inside"
    simulate(SimulateConfig(scene=str(tmp_path / "inside.toml"), out=out, frames=3, width=64, height=48,
                            workers=1, preview=False, deform_scale=0.0), progress=False)
    f = read_dataset(out).frame(0)
    assert (f.mask == 0).all()  # inside a closed organ every pixel sees tissue
    assert float(f.depth.max()) < 31.0

    # a finer depth step that 16 bits can still hold over this organ's range is kept, not coarsened
    (tmp_path / "fine.toml").write_text('kind = "mesh"\nmesh = "organ.ply"\n[render]\ndepth_scale_mm = 0.005\n')
    simulate(SimulateConfig(scene=str(tmp_path / "fine.toml"), out=tmp_path / "fine", frames=2, width=32, height=24,
                            workers=1, preview=False, deform_scale=0.0), progress=False)
    assert read_dataset(tmp_path / "fine").meta.depth_scale_mm == 0.005


def test_unreadable_mesh_is_an_input_error(tmp_path):
    bad = tmp_path / "broken.obj"
    bad.write_text("this is not a mesh\n")
    with pytest.raises(InputError, match="broken.obj"):
        simulate(SimulateConfig(scene=str(bad), out=tmp_path / "out", frames=2, width=32, height=32, workers=1),
                 progress=False)
    assert not (tmp_path / "out").exists()


def test_plane_under_a_spotlight_matches_the_closed_form():
    """Ray cast a plane z = d under a light at the camera centre: linear
    radiance rho * I * cos(theta)^(mu + 3) / (pi d^2) at a pixel whose ray
    makes angle theta with the axis (Lambertian, no specular)."""
    d, rho, intensity, mu = 40.0, 0.6, 1000.0, 1.7
    srgb = 1.055 * rho ** (1 / 2.4) - 0.055  # sRGB encoding of rho (above the linear segment)
    plane = Surface("plane", np.array([[-500, -500, d], [500, -500, d], [500, 500, d], [-500, 500, d]]),
                    np.array([[0, 1, 2], [0, 2, 3]]), label=0,
                    material=UniformMaterial((srgb,) * 3, roughness=1.0, specular=0.0))
    camera = CameraSpec(hfov_deg=80.0).camera(40, 30)
    scene = Scene("plane", [plane], camera, None, Keyframes(np.zeros(1), np.zeros((1, 3)), np.array([[0, 0, 1.0]]),
                                                           np.array([[0, -1.0, 0]])),
                  (LightSpec(intensity=(intensity,) * 3, falloff=mu),), SensorSpec(),
                  RenderSpec(ambient=(0.0, 0.0, 0.0), shadows=False), fps=1.0, num_frames=1, seed=0)
    renderer = FrameRenderer(scene)
    geom = renderer.geometry(0)
    gb = renderer.gbuffer(0, geom)
    with torch.no_grad():
        radiance = renderer.radiance(0, gb, geom).numpy()
    rays = camera.rays(dtype=torch.float64).reshape(-1, 3).numpy()[gb.pixels]
    cos = rays[:, 2] / np.linalg.norm(rays, axis=1)
    albedo = gb.material[:, 0].numpy().astype(np.float64)
    assert albedo == pytest.approx(rho, rel=1e-3)
    expected = albedo * intensity * cos ** (mu + 3) / (math.pi * d * d)
    np.testing.assert_allclose(radiance[:, 1], expected, rtol=1e-4)
    assert len(gb.pixels) == 40 * 30


def test_tissue_frame_pose_undoes_a_rigid_tissue_motion():
    """Bumpy tissue that moves rigidly by ``P(t)`` (2 deg and 3 mm per second):
    the tissue frame is exactly ``P(t)^-1 c2w`` and nothing is left non-rigid;
    at rest it is ``c2w``."""
    from endo3d.sim.motion import Rigid, Static
    from endo3d.sim.scenes.common import grid_faces
    from endo3d.sim.trajectory import rotation_xyz

    def motion(t: float) -> np.ndarray:
        P = np.eye(4)
        P[:3, :3] = rotation_xyz(*np.radians([2.0 * t, -1.0 * t, 1.5 * t]))
        P[:3, 3] = np.array([1.0, -2.0, 2.0]) * t
        return P

    a = np.linspace(-80.0, 80.0, 41)
    X, Y = np.meshgrid(a, a)
    Z = 50.0 + 4.0 * np.sin(X / 9.0) * np.cos(Y / 13.0)
    faces = grid_faces(len(a), len(a))
    camera = CameraSpec(hfov_deg=70.0).camera(48, 40)
    path = Keyframes(np.array([0.0, 2.0]), np.array([[0.0, 0, 0], [3.0, 1.0, -2.0]]),
                     np.array([[0.0, 0, 50], [2.0, 0, 50]]), np.array([[0, -1.0, 0], [0, -1.0, 0]]))
    for moves in (Rigid(motion), Static()):
        tissue = Surface("tissue", np.stack([X, Y, Z], -1).reshape(-1, 3), faces, label=0,
                         material=UniformMaterial((0.6,) * 3, roughness=0.5), motion=moves, max_displacement_mm=10.0)
        scene = Scene("bumps", [tissue], camera, None, path, (LightSpec(),), SensorSpec(),
                      RenderSpec(shadows=False), fps=1.0, num_frames=3, seed=0)
        renderer = FrameRenderer(scene)
        for i in range(3):
            labels = renderer.labels(i, renderer.gbuffer(i, renderer.geometry(i)), None)
            expected = scene.c2w(i) if moves.static else np.linalg.inv(motion(scene.time(i))) @ scene.c2w(i)
            np.testing.assert_allclose(labels.c2w_tissue, expected, atol=2e-4)
            assert labels.tissue_nonrigid_mm < 1e-3
