"""``endo3d pbr render``: a fitted run as a synthetic data factory.

The run's checkpoint rebuilds the model; a new camera path is made from the
training path (reversed, another speed, shifted in the camera frame) and the
light changed if asked (intensity and falloff scale). Every new frame is
ray cast against the run's mesh with the simulator's :class:`FrameRenderer`
(G-buffer, shadow rays, and its depth, normal, mask and flow labels with the
same occlusion test as ``endo3d simulate``), shaded by the fitted model and
written as a full ``endo3d/v1`` dataset.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endo3d import __version__
from endo3d.core.config import from_dict
from endo3d.core.errors import InputError
from endo3d.geometry.camera import Camera
from endo3d.geometry.se3 import matrix_to_quaternion, quaternion_to_matrix
from endo3d.io.dataset import DatasetWriter
from endo3d.pbr.config import FieldConfig, PbrRenderConfig
from endo3d.pbr.data import MeshGeometry, read_mesh
from endo3d.pbr.fit import CHECKPOINT_VERSION, build_model, quantise
from endo3d.pbr.model import BakedModel, PbrModel, Response
from endo3d.render.lights import SpotLight

__all__ = ["load_run", "new_path", "render_dataset", "interpolate_poses"]


def load_run(run: Path) -> tuple[PbrModel | BakedModel, dict[str, Any]]:
    """The fitted model of a run folder and its checkpoint.

    Raises:
        InputError: the folder or its checkpoint is missing or not a ``pbr fit`` checkpoint.
    """
    if not run.is_dir():
        raise InputError(run, "missing" if not run.exists() else "is not a folder")
    path = run / "checkpoint.pt"
    if not path.is_file():
        raise InputError(run, "not an endo3d pbr fit run (checkpoint.pt missing)")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # a damaged or foreign file
        raise InputError(path, f"cannot be read as a checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise InputError(path, "not a pbr fit checkpoint of this version")
    if state.get("kind") not in ("pbr", "baked") or "field" not in state.get("config", {}):
        raise InputError(path, "not a pbr fit checkpoint (e.g. endo3d reconstruct's; use endo3d render)")
    field_config = from_dict(FieldConfig, state["config"]["field"], str(path))
    lights = [SpotLight.create() for _ in range(state["num_lights"])]
    response = Response(torch.zeros(state["num_frames"]), learn_exposure=False,
                        white_balance=state["white_balance"], gamma=state["gamma"])
    model = build_model(state["kind"], field_config, torch.zeros(3), torch.ones(3), lights, response)
    model.load_state_dict(state["trainer"]["model"])
    model.eval()
    return model, state


def interpolate_poses(poses: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Poses at fractional frame positions ``s`` (M,) along ``poses`` (N, 4, 4):
    translation linear, rotation by quaternion slerp between the neighbours."""
    n = len(poses)
    s = np.clip(np.asarray(s, dtype=np.float64), 0, n - 1)
    lo = np.floor(s).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    t = s - lo
    q = matrix_to_quaternion(torch.from_numpy(poses[:, :3, :3])).numpy()
    out = np.tile(np.eye(4), (len(s), 1, 1))
    for k in range(len(s)):
        qa, qb = q[lo[k]], q[hi[k]]
        if np.dot(qa, qb) < 0:
            qb = -qb
        angle = math.acos(min(1.0, abs(float(np.dot(qa, qb)))))
        if angle < 1e-8:
            qk = qa
        else:
            qk = (math.sin((1 - t[k]) * angle) * qa + math.sin(t[k] * angle) * qb) / math.sin(angle)
        out[k, :3, :3] = quaternion_to_matrix(torch.from_numpy(qk / np.linalg.norm(qk))).numpy()
        out[k, :3, 3] = (1 - t[k]) * poses[lo[k], :3, 3] + t[k] * poses[hi[k], :3, 3]
    return out


