"""``endo3d reconstruct`` on datasets: train, evaluate, and write the run folder.

The run folder (CONVENTIONS.md) is written into a staging folder beside
``--out`` that holds the checkpoints while training and is renamed to
``--out`` when everything is written; an interrupted run continues with
``--resume``.

Evaluation renders the held-out frames, rounds them to 8 bits, writes them to
``renders/`` and computes the metrics *from the 8-bit images*, so that
recomputing the metrics from ``renders/`` and the dataset gives the same
numbers. Render speed is the wall time of rendering every frame with its
deformation (forward only, synchronised on CUDA).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endo3d.core.config import to_dict
from endo3d.core.errors import Endo3dError, InputError
from endo3d.core.fs import check_resumable_output, resumable_output_dir, write_bytes_atomic
from endo3d.gs.config import ReconstructConfig
from endo3d.gs.data import FrameSet, load_frames
from endo3d.gs.metrics import ImageMetrics, image_metrics, load_lpips, mean_metrics
from endo3d.gs.frame_renderer import FrameRenderer
from endo3d.core.device import resolve_device
from endo3d.gs.train import CHECKPOINT, Trainer
from endo3d.io import encode_depth, is_dataset, rgb_to_uint8, write_png, write_rgb

RENDER_DEPTH_SCALE_MM = 0.01
"""Depth renders are stored like dataset depth: uint16, depth_mm = value * 0.01."""


@dataclasses.dataclass
class ReconstructResult:
    """What a finished run reports (also in ``metrics.json``)."""

    run: Path
    metrics: dict[str, Any]


def quantise(rgb: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` [0, 1] as the uint8 ``(H, W, 3)`` image that ``renders/`` stores (:func:`rgb_to_uint8`)."""
    return rgb_to_uint8(rgb.cpu())


def choose_backend(name: str, device: torch.device) -> str:
    """The rasteriser backend for ``--rasterizer`` on ``device``."""
    if name == "gsplat" and device.type != "cuda":
        raise Endo3dError("--rasterizer gsplat needs CUDA (gsplat has no CPU path); use --rasterizer torch")
    return name


def resolved_backend(name: str, device: torch.device) -> str:
    """The rasteriser ``auto`` ends up using on ``device`` (gsplat on CUDA when it imports)."""
    if name != "auto":
        return name
    return "gsplat" if device.type == "cuda" and importlib.util.find_spec("gsplat") is not None else "torch"


