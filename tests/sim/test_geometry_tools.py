"""Surface Nets meshing, textures and camera paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from endo3d.sim.scenes.airway import AirwaySpec, build_airway
from endo3d.sim.scenes.colon import ColonSpec, build_colon
from endo3d.sim.scenes.common import BuildArgs
from endo3d.sim.surfacenets import surface_nets
from endo3d.sim.texture import PaletteSpec, Texture, make_texture


def sphere_sdf(p: np.ndarray) -> np.ndarray:
    return np.linalg.norm(p - np.array([0.3, -0.2, 0.1]), axis=1) - 5.0


def test_surface_nets_sphere_is_watertight_outward_and_on_the_surface():
    voxel = 0.5
    axis = np.arange(-7.0, 7.01, voxel)
    grid = sphere_sdf(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    vertices, faces = surface_nets(grid.reshape(len(axis), len(axis), len(axis)), np.full(3, -7.0), voxel, sphere_sdf)
    assert np.abs(sphere_sdf(vertices)).max() < 1e-6
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # closed 2-manifold
    v = vertices[faces]
    volume = np.sum(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2]))) / 6.0
    assert volume == pytest.approx(4 / 3 * np.pi * 125.0, rel=0.02)  # positive: faces point outwards


def test_texture_lookup_exact_periodic_and_filtered():
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 1, (16, 16, 5)).astype(np.float32)
    tex = Texture.from_maps(maps, tile_mm=8.0)  # texel 0.5 mm
    centres = torch.tensor([[(3 + 0.5) * 0.5, (5 + 0.5) * 0.5]], dtype=torch.float32)
    fine = torch.tensor([0.1])
    np.testing.assert_allclose(tex.sample(centres, fine)[0].numpy(), maps[5, 3], atol=1e-6)
    shifted = centres + torch.tensor([[8.0 * 7, -8.0 * 3]])
    np.testing.assert_allclose(tex.sample(shifted, fine).numpy(), tex.sample(centres, fine).numpy(), atol=1e-5)
    coarse = torch.tensor([1000.0])  # footprint much larger than the tile: the tile's mean
    np.testing.assert_allclose(tex.sample(centres, coarse)[0].numpy(), maps.reshape(-1, 5).mean(0), atol=1e-5)


def test_generated_texture_is_plausible():
    tex = make_texture(PaletteSpec(resolution=256, tile_mm=32.0), np.random.default_rng(0))
    maps = tex.levels[0].numpy()
    assert maps.shape == (256, 256, 5) and np.isfinite(maps).all()
    assert (maps[..., :3] >= 0).all() and (maps[..., :3] <= 1).all()
    assert maps[..., 0].mean() > maps[..., 2].mean()  # mucosa is red
    assert 0.02 <= maps[..., 3].min() and maps[..., 3].max() <= 1.0


ARGS = BuildArgs(width=64, height=48, num_frames=40, fps=10.0, seed=1, deform_scale=1.0)


def test_colonoscope_stays_inside_the_lumen():
    scene = build_colon(ColonSpec(), ARGS)
    wall = scene.surfaces[0].vertices
    for i in range(0, 40, 5):
        eye = scene.c2w(i)[:3, 3]
        nearest = np.linalg.norm(wall - eye, axis=1).min()
        assert nearest > 3.0  # never touching the wall


def test_bronchoscope_stays_inside_the_airway():
    scene = build_airway(AirwaySpec(generations=2), ARGS)
    sdf = scene.trajectory  # TubeFollower; the clearance table is the SDF along the path
    assert (sdf.radius > 1.0).all()
    vertices = scene.surfaces[0].vertices
    for i in range(0, 40, 5):
        pose = scene.c2w(i)
        assert np.linalg.norm(vertices - pose[:3, 3], axis=1).min() > 1.0
        np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-9)
