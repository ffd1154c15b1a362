"""The PBR image model is the simulator's: with the true material, light and response it reproduces the images."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from endo3d.io import read_dataset
from endo3d.io.images import read_png
from endo3d.pbr.data import MeshGeometry, read_mesh
from endo3d.pbr.field import MaterialField
from endo3d.pbr.model import PbrModel, Response, scatter_images
from endo3d.render.brdf import Material
from endo3d.render.lights import SpotLight
from endo3d.render.response import srgb_decode
from endo3d.sim.frame import FrameRenderer
from endo3d.sim.scenes.common import BuildArgs
from endo3d.sim.scenes.registry import build_scene, load_spec
from endo3d.sim.simulate import SPECULAR_SCALE


def _true_model(ds, geometry_box) -> PbrModel:
    meta = ds.meta
    lights = [SpotLight.from_json(l) for l in meta.lights]
    ambient = torch.tensor(meta.source["scene_spec"]["render"]["ambient"])
    sensor = meta.extra["sensor"]
    exposures = torch.tensor([math.log(f.extra["exposure"]) for f in meta.frames])
    response = Response(exposures, learn_exposure=False, vignetting=sensor["vignetting"],
                        white_balance=sensor["white_balance"], gamma=sensor["gamma"])
    field = MaterialField(*geometry_box, outputs=6, levels=2, table_log2=4, hidden=4)
    return PbrModel(field, lights, ambient, response)


def _geometry(ds, aperture=None) -> MeshGeometry:
    v, f, n = read_mesh(ds.path / ds.meta.mesh)
    lights = [l["position_cam"] for l in ds.meta.lights]
    return MeshGeometry(v, f, n, ds.camera, ds.poses, fps=ds.meta.fps, aperture=aperture, light_positions=lights,
                        max_range_mm=ds.meta.source["scene_spec"]["render"]["max_range_mm"])


def test_true_material_and_light_reproduce_the_noise_free_simulator_image(rigid_colon):
    ds = read_dataset(rigid_colon)
    meta, src = ds.meta, ds.meta.source
    name, spec = load_spec(src["scene"])
    args = BuildArgs(meta.width, meta.height, len(ds), meta.fps, src["seed"], src["deform_scale"])
    scene = build_scene(spec, args, src["scene"])
    quiet = dataclasses.replace(scene, sensor=dataclasses.replace(scene.sensor, noise_shot=0.0, noise_read=0.0))
    sim = FrameRenderer(quiet)
    geometry = _geometry(ds, scene.fov_mask)
    model = _true_model(ds, (torch.zeros(3), torch.ones(3)))
    for i in (0, len(ds) - 1):
        exposure = meta.frames[i].extra["exposure"]
        geom = sim.geometry(i)
        reference = sim.render(i, geom, None, exposure)
        gb_sim = sim.gbuffer(i, geom)
        buf = geometry.buffers(i)
        # The mesh ray cast at the dataset pose hits the same pixels at the same points.
        assert np.array_equal(buf.pixels.numpy(), gb_sim.pixels)
        assert np.abs(buf.points_world.numpy() - gb_sim.points).max() < 1e-3
        m = gb_sim.material
        material = Material(m[:, 0:3], m[:, 3:4], m[:, 4:5], m[:, 5:6])
        with torch.no_grad():
            radiance = model.radiance(buf, material=material)
            image = model.response(scatter_images([radiance], [buf], ds.camera.height, ds.camera.width), [i],
                                   ds.camera.K_tensor())[0]
        ours = np.floor(image.clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float64) * 255 + 0.5)
        diff = np.abs(ours - reference.rgb.astype(np.float64))[gb_sim.pixels // ds.camera.width,
                                                               gb_sim.pixels % ds.camera.width]
        assert diff.max() <= 1.0, f"frame {i}: max difference {diff.max()} levels"
        assert diff.mean() < 0.05


def test_true_material_maps_explain_the_stored_noisy_images(rigid_colon):
    """With the 8-bit material maps and the stored (noisy) images the residual is noise-sized."""
    ds = read_dataset(rigid_colon)
    geometry = _geometry(ds)
    model = _true_model(ds, (torch.zeros(3), torch.ones(3)))
    H, W = ds.camera.height, ds.camera.width
    for i in range(0, len(ds), 3):
        frame = ds.frame(i)
        buf = geometry.buffers(i)
        albedo = srgb_decode(torch.from_numpy(read_png(ds.path / frame.extra["albedo"]).astype(np.float32) / 255))
        maps = torch.from_numpy(read_png(ds.path / frame.extra["material"]).astype(np.float32) / 255)
        px = buf.pixels
        material = Material(albedo.reshape(-1, 3)[px], maps.reshape(-1, 3)[px, 0:1],
                            maps.reshape(-1, 3)[px, 1:2] * SPECULAR_SCALE, maps.reshape(-1, 3)[px, 2:3])
        with torch.no_grad():
            image = model.response(scatter_images([model.radiance(buf, material=material)], [buf], H, W), [i],
                                   ds.camera.K_tensor())[0]
        tissue = frame.valid.reshape(-1)[px]
        err = (image.reshape(3, -1)[:, px] - frame.rgb.reshape(3, -1)[:, px])[:, tissue]
        psnr = -10 * math.log10(float(err.square().mean()))
        assert psnr > 35.0, f"frame {i}: PSNR {psnr:.1f} dB"