@torch.no_grad()
def evaluate(render: FrameRenderer, frames: FrameSet, out: Path | None,
             background: torch.Tensor) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Render and score the test frames; write ``renders/`` into ``out`` when given.

    Returns the mean metrics, the per-frame metrics and a note on LPIPS.
    """
    lpips, lpips_note = load_lpips(frames.rgb.device)
    per_frame: list[ImageMetrics] = []
    rows = []
    if out is not None:
        (out / "renders" / "depth").mkdir(parents=True, exist_ok=True)
    for i in frames.test:
        r = render(frames.c2w[i], frames.K[i], frames.width, frames.height, frames.t[i], background=background)
        stored = quantise(r.rgb)
        rgb = torch.from_numpy(stored).to(r.rgb).permute(2, 0, 1) / 255
        depth = r.depth * (r.alpha > 0.5)
        target_depth = frames.gt_depth[i] if frames.gt_depth is not None else None
        m = image_metrics(rgb, frames.rgb[i], frames.valid[i], depth=depth, target_depth=target_depth,
                          lpips=lpips)
        per_frame.append(m)
        rows.append({"index": int(frames.index[i]), **dataclasses.asdict(m)})
        if out is not None:
            name = f"{int(frames.index[i]):06d}.png"
            write_rgb(out / "renders" / name, stored)
            write_png(out / "renders" / "depth" / name,
                      encode_depth(depth[0].cpu().numpy(), RENDER_DEPTH_SCALE_MM))
    return mean_metrics(per_frame), rows, lpips_note


@torch.no_grad()
def render_fps(render: FrameRenderer, frames: FrameSet, background: torch.Tensor, repeats: int = 1) -> float:
    """Frames per second of rendering every frame with deformation (one warm-up render first, which on CUDA
    captures the renderer's graph if it has none yet)."""
    sync = torch.cuda.synchronize if frames.rgb.is_cuda else (lambda: None)
    render(frames.c2w[0], frames.K[0], frames.width, frames.height, frames.t[0], background=background)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(len(frames)):
            render(frames.c2w[i], frames.K[i], frames.width, frames.height, frames.t[i], background=background)
    sync()
    return repeats * len(frames) / (time.perf_counter() - start)


def cameras_json(frames: FrameSet) -> dict[str, Any]:
    """``cameras.json`` of CONVENTIONS.md: the cameras used, in input order and units."""
    return {
        "width": frames.width, "height": frames.height, "K": frames.K[0].tolist(),
        "frames": [{"index": int(frames.index[i]), "time": float(frames.time_s[i]), "c2w": frames.c2w[i].tolist(),
                    **({"K": frames.K[i].tolist()} if not torch.equal(frames.K[i], frames.K[0]) else {})}
                   for i in range(len(frames))],
    }


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON (no NaN or infinity), written atomically: a crash leaves the old file or none."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode())


def reconstruct(config: ReconstructConfig) -> ReconstructResult:
    """Run ``endo3d reconstruct``: a dataset folder here, a video or image folder through
    :func:`endo3d.pipeline.run.reconstruct_video`."""
    problems = config.problems()
    if problems:
        raise Endo3dError("; ".join(problems))
    source = Path(config.input)
    if not source.exists():
        raise InputError(source, "missing")
    dataset = is_dataset(source)
    if dataset and (flags := config.video_flags_set()):
        raise InputError(source, f"{', '.join(flags)}: only for a video or image-folder input, "
                                 "this is a dataset folder")
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        if dataset:
            return _reconstruct(config)
        from endo3d.pipeline.run import reconstruct_video

        return reconstruct_video(config)
    finally:
        torch.set_num_threads(threads)


def _reconstruct(config: ReconstructConfig) -> ReconstructResult:
    if config.deformation == "auto":  # EndoGaussian's field: on datasets the better depth (README)
        config = dataclasses.replace(config, deformation="hexplane")
    check_resumable_output(config.out, overwrite=config.overwrite, resume=config.resume)
    device = resolve_device(config.device)
    backend = choose_backend(config.rasterizer, device)
    frames = load_frames(config.input, depth_dir=config.depth_dir)
    trainer = Trainer(config, frames, device, backend)  # validates depth settings before anything is written
    with resumable_output_dir(config.out, overwrite=config.overwrite, resume=config.resume) as (run, resuming):
        if resuming and (run / CHECKPOINT).is_file():
            state = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
            problem = trainer.resume_problem(state)
            if problem:
                raise Endo3dError(f"{run / CHECKPOINT}: {problem}, or start again with --overwrite")
            trainer.load_state_dict(state)
        write_json(run / "config.json", to_dict(trainer.config))
        trainer.fit(run, progress=config.progress)
        if config.refine_poses == "on":
            frames.c2w = trainer.bake_cameras().cpu()
        model = trainer.model.eval()
        render = FrameRenderer(model, backend=backend)
        means, per_frame, lpips_note = evaluate(render, trainer.frames, run, trainer.background)
        repeats = 5 if device.type == "cuda" else 1
        fps = render_fps(render, trainer.frames, trainer.background, repeats=repeats)
        model.export_ply(run / "point_cloud.ply", t=0.0)
        write_json(run / "cameras.json", cameras_json(frames))
        metrics = {
            "psnr": means["psnr"], "ssim": means["ssim"], "lpips": means["lpips"],
            "depth_rmse_mm": means["depth_rmse_mm"], "train_seconds": trainer.train_seconds,
            "render_fps": fps, "num_gaussians": model.num_gaussians, "device": device.type,
            "test_frames": [int(frames.index[i]) for i in frames.test],
            "psnr_tissue": means["psnr_tissue"],
            "psnr_protocol": "psnr: masked full image (instrument pixels zeroed in render and target, averaged "
                             "over all pixels, as Deform3DGS); psnr_tissue: tissue pixels only (as EndoGaussian); "
                             "ssim: masked full image, zero-padded borders (both)",
            "lpips_note": lpips_note,
            "metric_scale": True,
            "iterations": trainer.schedule.total, "coarse_iterations": trainer.schedule.coarse,
            "deformation": config.deformation, "rasterizer": resolved_backend(backend, device),
            "depth_loss": trainer.schedule.depth, "render_size": [frames.width, frames.height],
            "per_frame": per_frame,
        }
        write_json(run / "metrics.json", metrics)
    return ReconstructResult(run=Path(config.out), metrics=metrics)
