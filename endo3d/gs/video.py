"""``endo3d render``: a reconstructed run as a video over time along a camera path.

Paths (``s`` runs from 0 to 1 over the video; the scene is shown at
normalised time ``t = s``):

- ``training``: the input cameras, interpolated (rotation slerp, position
  lerp) between neighbouring frames when the video has more frames;
- ``fixed``: the first camera held still while the tissue deforms;
- ``orbit``: the first camera swung around the point it looks at (on its
  optical axis at the median depth of the scene) by ``orbit_degrees``, one
  full turn over the video: a novel view the training never saw.

Each frame shows the render and, optionally, its expected depth through the
colour map of :func:`endo3d.viz.depth_to_rgb` with one fixed range for the
whole video.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from endo3d.core.errors import InputError
from endo3d.geometry import axis_angle_to_matrix, interpolate_pose
from endo3d.gs.config import RenderConfig
from endo3d.core.device import resolve_device
from endo3d.gs.frame_renderer import FrameRenderer
from endo3d.gs.train import CHECKPOINT, load_model
from endo3d.io import VideoWriter
from endo3d.viz import depth_to_rgb


def training_path(c2w: torch.Tensor, count: int) -> torch.Tensor:
    """``(count, 4, 4)`` poses through the ``(N, 4, 4)`` input poses, evenly in frame index."""
    x = torch.linspace(0, len(c2w) - 1, count, dtype=torch.float64)
    lo = x.floor().long().clamp(max=len(c2w) - 1)
    hi = (lo + 1).clamp(max=len(c2w) - 1)
    return interpolate_pose(c2w[lo].double(), c2w[hi].double(), x - lo).float()


def orbit_path(c2w: torch.Tensor, centre_depth: float, degrees: float, count: int) -> torch.Tensor:
    """``(count, 4, 4)`` poses swinging ``c2w`` around the point ``centre_depth`` mm along its axis.

    At ``s`` the camera turns about that point by ``degrees`` around the
    camera-frame axis ``(sin 2 pi s, cos 2 pi s, 0)``, so the point stays in
    the image centre while the camera circles it once.
    """
    s = torch.arange(count, dtype=torch.float64) / max(count, 1)
    a = math.radians(degrees)
    axis_angle = torch.stack([a * torch.sin(2 * math.pi * s), a * torch.cos(2 * math.pi * s),
                              torch.zeros_like(s)], -1)
    R_local = axis_angle_to_matrix(axis_angle)  # rotation in the camera frame
    pivot = torch.tensor([0.0, 0.0, centre_depth], dtype=torch.float64)
    # camera-frame transform: rotate about the pivot, x' = R (x - p) + p; compose on the right of c2w
    local = torch.eye(4, dtype=torch.float64).repeat(count, 1, 1)
    local[:, :3, :3] = R_local
    local[:, :3, 3] = pivot - R_local @ pivot
    return (c2w.double() @ local).float()


def render_video(config: RenderConfig) -> int:
    """Write the video of ``config``; returns the number of frames written."""
    run = Path(config.run)
    checkpoint_path = run / CHECKPOINT
    cameras_path = run / "cameras.json"
    for path in (checkpoint_path, cameras_path):
        if not path.is_file():
            raise InputError(path, "missing: not a run folder written by endo3d reconstruct")
    out = Path(config.out)
    if out.suffix.lower() not in (".mp4", ".mkv", ".mov"):
        raise InputError(out, "the output must be a .mp4, .mkv or .mov file")
    if out.exists() and not config.overwrite:
        raise InputError(out, "already exists (pass --overwrite to replace it)")
    if config.frames < 0 or config.fps < 0:
        raise InputError(out, f"--frames and --fps must be >= 0, got {config.frames} and {config.fps}")
    device = resolve_device(config.device)
    try:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        cameras = json.loads(cameras_path.read_text())
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(checkpoint_path, f"unreadable ({e})") from None
    model = load_model(state, device)
    c2w = torch.tensor([f["c2w"] for f in cameras["frames"]], dtype=torch.float32)
    Ks = torch.tensor([f.get("K", cameras["K"]) for f in cameras["frames"]], dtype=torch.float32, device=device)
    width, height = int(cameras["width"]), int(cameras["height"])
    count = config.frames or len(c2w)
    times = cameras["frames"]
    span = times[-1]["time"] - times[0]["time"]
    fps = config.fps or ((len(times) - 1) / span if span > 0 else 30.0)
    if config.path == "training":
        poses = training_path(c2w, count)
    elif config.path == "fixed":
        poses = c2w[:1].expand(count, 4, 4)
    else:
        with torch.no_grad():
            means = model.at_time(0.0)["means"].cpu()
        cam = (means - c2w[0, :3, 3]) @ c2w[0, :3, :3]
        centre = float(cam[cam[:, 2] > 0, 2].median()) if bool((cam[:, 2] > 0).any()) else 50.0
        poses = orbit_path(c2w[0], centre, config.orbit_degrees, count)
    t = torch.linspace(0, 1, count)
    background = torch.tensor(state["config"]["background"], dtype=torch.float32, device=device)  # as trained
    depth_range: tuple[float, float] | None = None
    out.parent.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    render = FrameRenderer(model)
    with VideoWriter(out, fps=fps) as video, torch.no_grad():
        for k in tqdm(range(count), desc="render", unit="frame"):
            nearest = round(k * (len(Ks) - 1) / max(count - 1, 1)) if config.path == "training" else 0
            r = render(poses[k].to(device), Ks[nearest], width, height, t[k], background=background)
            rgb = (r.rgb.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            if config.depth_panel:
                depth = (r.depth * (r.alpha > 0.5))[0].cpu().numpy()
                if depth_range is None:
                    valid = depth[depth > 0]
                    depth_range = tuple(np.percentile(valid, [2, 98])) if valid.size else (1.0, 2.0)
                rgb = np.concatenate([rgb, depth_to_rgb(depth, *depth_range)], axis=1)
            video.write(rgb)
    return count
