"""Auto-exposure, as an endoscope's AE loop would set it.

Metering: each frame is rendered at 1/8 resolution on the tissue at rest
(instruments and deformation left out: they change brightness little and
would cost a BVH per frame), and the mean linear luminance inside the
aperture, vignetting included, is measured: ``m_i``. The exposure that would
bring it to the target is ``e_i* = target / m_i``; the loop follows it with a
causal first-order filter in log space,

    log e_i = log e_{i-1} + (1 - exp(-dt / tau)) (log e_i* - log e_{i-1}),

starting at ``e_0 = e_0*``. Specular highlights therefore saturate, as they
do in real endoscopes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from endo3d.render.response import vignetting_map
from endo3d.sim.frame import FrameRenderer
from endo3d.sim.motion import Static
from endo3d.sim.scene import Scene

METERING_SCALE = 8
LUMINANCE = np.array([0.2126, 0.7152, 0.0722])


def metering_renderer(scene: Scene) -> FrameRenderer:
    """A renderer at 1/8 size of the scene as the light meter sees it."""
    tissue = [dataclasses.replace(s, motion=Static()) for s in scene.surfaces if s.is_tissue]
    meter = dataclasses.replace(scene, surfaces=tissue, render=dataclasses.replace(scene.render, shadows=False))
    w = max(scene.camera.width // METERING_SCALE, 8)
    h = max(scene.camera.height // METERING_SCALE, 8)
    camera = scene.camera.scaled(w, h)
    mask = None
    if scene.fov_mask is not None:
        ys = np.clip(((np.arange(h) + 0.5) * scene.camera.height / h).astype(int), 0, scene.camera.height - 1)
        xs = np.clip(((np.arange(w) + 0.5) * scene.camera.width / w).astype(int), 0, scene.camera.width - 1)
        mask = scene.fov_mask[np.ix_(ys, xs)]
    return FrameRenderer(meter, camera, mask)


def auto_exposure(scene: Scene) -> np.ndarray:
    """``(N,)`` exposure per frame (fixed ``sensor.exposure`` when AE is off)."""
    sensor = scene.sensor
    n = scene.num_frames
    if not sensor.auto_exposure:
        return np.full(n, sensor.exposure)
    renderer = metering_renderer(scene)
    cam = renderer.camera
    vignette = vignetting_map(cam.height, cam.width, cam.K_tensor(), *sensor.vignetting).reshape(-1).numpy()
    inside = renderer.ray_pixels
    alpha = 1.0 - np.exp(-1.0 / (scene.fps * max(sensor.ae_time_constant_s, 1e-6)))
    out = np.empty(n)
    log_e = 0.0
    for i in range(n):
        geom = renderer.geometry(i)
        gb = renderer.gbuffer(i, geom)
        lum = np.zeros(cam.width * cam.height)
        with torch.no_grad():
            lum[gb.pixels] = (renderer.radiance(i, gb, geom).numpy() * sensor.white_balance) @ LUMINANCE
        meter = float(np.mean(lum[inside] * vignette[inside]))
        target = np.log(sensor.target_level / max(meter, 1e-9))
        log_e = target if i == 0 else log_e + alpha * (target - log_e)
        out[i] = np.exp(log_e)
    return out
