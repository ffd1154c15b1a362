"""``endo3d reconstruct VIDEO``: video in; cameras, depth, mesh, deformable Gaussians, metrics and a report out.

Stages (one progress bar across them, :class:`~endo3d.pipeline.progress.StageProgress`):

1. **frames** (:mod:`endo3d.pipeline.frames`): decode, select, resize; find
   the field of view, specular highlights, instrument masks. Frames
   ``(i - 1) % 8 == 0`` of the selected clip are held out: nothing below
   trains on them.
2. **depth** (:func:`~endo3d.pipeline.cameras.adapt_depth`): self-supervised
   adaptation of depth, pose and intrinsics on the training frames.
3. **cameras**: the networks on every frame
   (:func:`~endo3d.pipeline.cameras.predict_cameras`), then per-frame depth
   scale / shift / smooth shape, pose and focal refinement over the training frames
   (:func:`~endo3d.pipeline.consistency.refine_cameras`); an estimated focal
   length is then probed -+10 % (:func:`~endo3d.pipeline.consistency.focal_profile`)
   and flagged when the video does not determine it; each held-out
   frame's camera is registered to its training neighbours
   (:func:`~endo3d.pipeline.consistency.register_frames`: only its pose moves).
4. **mesh** (:mod:`endo3d.pipeline.fusion`): TSDF fusion of the training
   frames' depth -> ``mesh.ply``.
5. **gaussians** (:class:`endo3d.gs.train.Trainer`): the deformable model on
   the estimated cameras with a relative (scale-free) depth loss.
6. **evaluate**: held-out renders and metrics (from the 8-bit files, as for
   datasets), the baseline of repeating the nearest training frame, and
   ``report.html``.

Everything is written into ``.RUN.partial`` and renamed to ``RUN`` at the
end. Each stage leaves its result there (the depth run, ``cameras.pt``,
``mesh.ply``, the Gaussians' checkpoint), so ``--resume`` skips finished
stages and continues the interrupted one; it refuses other settings.
``metrics.json``'s ``stage_seconds`` sum each stage's wall time over all
attempts, so a resumed run still shows what its finished stages cost.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endo3d.core.config import to_dict
from endo3d.core.device import resolve_device
from endo3d.core.errors import InputError
from endo3d.core.fs import check_resumable_output, resumable_output_dir, staging_dir
from endo3d.depth.config import DepthTrainConfig
from endo3d.gs.config import ReconstructConfig
from endo3d.gs.data import FrameSet, split
from endo3d.gs.frame_renderer import FrameRenderer
from endo3d.gs.metrics import format_metric, image_metrics, mean_metrics
from endo3d.gs.reconstruct import (
    RENDER_DEPTH_SCALE_MM, ReconstructResult, choose_backend, evaluate, render_fps, resolved_backend, write_json,
)
from endo3d.gs.train import CHECKPOINT, Trainer, schedule_steps
from endo3d.pipeline import cameras as cam
from endo3d.geometry import anchor_of, carry_corrections
from endo3d.pipeline.consistency import (
    FOCAL_PROBE, correct_depth, focal_profile, refine_cameras, register_frames, scale_focal,
)
from endo3d.pipeline.frames import Clip, check_options, load_clip, probe_clip
from endo3d.pipeline.plan import MIN_FRAMES, VideoPlan, make_plan
from endo3d.pipeline.progress import StageProgress

PIPELINE_JSON = "pipeline.json"
STAGE_SECONDS_JSON = "stage_seconds.json"
"""Seconds per stage so far, summed over the attempts of a resumed run (removed when the run finishes)."""
CAMERAS_PT = "cameras.pt"
STAGES = ("frames", "depth", "cameras", "mesh", "gaussians", "evaluate")
FLAT_RELIEF = 0.02
"""Below this depth relief (:func:`depth_relief`) the estimated depth carries no shape and the Gaussians get no
relative depth loss."""
_RESUME_FREE = {"resume", "overwrite", "progress", "threads"}
"""Settings that may change between an interrupted run and its --resume."""


@dataclasses.dataclass
class Cameras:
    """The camera stage's result for all frames (working resolution).

    Attributes:
        depth: float32 ``(N, 1, H, W)`` consistent z-depth (poses' units).
        c2w: float64 ``(N, 4, 4)``; K: float64 ``(3, 3)``.
        info: what the stage measured (focal, refinement losses, scales).
    """

    depth: torch.Tensor
    c2w: torch.Tensor
    K: np.ndarray
    info: dict[str, Any]


def nearest_training_frame(i: int, train: list[int]) -> int:
    """The training frame closest in time to ``i`` (the earlier one on a tie)."""
    return min(train, key=lambda j: (abs(j - i), j))


def depth_relief(depth: torch.Tensor, valid: torch.Tensor) -> float:
    """Median over frames of the coefficient of variation (std / mean) of the valid depth: how far the depth
    maps are from flat."""
    values = []
    for d, ok in zip(depth, valid):
        v = d[ok & (d > 0)]
        if v.numel() > 1:
            values.append(float(v.std() / v.mean()))
    return float(np.median(values)) if values else 0.0


def _weights(plan: VideoPlan, gs_steps: int, frames: int) -> dict[str, float]:
    """Expected relative cost of each stage (seconds on a 2-core CPU, measured per step at 160x90)."""
    pixels = plan.width * plan.height / (160 * 90)
    tokens = plan.net_height * plan.net_width / (84 * 154)
    return {"frames": 0.05 * frames, "depth": 0.35 * plan.depth_batch * tokens * plan.adapt_steps,
            "cameras": 0.3 * plan.align_steps + 0.8 * plan.focal_probe_steps + 0.1 * frames, "mesh": 3.0,
            "gaussians": 0.17 * pixels ** 0.5 * gs_steps, "evaluate": 5.0 + 0.2 * frames}


def reconstruct_video(config: ReconstructConfig) -> ReconstructResult:
    """Run the whole pipeline on ``config.input`` (a video file or image folder); see the module docstring."""
    check_resumable_output(config.out, overwrite=config.overwrite, resume=config.resume)
    device = resolve_device(config.device)
    backend = choose_backend(config.rasterizer, device)
    total, src_h, src_w, fps = probe_clip(config.input, image_fps=config.video.image_fps)
    check_options(Path(config.input), config.start, config.end, max(config.stride, 1), config.max_frames,
                  config.width)  # before the plan uses them; a stride of 0 is the plan's to pick
    plan = make_plan(config, frames=total, fps=fps, source_size=(src_h, src_w), cuda=device.type == "cuda")
    K_given = cam.intrinsics_from_flags(config.K, config.calibration, (src_h, src_w), (plan.height, plan.width))
    gs_config = plan.gaussian_config(config)
    started = time.perf_counter()
    clip = load_clip(config.input, start_s=config.start, end_s=config.end, stride=plan.stride,
                     max_frames=plan.max_frames, width=plan.width, masks=config.masks,
                     image_fps=config.video.image_fps, specular_threshold=config.video.specular_threshold,
                     detect_fov_mask=config.video.detect_fov)
    if len(clip) < MIN_FRAMES:
        raise InputError(config.input, f"only {len(clip)} frame(s) selected: the pipeline needs at least "
                                       f"{MIN_FRAMES} (check --start/--end/--stride/--max-frames)")
    settings = _settings(config, plan)
    if config.resume:
        _check_resume(config, settings)
    progress = StageProgress(_weights(plan, sum(schedule_steps(gs_config, device)), len(clip)),
                             enabled=config.progress)
    progress.record("frames", time.perf_counter() - started)
    try:
        with resumable_output_dir(config.out, overwrite=config.overwrite, resume=config.resume) as (run, _):
            if not (run / PIPELINE_JSON).is_file():
                write_json(run / PIPELINE_JSON, settings)
            progress.keep_in(run / STAGE_SECONDS_JSON)
            result = _stages(run, config, gs_config, plan, clip, K_given, device, backend, progress)
    finally:
        progress.close()
    return result


def _settings(config: ReconstructConfig, plan: VideoPlan) -> dict[str, Any]:
    """What ``pipeline.json`` records: the settings that must not change on --resume, and the plan."""
    settings = {"config": {k: v for k, v in to_dict(config).items() if k not in _RESUME_FREE},
                "plan": dataclasses.asdict(plan)}
    return json.loads(json.dumps(settings))


def _check_resume(config: ReconstructConfig, settings: dict[str, Any]) -> None:
    """Refuse to --resume an interrupted run with other settings (one line naming the first that differ)."""
    path = staging_dir(config.out) / PIPELINE_JSON
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, f"unreadable ({type(e).__name__}); start again with --overwrite") from None
    if saved != settings:
        changed = sorted(k for k in settings["config"] if saved["config"].get(k) != settings["config"][k])
        raise InputError(config.out, "--resume with other settings than the interrupted run "
                                     f"({', '.join(changed[:3]) or 'plan'}); start again with --overwrite")


def _stages(run: Path, config: ReconstructConfig, gs_config: ReconstructConfig, plan: VideoPlan, clip: Clip,
            K_given: np.ndarray | None, device: torch.device, backend: str,
            progress: StageProgress) -> ReconstructResult:
    train, test = split(range(len(clip)))
    with progress.stage("depth", plan.adapt_steps) as update:
        depth_config = DepthTrainConfig(
            data=(clip.source,), out=run / cam.DEPTH_RUN, weights=config.depth_weights, init=config.depth_init,
            encoder=config.video.encoder, height=plan.net_height, width=plan.net_width, steps=plan.adapt_steps,
            batch_size=plan.depth_batch, lr=config.video.depth_lr, pose_lr=config.video.pose_lr,
            pose_width=plan.pose_width, pose_warmup=plan.pose_warmup, seed=config.seed,
            prior_weight=config.video.prior_weight if config.depth_weights or config.depth_init else 0.0,
            intrinsics="learn" if K_given is None else "known", specular_threshold=1.0,
            checkpoint_every=max(25, plan.adapt_steps // 5), device=config.device, progress=False,
        )
        depth_run = cam.adapt_depth(depth_config, cam.training_sequence(clip, train, K_given),
                                    on_step=lambda done, loss: update(done, f"adapt {done}/{plan.adapt_steps}"))
    with progress.stage("cameras", plan.align_steps + plan.focal_probe_total + 1) as update:
        cameras = _cameras(run, depth_run, clip, train, test, K_given, plan, config, device, update)
    with progress.stage("mesh") as update:
        mesh = _mesh(run, clip, train, cameras, config)
    relief = depth_relief(cameras.depth[train], clip.valid[train])
    if relief < FLAT_RELIEF and gs_config.loss.depth == "relative":
        # a correlation with a flat map is noise: the Gaussians then follow the images alone
        gs_config = dataclasses.replace(gs_config, loss=dataclasses.replace(gs_config.loss, depth="none"))
    cameras.info["depth_relief"] = relief
    frames = FrameSet(
        rgb=clip.rgb, valid=clip.valid, depth=cameras.depth, gt_depth=None, c2w=cameras.c2w.float(),
        K=torch.from_numpy(cameras.K).float().expand(len(clip), 3, 3).clone(),
        t=torch.arange(len(clip), dtype=torch.float32) / max(len(clip) - 1, 1), index=np.arange(len(clip)),
        time_s=clip.time_s, train=train, test=test, source=clip.source,
    )
    trainer = Trainer(gs_config, frames, device, backend)
    with progress.stage("gaussians", trainer.schedule.total) as update:
        if (run / CHECKPOINT).is_file():
            state = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
            problem = trainer.resume_problem(state)
            if problem:
                raise InputError(run / CHECKPOINT, f"{problem}, or start again with --overwrite")
            trainer.load_state_dict(state)
        write_json(run / "config.json", to_dict(trainer.config))
        trainer.fit(run, progress=False, on_step=lambda s: update(s, f"step {s}/{trainer.schedule.total}"))
        if gs_config.refine_poses == "on":
            cameras.c2w = trainer.bake_cameras().double().cpu()
    with progress.stage("evaluate"):
        metrics = _evaluate(run, config, plan, clip, cameras, trainer, mesh, device, backend, progress)
    (run / STAGE_SECONDS_JSON).unlink()  # in metrics.json now
    return ReconstructResult(run=Path(config.out), metrics=metrics)


def _cameras(run: Path, depth_run: Path, clip: Clip, train: list[int], test: list[int],
             K_given: np.ndarray | None, plan: VideoPlan, config: ReconstructConfig, device: torch.device,
             update: Any) -> Cameras:
    """Predict, refine and place every camera (or load the stage's saved result on --resume)."""
    path = run / CAMERAS_PT
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        return Cameras(saved["depth"], saved["c2w"], saved["K"], saved["info"])
    update(0, "predict")
    raw = cam.predict_cameras(depth_run, clip, train, K_given, device)
    refined = refine_cameras(
        clip.rgb[train], clip.valid[train], raw.depth[train], raw.K, raw.c2w[train], steps=plan.align_steps,
        window=config.video.align_window, height=config.video.align_height, learn_focal=raw.K_estimated,
        on_step=lambda s: update(s, f"refine {s}/{plan.align_steps}"), seed=config.seed, device=device,
    )
    c2w = carry_corrections(raw.c2w, train, refined.c2w)
    K = scale_focal(raw.K, refined.focal_scale)
    profile = None
    probes = plan.focal_probe_total
    if probes:
        profile = focal_profile(
            clip.rgb[train], clip.valid[train], raw.depth[train], raw.K, refined, steps=plan.focal_probe_steps,
            window=config.video.align_window, height=config.video.align_height, seed=config.seed, device=device,
            on_step=lambda s: update(plan.align_steps + s, f"focal probes {s}/{probes}"))
    follows = torch.tensor([anchor_of(i, train) for i in range(len(clip))])  # each frame's training frame
    depth = correct_depth(raw.depth, refined.scale[follows], refined.shift_mm[follows], refined.shape[follows])
    depth = depth.clamp_min(0) * clip.fov
    update(plan.align_steps + probes, "register held-out frames")
    c2w = register_frames(clip.rgb, clip.valid, depth, K, c2w, test, train, steps=plan.align_steps,
                          height=config.video.align_height, device=device)
    info = {"K_estimated": raw.K_estimated, "focal_px": float(K[0, 0]), "focal_scale_refined": refined.focal_scale,
            "refine_loss_before": refined.loss_before, "refine_loss_after": refined.loss_after,
            "focal_probe": None if profile is None else {
                "relative_change": FOCAL_PROBE, "objective_rise": list(profile.rise),
                "determined": profile.determined},
            "depth_scale_range": [float(refined.scale.min()), float(refined.scale.max())],
            "depth_shape_max_factor": float(refined.shape.abs().max().exp()),
            "path_length": float((c2w[1:, :3, 3] - c2w[:-1, :3, 3]).norm(dim=1).sum())}
    cameras = Cameras(depth.float(), c2w, K, info)
    tmp = path.with_suffix(".tmp")
    torch.save(dataclasses.asdict(cameras), tmp)
    tmp.replace(path)
    return cameras


def _mesh(run: Path, clip: Clip, train: list[int], cameras: Cameras, config: ReconstructConfig) -> Any:
    """TSDF-fuse the training frames into ``mesh.ply`` (kept on --resume); returns the mesh."""
    from endo3d.pipeline.fusion import fuse_tsdf, read_mesh_ply, write_mesh_ply

    path = run / "mesh.ply"
    if path.is_file():
        return read_mesh_ply(path)
    try:
        mesh = fuse_tsdf(cameras.depth[train, 0].numpy(), clip.rgb[train].permute(0, 2, 3, 1).numpy(),
                         clip.valid[train, 0].numpy(), cameras.K, cameras.c2w[train].numpy(),
                         voxel_mm=config.video.voxel_mm or None)
    except ValueError as e:
        raise InputError(config.input, f"TSDF fusion failed: {e}") from None
    write_mesh_ply(path, mesh)
    return mesh


def _evaluate(run: Path, config: ReconstructConfig, plan: VideoPlan, clip: Clip, cameras: Cameras,
              trainer: Trainer, mesh: Any, device: torch.device, backend: str,
              progress: StageProgress) -> dict[str, Any]:
    from endo3d.io import decode_depth, read_png, read_rgb, rgb_to_uint8, write_png
    from endo3d.pipeline.fusion import mesh_picture
    from endo3d.pipeline.report import StripRow, camera_path_svg, write_report
    from endo3d.viz import depth_to_rgb

    model = trainer.model.eval()
    frames = trainer.frames
    render = FrameRenderer(model, backend=backend)
    means, per_frame, lpips_note = evaluate(render, frames, run, trainer.background)
    baseline_rows = []
    for i in frames.test:
        j = nearest_training_frame(i, frames.train)
        baseline_rows.append(image_metrics(frames.rgb[j], frames.rgb[i], frames.valid[i]))
    baseline = mean_metrics(baseline_rows)
    for row, b in zip(per_frame, baseline_rows):
        row["baseline_psnr"] = b.psnr
    fps = render_fps(render, frames, trainer.background, repeats=5 if device.type == "cuda" else 1)
    model.export_ply(run / "point_cloud.ply", t=0.0)
    (run / "depth").mkdir(exist_ok=True)
    for i in range(len(clip)):
        d = cameras.depth[i, 0].numpy().astype(np.float32)
        np.save(run / "depth" / f"{i:06d}.npy", d)
        write_png(run / "depth" / f"{i:06d}.png", depth_to_rgb(d))
    write_json(run / "cameras.json", cameras_json(clip, cameras))
    seconds = progress.so_far()  # evaluate's own time until its outputs are written
    metrics = {
        "psnr": means["psnr"], "ssim": means["ssim"], "lpips": means["lpips"], "depth_rmse_mm": None,
        "train_seconds": trainer.train_seconds, "render_fps": fps, "num_gaussians": model.num_gaussians,
        "device": device.type, "test_frames": list(frames.test), "psnr_tissue": means["psnr_tissue"],
        "baseline_nearest_frame": {"psnr": baseline["psnr"], "ssim": baseline["ssim"],
                                   "psnr_tissue": baseline["psnr_tissue"]},
        "psnr_protocol": "psnr and ssim: masked full image over held-out frames (field of view, no specular "
                         "highlights, no instruments); baseline_nearest_frame: the nearest training frame "
                         "repeated, scored the same way",
        "lpips_note": lpips_note,
        "depth_note": "no ground-truth depth for a video: depth_rmse_mm is null",
        "metric_scale": False,
        "scale_note": "poses and depth share the scale the self-supervised networks found (mm-like, not "
                      "guaranteed metric)",
        "frames": len(clip), "source_frames": [int(x) for x in clip.index], "stride": plan.stride,
        "working_size": [plan.width, plan.height], "preset": plan.preset,
        "cameras": cameras.info, "stage_seconds": seconds,
        "iterations": trainer.schedule.total, "deformation": trainer.config.deformation,
        "rasterizer": resolved_backend(backend, device), "depth_loss": trainer.schedule.depth,
        "mesh": {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)), "voxel": mesh.voxel_mm},
        "per_frame": per_frame,
    }
    write_json(run / "metrics.json", metrics)
    strips = []
    for i, row in zip(frames.test, per_frame):
        name = f"{i:06d}.png"  # the render and its depth as evaluate() stored them
        render = read_rgb(run / "renders" / name)
        d = decode_depth(read_png(run / "renders" / "depth" / name), RENDER_DEPTH_SCALE_MM)
        caption = (f"frame {i} (video frame {int(clip.index[i])}): PSNR {format_metric(row['psnr'])} dB, "
                   f"nearest training frame {format_metric(row['baseline_psnr'])} dB")
        strips.append(StripRow(index=i, images=[rgb_to_uint8(clip.rgb[i]), render, depth_to_rgb(d)],
                               caption=caption))
    picture = mesh_picture(mesh, cameras.K, cameras.c2w[0].numpy(), clip.width, clip.height, pull_back=0.3)
    summary = [("input", str(config.input)), ("frames", f"{len(clip)} (stride {plan.stride}, "
                                                          f"{plan.width}x{plan.height}), {len(frames.test)} held out"),
               ("held-out PSNR", f"{format_metric(means['psnr'])} dB (repeating the nearest training frame: "
                                 f"{format_metric(baseline['psnr'])} dB)"),
               ("focal length", focal_summary(cameras.info)),
               ("Gaussians", f"{model.num_gaussians}"), ("device", device.type)]
    write_report(run / "report.html", title=f"endo3d reconstruct: {Path(config.input).name}", summary=summary,
                 settings=to_dict(config), timings=seconds,
                 metrics={k: v for k, v in metrics.items() if k != "per_frame"},
                 camera_svg=camera_path_svg(cameras.c2w.numpy(), test=list(frames.test)), strips=strips,
                 strip_headings=["input", "render", "depth"], mesh_image=picture,
                 notes=[metrics["scale_note"], lpips_note])
    return metrics