def new_path(poses: np.ndarray, *, reverse: bool = False, speed: float = 1.0, frames: int = 0,
             shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """A camera path derived from the training path.

    Frame ``k`` sits at position ``s_k = k * speed`` along the training
    frames (from the end when ``reverse``), interpolated
    (:func:`interpolate_poses`), then moved by ``shift_mm`` in its own camera frame.

    Returns:
        ``(poses (M, 4, 4), s (M,))``; ``s`` are the fractional source frames.
    """
    if not speed > 0:
        raise InputError("--speed", f"must be positive, got {speed}")
    n = len(poses)
    count = frames if frames > 0 else int(math.floor((n - 1) / speed + 1e-9)) + 1
    s = np.arange(count, dtype=np.float64) * speed
    if reverse:
        s = (n - 1) - s
    s = np.clip(s, 0, n - 1)
    out = interpolate_poses(poses, s)
    out[:, :3, 3] += out[:, :3, :3] @ np.asarray(shift_mm, dtype=np.float64)
    return out, s


def render_dataset(config: PbrRenderConfig) -> Path:
    """Run ``endo3d pbr render``; returns the dataset folder."""
    from tqdm import tqdm

    problems = config.problems()
    if problems:
        raise InputError("settings", problems[0])
    model, state = load_run(config.run)
    camera = Camera.from_json(state["camera"], state["width"], state["height"])
    poses, source_frames = new_path(state["poses"].numpy(), reverse=config.reverse, speed=config.speed,
                                    frames=config.frames, shift_mm=config.shift_mm)
    fitted_log_exposure = model.response.log_exposure.detach().numpy().astype(np.float64)
    log_exposure = np.interp(source_frames, np.arange(len(fitted_log_exposure)), fitted_log_exposure)
    log_exposure += math.log(config.exposure_scale)
    old = model.response
    model.response = Response(torch.from_numpy(log_exposure).float(), learn_exposure=False,
                              vignetting=[float(v) for v in old.vignetting.detach()],
                              white_balance=[float(v) for v in old.white_balance], gamma=old.gamma)
    lights_json: list[dict[str, Any]] = []
    shadow_positions = state["shadow_light_positions"]
    if isinstance(model, PbrModel):
        with torch.no_grad():
            model.lights.log_intensity.add_(math.log(config.light_scale))
            falloff = torch.nn.functional.softplus(model.lights.raw_falloff) * config.falloff_scale
            falloff = falloff.clamp_min(1e-6)
            model.lights.raw_falloff.copy_(falloff + torch.log(-torch.expm1(-falloff)))
        fitted = model.fitted_lights()
        lights_json = [l.to_json() for l in fitted]
        shadow_positions = [l.position.tolist() for l in fitted]
    elif config.light_scale != 1 or config.falloff_scale != 1:
        raise InputError(config.run, "is a light-baked run: its light cannot be changed")

    vertices, faces, normals = read_mesh(config.run / "mesh.ply")
    aperture = None if state["aperture"] is None else state["aperture"].numpy()
    geometry = MeshGeometry(vertices, faces, normals, camera, poses, fps=state["fps"], aperture=aperture,
                            light_positions=shadow_positions, max_range_mm=state["max_range_mm"],
                            depth_scale_mm=state["depth_scale_mm"], shadows=bool(state["config"]["shadows"]))
    K = camera.K_tensor()
    source = {"generator": "endo3d pbr render", "version": __version__, "run": str(config.run.resolve()),
              "model": state["kind"], "dataset": state["dataset"],
              "path": {"reverse": config.reverse, "speed": config.speed, "shift_mm": list(config.shift_mm),
                       "source_frames": [float(v) for v in source_frames]},
              "light_scale": config.light_scale, "falloff_scale": config.falloff_scale,
              "exposure_scale": config.exposure_scale}
    sensor = {"auto_exposure": False, "white_balance": [float(v) for v in old.white_balance],
              "vignetting": [float(v) for v in old.vignetting.detach()], "noise_shot": 0.0, "noise_read": 0.0,
              "gamma": old.gamma if isinstance(old.gamma, str) else str(old.gamma)}
    fps = float(state["fps"])
    with DatasetWriter(config.out, camera=camera, fps=fps, depth_scale_mm=state["depth_scale_mm"],
                       lights=lights_json, source=source, extra={"sensor": sensor},
                       overwrite=config.overwrite) as writer:
        shutil.copyfile(config.run / "mesh.ply", writer.root / "mesh.ply")
        writer.set_mesh("mesh.ply")
        for k in tqdm(range(len(poses)), unit="frame", desc="pbr render", disable=not config.progress,
                      dynamic_ncols=True):
            gb = geometry.gbuffer(k)
            buf = geometry.buffers(k, gb)
            with torch.no_grad():
                rgb = quantise(model.render([buf], camera.height, camera.width, K)[0])
            labels = geometry.renderer.labels(k, gb, geometry.geometry(k + 1) if k + 1 < len(poses) else None)
            writer.write_frame(k, k / fps, poses[k], rgb=rgb, depth=labels.depth, normal=labels.normal,
                               normal_valid=labels.normal_valid, flow=labels.flow, flow_valid=labels.flow_valid,
                               mask=labels.mask, exposure=float(math.exp(log_exposure[k])))
    return config.out
