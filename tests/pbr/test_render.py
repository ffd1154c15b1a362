"""``pbr render``: new paths as valid endo3d/v1 datasets whose labels agree with the mesh."""

from __future__ import annotations

import json

import numpy as np
import open3d as o3d
import torch

from endo3d.io import read_dataset
from endo3d.pbr.config import PbrRenderConfig
from endo3d.pbr.render import interpolate_poses, new_path, render_dataset


def test_new_path_options():
    poses = np.tile(np.eye(4), (5, 1, 1))
    poses[:, 0, 3] = np.arange(5) * 2.0
    p, s = new_path(poses, speed=0.5)
    assert len(p) == 9 and np.allclose(p[1, 0, 3], 1.0) and np.allclose(s[-1], 4)
    p, s = new_path(poses, reverse=True, shift_mm=(0.0, 0.0, -3.0))
    assert np.allclose(p[0, 0, 3], 8.0) and np.allclose(p[:, 2, 3], -3.0) and np.allclose(s, [4, 3, 2, 1, 0])
    p, _ = new_path(poses, speed=2.0, frames=2)
    assert len(p) == 2 and np.allclose(p[1, 0, 3], 4.0)


def test_interpolated_rotations_stay_rigid():
    a = np.eye(4)
    b = np.eye(4)
    c, s_ = np.cos(0.6), np.sin(0.6)
    b[:3, :3] = [[c, -s_, 0], [s_, c, 0], [0, 0, 1]]
    mid = interpolate_poses(np.stack([a, b]), np.array([0.5]))[0]
    assert np.allclose(mid[:3, :3] @ mid[:3, :3].T, np.eye(3), atol=1e-6)
    assert np.isclose(np.arctan2(mid[1, 0], mid[0, 0]), 0.3, atol=1e-6)


def _mesh_depth(mesh_path, camera, c2w) -> np.ndarray:
    """Independent z-depth from open3d's ray caster on the mesh (no simulator code)."""
    mesh = o3d.t.io.read_triangle_mesh(str(mesh_path))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(mesh)
    rays_cam = camera.rays(dtype=torch.float64).reshape(-1, 3).numpy()
    dirs = rays_cam @ c2w[:3, :3].T
    rays = np.concatenate([np.broadcast_to(c2w[:3, 3], dirs.shape), dirs], axis=1).astype(np.float32)
    t = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    return (t * rays_cam[:, 2]).reshape(camera.height, camera.width)


def test_render_writes_a_valid_dataset_that_agrees_with_the_mesh(pbr_run, rigid_colon, tmp_path):
    out = tmp_path / "novel"
    render_dataset(PbrRenderConfig(run=pbr_run, out=out, reverse=True, speed=1.5, shift_mm=(0.5, 0.0, -1.0),
                                   light_scale=0.8, progress=False))
    ds = read_dataset(out)  # the validation endo3d simulate output passes
    assert len(ds) == 5 and ds.has("depth") and ds.has("normal") and ds.has("flow") and ds.has("mask")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"]["generator"] == "endo3d pbr render" and len(meta["lights"]) == 2
    fitted = json.loads((pbr_run / "lights.json").read_text())["fitted"]["lights"]
    assert np.allclose(meta["lights"][0]["intensity"], 0.8 * np.array(fitted[0]["intensity"]), rtol=1e-4)
    for i in (0, len(ds) - 1):
        frame = ds.frame(i)
        depth = frame.depth[0].numpy()
        reference = _mesh_depth(out / "mesh.ply", ds.camera, frame.c2w)
        both = (depth > 0) & np.isfinite(reference)
        assert both.mean() > 0.5
        assert np.abs(depth[both] - reference[both]).max() < 0.05  # mm; depth PNG step is 0.01 mm
        normal = frame.normal.numpy()
        valid = np.linalg.norm(normal, axis=0) > 0.5
        assert np.array_equal(valid, depth > 0)
        rays = ds.camera.rays(dtype=torch.float64).numpy()
        assert (np.einsum("chw,hwc->hw", normal, rays)[valid] < 0).all()  # normals face the camera
        assert (frame.mask[0].numpy()[depth > 0] == 0).all() and (frame.rgb.numpy()[:, depth == 0] == 0).all()
    assert ds.frame(0).flow_valid.float().mean() > 0.5


def test_render_training_path_matches_the_dataset_labels(pbr_run, rigid_colon, tmp_path):
    out = tmp_path / "same"
    render_dataset(PbrRenderConfig(run=pbr_run, out=out, frames=2, progress=False))
    ours, original = read_dataset(out), read_dataset(rigid_colon)
    for i in range(2):
        a, b = ours.frame(i), original.frame(i)
        assert np.allclose(a.c2w, b.c2w, atol=1e-9)
        both = (a.depth > 0) & (b.depth > 0)
        assert both.float().mean() > 0.5 and (a.depth - b.depth)[both].abs().max() < 0.02
    a, b = ours.frame(0), original.frame(0)  # the last rendered frame has no flow
    assert (a.flow_valid != b.flow_valid).float().mean() < 0.01
    both = a.flow_valid[0] & b.flow_valid[0]
    assert both.float().mean() > 0.5 and (a.flow[:, both] - b.flow[:, both]).abs().max() < 0.05
