"""``endo3d pbr fit``: material and lighting from images of a known surface.

Read top-down: :func:`fit` loads the inputs (:func:`load_inputs`: dataset,
mesh, G-buffers), builds the model (:func:`build_model`), trains it
(:class:`Trainer`: robust photometric loss + regularisers, seeded,
checkpointed, resumable) and writes the run folder:

- ``checkpoint.pt``: model, optimiser, step and what ``pbr render`` needs;
- ``metrics.json``: held-out PSNR / SSIM (LPIPS null), albedo error, light recovery;
- ``lights.json``: fitted lights, ambient and response next to the dataset's;
- ``renders/``: held-out renders; ``mesh.ply``: the mesh; ``config.json``.

Held-out frames ``(i - 1) % 8 == 0`` are never trained on; when exposures
are learned, theirs are interpolated from the neighbouring training frames.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from endo3d import __version__
from endo3d.core.config import to_dict
from endo3d.core.errors import InputError
from endo3d.core.fs import resumable_output_dir
from endo3d.io.dataset import Dataset, is_test_frame, read_dataset
from endo3d.io.images import read_png, rgb_to_uint8, write_png
from endo3d.pbr.config import FieldConfig, PbrFitConfig
from endo3d.pbr.data import (
    DEFAULT_MAX_RANGE_MM,
    FrameBuffers,
    MeshGeometry,
    aperture_from_masks,
    meta_max_range,
    read_mesh,
)
from endo3d.pbr.evaluate import albedo_error, albedo_gauge, compare_lights, nan_to_none
from endo3d.pbr.field import MaterialField, material_from_raw
from endo3d.pbr.model import BakedModel, PbrModel, Response, brightness_gain
from endo3d.render.lights import SPOT_MODEL, SpotLight
from endo3d.render.response import srgb_decode

__all__ = ["FitInputs", "FitResult", "Trainer", "build_model", "fit", "load_inputs", "image_metrics"]

CHECKPOINT_VERSION = 1
NONRIGID_WARN_MM = 0.25
"""Non-rigid tissue motion (the simulator's per-frame ``tissue_nonrigid_mm``) above which a fit warns that its
static mesh does not follow the data: the default finest material cell (``--field.finest-mm``)."""
RESUME_FREE = ("out", "overwrite", "resume", "progress", "renders")
"""Settings a resumed fit may change: where and how it writes, not what it fits."""


@dataclass
class FitInputs:
    """Everything fitting reads from the dataset, in memory.

    Attributes:
        dataset: the opened dataset.
        geometry: the mesh ray cast at the dataset's poses.
        frames: per frame the shading inputs with targets and weights.
        valid: per frame bool ``(1, H, W)``: tissue pixels with a surface hit (metrics).
        images: per frame float32 ``(3, H, W)`` sRGB targets.
        train_ids, test_ids: the split.
        K: float32 ``(3, 3)``.
        log_exposure: ``(N,)`` start exposures (log); known ones stay fixed.
        learn_exposure, vignetting, learn_vignetting, white_balance, gamma: the camera response setup.
        lights: the start lights (camera frame).
        max_range_mm: the ray length used.
        aperture: ``(H, W)`` bool or None.
    """

    dataset: Dataset
    geometry: MeshGeometry
    frames: list[FrameBuffers]
    valid: list[torch.Tensor]
    images: list[torch.Tensor]
    train_ids: list[int]
    test_ids: list[int]
    K: torch.Tensor
    log_exposure: torch.Tensor
    learn_exposure: bool
    vignetting: tuple[float, float]
    learn_vignetting: bool
    white_balance: tuple[float, float, float]
    gamma: str | float
    lights: list[SpotLight]
    max_range_mm: float
    aperture: np.ndarray | None

    @property
    def height(self) -> int:
        return self.dataset.camera.height

    @property
    def width(self) -> int:
        return self.dataset.camera.width


@dataclass
class FitResult:
    run: Path
    metrics: dict[str, Any]


# -- inputs ---------------------------------------------------------------------------------------------


def load_inputs(config: PbrFitConfig) -> FitInputs:
    """Open the dataset, ray cast its mesh at every pose and collect targets.

    Raises:
        InputError: no dataset, no mesh, per-frame intrinsics, or a setting the data cannot satisfy.
    """
    ds = read_dataset(config.dataset)
    meta = ds.meta
    meta_path = ds.path / "meta.json"
    if meta.mesh is None:
        raise InputError(meta_path, "has no 'mesh': pbr fit needs the known tissue surface "
                                    "(endo3d simulate writes mesh.ply)")
    if any(f.K is not None for f in meta.frames):
        raise InputError(meta_path, "per-frame K is not supported by pbr fit")
    vertices, faces, normals = read_mesh(ds.path / meta.mesh)
    n = len(ds)
    frames = [ds.frame(i) for i in range(n)]

    nonrigid = max((float(f.extra.get("tissue_nonrigid_mm", 0.0)) for f in frames), default=0.0)
    if nonrigid > NONRIGID_WARN_MM:
        warnings.warn(f"{meta_path}: the tissue moves up to {nonrigid:.1f} mm (RMS) beyond a rigid motion, but pbr "
                      "fit renders the static mesh; the material absorbs the mismatch (simulate with "
                      "--deform-scale 0 for a rigid scene)", stacklevel=2)
    known = [f.extra.get("exposure") for f in frames]
    has_exposure = all(isinstance(e, (int, float)) and e > 0 for e in known)
    if config.exposure == "known" and not has_exposure:
        raise InputError(meta_path, "--exposure known, but not every frame has an 'exposure' key")
    learn_exposure = config.exposure == "learn" or (config.exposure == "auto" and not has_exposure)
    log_exposure = torch.zeros(n) if learn_exposure else torch.tensor([math.log(float(e)) for e in known])

    sensor = meta.extra.get("sensor") if isinstance(meta.extra.get("sensor"), dict) else None
    if config.vignetting == "known" and (sensor is None or "vignetting" not in sensor):
        raise InputError(meta_path, "--vignetting known, but meta.json has no 'sensor' with 'vignetting'")
    vignetting_known = sensor is not None and "vignetting" in sensor and config.vignetting in ("auto", "known")
    vignetting = tuple(float(v) for v in sensor["vignetting"]) if vignetting_known else (0.0, 0.0)
    learn_vignetting = config.vignetting == "learn" or (config.vignetting == "auto" and not vignetting_known)
    white_balance = tuple(float(v) for v in sensor.get("white_balance", (1, 1, 1))) if sensor else (1.0, 1.0, 1.0)
    gamma_raw = sensor.get("gamma", "srgb") if sensor else "srgb"
    gamma: str | float = "srgb" if gamma_raw == "srgb" else float(gamma_raw)

    spots = [light for light in meta.lights if light.get("type") == "spot"]
    if config.lights == "meta" and not spots:
        raise InputError(meta_path, "--lights meta, but meta.json has no spot lights")
    if config.lights in ("meta", "auto") and spots:
        lights = [SpotLight.create(s["position_cam"], s.get("direction_cam", (0, 0, 1)), 1.0, 1.0) for s in spots]
    else:
        lights = [SpotLight.create((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), 1.0, 1.0)]

    masks = [f.mask[0].numpy() for f in frames if f.mask is not None]
    aperture = aperture_from_masks(masks) if len(masks) == n else None
    max_range = config.max_range_mm or meta_max_range(meta.source) or DEFAULT_MAX_RANGE_MM
    geometry = MeshGeometry(
        vertices, faces, normals, ds.camera, ds.poses, fps=meta.fps, aperture=aperture,
        light_positions=[l.position.tolist() for l in lights], max_range_mm=max_range,
        depth_scale_mm=meta.depth_scale_mm, shadows=config.shadows)

    buffers, valid, images = [], [], []
    for i, frame in enumerate(frames):
        buf = geometry.buffers(i)
        tissue = frame.valid.reshape(-1)[buf.pixels]
        buf.target = frame.rgb.reshape(3, -1)[:, buf.pixels].T.contiguous()
        saturated = buf.target.amax(dim=1) > config.saturation
        buf.weight = tissue.float() * torch.where(saturated, config.saturated_weight, 1.0)
        hit = torch.zeros(ds.camera.height * ds.camera.width, dtype=torch.bool)
        hit[buf.pixels] = True
        buffers.append(buf)
        valid.append(frame.valid & hit.reshape(1, ds.camera.height, ds.camera.width))
        images.append(frame.rgb)
    test_ids = [i for i in range(n) if is_test_frame(i)] if n > 1 else []
    train_ids = [i for i in range(n) if i not in test_ids]
    return FitInputs(ds, geometry, buffers, valid, images, train_ids, test_ids, ds.camera.K_tensor(),
                     log_exposure, learn_exposure, vignetting, learn_vignetting, white_balance, gamma, lights,
                     max_range, aperture)


# -- model ----------------------------------------------------------------------------------------------


def build_model(kind: str, field_config: FieldConfig, lower: torch.Tensor, upper: torch.Tensor,
                lights: Sequence[SpotLight], response: Response, *, learn_light_pose: bool = True,
                ambient: torch.Tensor | None = None) -> PbrModel | BakedModel:
    """A fresh model of ``kind`` (``"pbr"`` or ``"baked"``) over the box ``lower``..``upper`` (mm)."""
    settings = dict(levels=field_config.levels, table_log2=field_config.table_log2, features=field_config.features,
                    coarsest_mm=field_config.coarsest_mm, finest_mm=field_config.finest_mm,
                    hidden=field_config.hidden)
    if kind == "baked":
        return BakedModel(MaterialField(lower, upper, outputs=3, **settings), response)
    if kind != "pbr":
        raise ValueError(f"unknown model kind {kind!r}")
    field = MaterialField(lower, upper, outputs=6, **settings)
    return PbrModel(field, lights, torch.full((3,), 1e-3) if ambient is None else ambient, response,
                    learn_light_pose=learn_light_pose)


def _start_model(config: PbrFitConfig, inputs: FitInputs) -> PbrModel | BakedModel:
    """The model at step 0: the box of the seen surface, neutral material, brightness matched."""
    lower, upper = inputs.geometry.bounds(inputs.frames)
    response = Response(inputs.log_exposure, learn_exposure=inputs.learn_exposure, anchor=inputs.train_ids[0],
                        vignetting=inputs.vignetting, learn_vignetting=inputs.learn_vignetting,
                        white_balance=inputs.white_balance, gamma=inputs.gamma)
    # Ambient starts at 2 % of the typical direct irradiance of a unit light.
    inv_sq = torch.cat([1 / f.points_cam.square().sum(dim=1).clamp_min(1e-6) for f in inputs.frames])
    ambient = torch.full((3,), 0.02 * float(inv_sq.median()) if len(inv_sq) else 1e-3)
    model = build_model(config.model, config.field, lower, upper, inputs.lights, response,
                        learn_light_pose=config.learn_light_position, ambient=ambient)
    train = [inputs.frames[i] for i in inputs.train_ids]
    model.scale_light(brightness_gain(model, train, inputs.height, inputs.width, inputs.K, config.saturation))
    return model


# -- training -------------------------------------------------------------------------------------------


def charbonnier(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Robust penalty ``sqrt(x^2 + eps^2) - eps`` (L1 for large residuals, smooth at 0)."""
    return (x.square() + eps * eps).sqrt() - eps


class Trainer:
    """Adam on the model's parameter groups with an exponential learning-rate decay."""

    def __init__(self, config: PbrFitConfig, inputs: FitInputs, model: PbrModel | BakedModel) -> None:
        self.config, self.inputs, self.model = config, inputs, model
        lr = config.lr
        groups = [{"params": model.field.grid_parameters(), "lr": lr.grid, "eps": 1e-15},
                  {"params": model.field.mlp_parameters(), "lr": lr.mlp}]
        if isinstance(model, PbrModel):
            groups.append({"params": [model.lights.log_intensity, model.lights.raw_falloff, model.log_ambient],
                           "lr": lr.light})
            pose = [p for p in (model.lights.position, model.lights.direction) if p.requires_grad]
            if pose:
                groups.append({"params": pose, "lr": lr.light_position})
        response = [p for p in model.response.parameters() if p.requires_grad]
        if response:
            groups.append({"params": response, "lr": lr.response})
        self.optimizer = torch.optim.Adam(groups)
        decay = lr.final_ratio ** (1 / max(config.steps, 1))
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.train_seconds = 0.0

    def train_step(self) -> dict[str, float]:
        """One step on ``frames_per_step`` random training frames; returns loss and PSNR of the batch."""
        inputs, model = self.inputs, self.model
        ids = inputs.train_ids
        pick = torch.randint(len(ids), (min(self.config.frames_per_step, len(ids)),), generator=self.generator)
        frames = [self._sample(inputs.frames[ids[int(k)]]) for k in pick]
        points = torch.cat([f.points_world for f in frames])
        raw = model.field(points)
        images = model.render(frames, inputs.height, inputs.width, inputs.K,
                              raw=raw.split([len(f.pixels) for f in frames]))
        predicted = torch.cat([img.reshape(3, -1)[:, f.pixels].T for img, f in zip(images, frames)])
        target = torch.cat([f.target for f in frames])
        weight = torch.cat([f.weight for f in frames])[:, None]
        residual = predicted - target
        total_weight = weight.sum().clamp_min(1.0) * 3
        photometric = (charbonnier(residual) * weight).sum() / total_weight
        loss = photometric + self._regularisers(points, raw)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        mse = float((residual.detach().square() * (weight > 0)).sum() / ((weight > 0).sum() * 3).clamp_min(1))
        return {"loss": float(loss.detach()), "psnr": -10 * math.log10(max(mse, 1e-12))}

    def _sample(self, frame: FrameBuffers) -> FrameBuffers:
        count = self.config.pixels_per_frame
        if count <= 0 or count >= len(frame.pixels):
            return frame
        return frame.subset(torch.randperm(len(frame.pixels), generator=self.generator)[:count])

    def _regularisers(self, points: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Smoothness between points and jittered copies, and the roughness prior."""
        reg, model = self.config.reg, self.model
        count = min(2048, len(points))
        if count == 0:
            return raw.new_zeros(())
        sel = torch.randperm(len(points), generator=self.generator)[:count]
        jitter = torch.randn((count, 3), generator=self.generator) * reg.jitter_mm
        raw_a, raw_b = raw[sel], model.field(points[sel] + jitter)
        if isinstance(model, BakedModel):
            return reg.albedo_smoothness * (raw_a - raw_b).abs().mean()
        a, b = material_from_raw(raw_a), material_from_raw(raw_b)
        smooth_albedo = (a.albedo - b.albedo).abs().mean()
        smooth_material = (a.roughness - b.roughness).abs().mean() + (a.specular - b.specular).abs().mean() / 0.08
        prior = (a.roughness - reg.roughness_mean).square().mean()
        return (reg.albedo_smoothness * smooth_albedo + reg.material_smoothness * smooth_material
                + reg.roughness_prior * prior)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
                "step": self.step, "train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])


# -- evaluation -----------------------------------------------------------------------------------------


def image_metrics(render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float | None]:
    """PSNR (masked full image and tissue only) and masked SSIM of ``(3, H, W)`` images, by the Gaussians'
    :func:`endo3d.gs.metrics.image_metrics` (the anchors' protocols; None where the frame has no tissue)."""
    from endo3d.gs.metrics import image_metrics as frame_metrics

    m = frame_metrics(render, target, mask)
    return {"psnr": m.psnr, "psnr_tissue": m.psnr_tissue, "ssim": m.ssim}


def quantise(image: torch.Tensor) -> torch.Tensor:
    """Round to 8 bits as a stored image would be."""
    return torch.floor(image.clamp(0, 1) * 255 + 0.5) / 255


def render_frames(model: PbrModel | BakedModel, inputs: FitInputs, ids: Sequence[int]) -> list[torch.Tensor]:
    """Quantised ``(3, H, W)`` renders of frames ``ids``."""
    with torch.no_grad():
        return [quantise(model.render([inputs.frames[i]], inputs.height, inputs.width, inputs.K)[0]) for i in ids]


def mean_metrics(per_frame: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Mean of each metric over the frames that have it (None when none has)."""

    def avg(key: str) -> float | None:
        values = [m[key] for m in per_frame if m[key] is not None]
        return sum(values) / len(values) if values else None

    return {k: avg(k) for k in ("psnr", "psnr_tissue", "ssim")}


def true_albedo(inputs: FitInputs, index: int) -> torch.Tensor | None:
    """``(n, 3)`` linear albedo at the frame's hit pixels from the simulator's ``albedo/`` maps, or None."""
    rel = inputs.dataset.meta.frames[index].extra.get("albedo")
    if not isinstance(rel, str) or not (inputs.dataset.path / rel).is_file():
        return None
    image = torch.from_numpy(read_png(inputs.dataset.path / rel).astype(np.float32) / 255.0)
    return srgb_decode(image.reshape(-1, 3)[inputs.frames[index].pixels])


def material_report(model: PbrModel, inputs: FitInputs) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Albedo gauge (training frames) and albedo error (held-out frames), when true albedo is known."""
    fitted, true, test_fit, test_true = [], [], [], []
    with torch.no_grad():
        for i in inputs.train_ids + inputs.test_ids:
            a = true_albedo(inputs, i)
            if a is None:
                return {"albedo_error": None, "note": "the dataset has no albedo maps"}, None
            f = inputs.frames[i]
            keep = f.weight > 0
            fa = model.material(f.points_world[keep]).albedo
            (test_fit if i in inputs.test_ids else fitted).append(fa)
            (test_true if i in inputs.test_ids else true).append(a[keep])
    gauge = albedo_gauge(torch.cat(fitted), torch.cat(true))
    fit_eval = torch.cat(test_fit) if test_fit else torch.cat(fitted)
    true_eval = torch.cat(test_true) if test_true else torch.cat(true)
    return {"albedo_gauge": [float(v) for v in gauge], "albedo_error": albedo_error(fit_eval, true_eval, gauge),
            "albedo_error_unaligned": albedo_error(fit_eval, true_eval, torch.ones(3)),
            "evaluated_on": "test frames" if test_fit else "training frames"}, gauge


def light_report(model: PbrModel | BakedModel, inputs: FitInputs, gauge: torch.Tensor | None) -> dict[str, Any]:
    """``lights.json``: fitted light, ambient and response next to the dataset's values."""
    meta = inputs.dataset.meta
    source = meta.source.get("scene_spec", {}) if isinstance(meta.source, dict) else {}
    reference_ambient = source.get("render", {}).get("ambient") if isinstance(source, dict) else None
    response = {"exposure": [float(v) for v in model.response.log_exposure.detach().exp()],
                "exposure_learned": inputs.learn_exposure,
                "vignetting": [float(v) for v in model.response.vignetting.detach()],
                "vignetting_learned": inputs.learn_vignetting,
                "white_balance": list(inputs.white_balance), "gamma": inputs.gamma}
    out: dict[str, Any] = {"model": SPOT_MODEL, "frame": "camera (OpenCV), mm", "response": response,
                           "reference": {"lights": meta.lights, "ambient": reference_ambient,
                                         "sensor": meta.extra.get("sensor")}}
    if not isinstance(model, PbrModel):
        out["fitted"] = None
        out["note"] = "light-baked model: no light parameters"
        return out
    fitted = model.fitted_lights()
    ambient = model.log_ambient.detach().exp()
    out["fitted"] = {"lights": [l.to_json() for l in fitted], "ambient": [float(v) for v in ambient]}
    spots = [l for l in meta.lights if l.get("type") == "spot"]
    if spots:
        if gauge is not None and inputs.learn_exposure:
            # the anchor frame's exposure is fixed at 1, so the fitted intensities carry its true exposure
            true = inputs.dataset.frame(inputs.train_ids[0]).extra.get("exposure")
            gauge = gauge * float(true) if isinstance(true, (int, float)) and true > 0 else None
        out["comparison"] = compare_lights(fitted, spots, gauge, ambient, reference_ambient)
    out["gauge"] = ("image = exposure * intensity_c * albedo_c (diffuse): intensities and ambient are compared "
                    "after dividing by the per-channel albedo gauge s_c (least squares of s_c * fitted albedo to "
                    "the true albedo on training frames), times the first training frame's true exposure when "
                    "exposures were learned (that frame's is fixed at 1; without it they are not compared); "
                    "falloff, intensity shares and positions need no gauge")
    return out


# -- the job --------------------------------------------------------------------------------------------


def _config_record(config: PbrFitConfig) -> dict[str, Any]:
    """``config`` as plain JSON values (paths as strings), as checkpoints store it and --resume compares it."""
    return json.loads(json.dumps(to_dict(config), default=str))


def _checkpoint(trainer: Trainer, inputs: FitInputs, config: PbrFitConfig) -> dict[str, Any]:
    """The checkpoint: trainer state and what ``pbr render`` needs to rebuild the model and the geometry."""
    meta = inputs.dataset.meta
    return {
        "version": CHECKPOINT_VERSION, "endo3d": __version__, "kind": config.model,
        "config": _config_record(config),
        "trainer": trainer.state_dict(),
        "num_frames": len(inputs.frames), "num_lights": len(inputs.lights),
        "camera": meta.camera.to_json(), "width": inputs.width, "height": inputs.height,
        "poses": torch.from_numpy(inputs.dataset.poses), "times": torch.from_numpy(inputs.dataset.times),
        "fps": meta.fps, "depth_scale_mm": meta.depth_scale_mm, "max_range_mm": inputs.max_range_mm,
        "aperture": None if inputs.aperture is None else torch.from_numpy(inputs.aperture),
        "shadow_light_positions": [l.position.tolist() for l in inputs.lights],
        "gamma": inputs.gamma, "white_balance": list(inputs.white_balance),
        "learn_exposure": inputs.learn_exposure, "train_ids": inputs.train_ids, "test_ids": inputs.test_ids,
        "dataset": str(inputs.dataset.path.resolve()),
    }


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(nan_to_none(data), indent=1, allow_nan=False) + "\n", encoding="utf-8")


def fit(config: PbrFitConfig) -> FitResult:
    """Run ``endo3d pbr fit``: returns the run folder and its metrics."""
    from tqdm import tqdm

    problems = config.problems()
    if problems:
        raise InputError("settings", problems[0])
    torch.manual_seed(config.seed)
    inputs = load_inputs(config)
    if not inputs.train_ids:
        raise InputError(config.dataset, "no training frames")
    if not any(len(inputs.frames[i].points_cam) for i in inputs.train_ids):
        raise InputError(config.dataset, "no training pixel sees the mesh: check the poses, K and --max-range-mm")
    with resumable_output_dir(config.out, overwrite=config.overwrite, resume=config.resume) as (run, resuming):
        model = _start_model(config, inputs)
        trainer = Trainer(config, inputs, model)
        checkpoint = run / "checkpoint.pt"
        if resuming and checkpoint.is_file():
            state = torch.load(checkpoint, weights_only=True)
            now = {k: v for k, v in _config_record(config).items() if k not in RESUME_FREE}
            saved = {k: v for k, v in state.get("config", {}).items() if k not in RESUME_FREE}
            if state.get("num_frames") != len(inputs.frames) or saved != now:
                changed = sorted(k for k in now if saved.get(k) != now[k]) or ["dataset"]
                raise InputError(checkpoint, f"--resume with other settings than the interrupted run "
                                             f"({', '.join(changed[:3])}); start again with --overwrite")
            trainer.load_state_dict(state["trainer"])
        shutil.copyfile(inputs.dataset.path / inputs.dataset.meta.mesh, run / "mesh.ply")
        _write_json(run / "config.json", to_dict(config))
        bar = tqdm(total=config.steps, initial=trainer.step, unit="step", desc=f"pbr fit ({config.model})",
                   disable=not config.progress, dynamic_ncols=True)
        with bar:
            while trainer.step < config.steps:
                clock = time.perf_counter()
                stats = trainer.train_step()
                trainer.train_seconds += time.perf_counter() - clock
                bar.update(1)
                if trainer.step % 10 == 0 or trainer.step == config.steps:
                    bar.set_postfix(loss=f"{stats['loss']:.4f}", psnr=f"{stats['psnr']:.1f}")
                if trainer.step % config.checkpoint_every == 0 and trainer.step < config.steps:
                    _save(checkpoint, _checkpoint(trainer, inputs, config))
        if inputs.learn_exposure:
            model.response.interpolate_exposures(inputs.train_ids)
        _save(checkpoint, _checkpoint(trainer, inputs, config))
        metrics = _evaluate(model, inputs, trainer, config, run)
    return FitResult(Path(config.out), metrics)


def _lpips_scorer() -> tuple[Any, str]:
    """LPIPS (AlexNet) when its weights are on this machine (nothing is downloaded), else ``(None, why)``."""
    try:
        from endo3d.gs.metrics import load_lpips
    except ImportError:
        return None, "LPIPS not computed: no LPIPS loader available"
    return load_lpips(torch.device("cpu"))


def _evaluate(model: PbrModel | BakedModel, inputs: FitInputs, trainer: Trainer, config: PbrFitConfig,
              run: Path) -> dict[str, Any]:
    clock = time.perf_counter()
    test_renders = render_frames(model, inputs, inputs.test_ids)
    render_seconds = time.perf_counter() - clock
    per_test = [image_metrics(r, inputs.images[i], inputs.valid[i]) for r, i in zip(test_renders, inputs.test_ids)]
    lpips, lpips_note = _lpips_scorer() if test_renders else (None, "no test frames")
    if lpips is not None:
        for m, r, i in zip(per_test, test_renders, inputs.test_ids):
            mask = inputs.valid[i].float()
            m["lpips"] = lpips(r * mask, inputs.images[i] * mask)
    train_renders = render_frames(model, inputs, inputs.train_ids)
    per_train = [image_metrics(r, inputs.images[i], inputs.valid[i])
                 for r, i in zip(train_renders, inputs.train_ids)]
    if config.renders:
        (run / "renders").mkdir(exist_ok=True)
        for r, i in zip(test_renders, inputs.test_ids):
            write_png(run / "renders" / f"{i:06d}.png", rgb_to_uint8(r))
    material, gauge = material_report(model, inputs) if isinstance(model, PbrModel) else (
        {"albedo_error": None, "note": "light-baked model: no albedo"}, None)
    lights = light_report(model, inputs, gauge)
    _write_json(run / "lights.json", lights)
    test = mean_metrics(per_test)
    metrics = {
        "model": config.model,
        "psnr": test["psnr"], "psnr_tissue": test["psnr_tissue"], "ssim": test["ssim"],
        "lpips": (sum(m["lpips"] for m in per_test) / len(per_test)) if lpips is not None else None,
        "lpips_note": lpips_note,
        "train_psnr": mean_metrics(per_train)["psnr"],  # the same protocol as "psnr"
        "train_psnr_tissue": mean_metrics(per_train)["psnr_tissue"],
        "test_frames": inputs.test_ids, "train_frames": len(inputs.train_ids),
        "per_frame": [{"index": i, **m} for i, m in zip(inputs.test_ids, per_test)],
        "steps": trainer.step, "train_seconds": trainer.train_seconds,
        "render_fps": len(test_renders) / max(render_seconds, 1e-9) if test_renders else None,
        "device": "cpu", "exposure": "learned" if inputs.learn_exposure else "known",
        "vignetting": "learned" if inputs.learn_vignetting else "known",
        "material": material,
        "lights": lights.get("comparison", {}).get("summary"),
    }
    _write_json(run / "metrics.json", metrics)
    return metrics