def focal_summary(info: dict[str, Any]) -> str:
    """One line on the focal length from the camera stage's ``info``: given, or estimated and whether the
    video determines it."""
    focal = f"{info['focal_px']:.1f} px"
    probe = info.get("focal_probe")
    if probe is None:
        return f"{focal} ({'estimated' if info['K_estimated'] else 'given'})"
    low, high = (100 * r for r in probe["objective_rise"])
    change = 100 * probe["relative_change"]
    fit = f"the refitted objective changes {low:+.1f} % / {high:+.1f} % at -/+{change:.0f} %"
    if probe["determined"]:
        return f"{focal} (estimated; {fit})"
    return (f"{focal} (estimated, NOT determined by this video: {fit}; "
            f"pass --K or --calibration where metric intrinsics matter)")


def cameras_json(clip: Clip, cameras: Cameras) -> dict[str, Any]:
    """``cameras.json`` (CONVENTIONS.md) at the working resolution, plus each frame's number in the video."""
    return {
        "width": clip.width, "height": clip.height, "K": cameras.K.tolist(), "K_estimated": cameras.info["K_estimated"],
        "metric_scale": False,
        "frames": [{"index": i, "time": float(clip.time_s[i]), "source_frame": int(clip.index[i]),
                    "c2w": cameras.c2w[i].tolist()} for i in range(len(clip))],
    }
