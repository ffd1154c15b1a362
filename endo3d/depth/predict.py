"""``endo3d depth predict``: per-frame depth of an image folder, video or dataset.

Two modes:

- ``--checkpoint RUN``: the adapted network's depth in mm ("metric-ish":
  its scale is whatever training gave it; supervised metric fine-tuning
  makes it metric), resized back to the input resolution.
- ``--weights FILE`` (no run): the foundation model's raw relative inverse
  depth, preprocessed as the official ``infer_image`` does
  (:func:`endo3d.depth.model.predict_inverse_depth`), at input resolution.

Writes into an atomic output folder: ``NNNNNN.npy`` (float32 ``(H, W)``) and
``NNNNNN.png`` (colour-mapped) per frame, ``depth.mp4`` with ``--video``,
and ``predict.json`` (what the values mean).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from endo3d.core.fs import atomic_output_dir
from endo3d.depth.config import DepthPredictConfig

__all__ = ["colourise", "predict"]


def colourise(values: np.ndarray, *, inverse: bool) -> np.ndarray:
    """``(H, W)`` depth in mm (``inverse=False``) or relative inverse depth -> uint8 ``(H, W, 3)``."""
    from endo3d.viz import colormap, depth_to_rgb

    if not inverse:
        return depth_to_rgb(values)
    lo, hi = np.percentile(values, [2, 98])
    x = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    return colormap(x)


@torch.no_grad()
def predict(config: DepthPredictConfig) -> dict[str, Any]:
    """Run the prediction and write the output folder; returns the ``predict.json`` record."""
    from tqdm import tqdm

    from endo3d.depth.data import open_sequences
    from endo3d.core.device import resolve_device
    from endo3d.depth.train import resize_image
    from endo3d.io import VideoWriter, write_png

    config.check()
    sequences = open_sequences(config.input, frame_step=config.frame_step)
    device = resolve_device(config.device)
    if config.checkpoint is not None:
        from endo3d.depth.run import load_run

        net = load_run(config.checkpoint).net.to(device).eval()
        size = (net.config.height, net.config.width)
        kind = "depth_mm"

        def infer(img: torch.Tensor) -> torch.Tensor:
            d = net.depth(resize_image(img, size)[None].to(device))
            return F.interpolate(d, size=img.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    else:
        from endo3d.depth.checkpoint import load_depth_anything
        from endo3d.depth.model import predict_inverse_depth

        assert config.weights is not None
        model = load_depth_anything(config.weights, encoder=config.encoder, version=config.version).to(device).eval()
        kind = "relative_inverse_depth"

        def infer(img: torch.Tensor) -> torch.Tensor:
            return predict_inverse_depth(model, img[None].to(device), size=config.input_size)[0, 0]

    frames = sum(len(s) for s in sequences)
    record: dict[str, Any] = {"input": str(config.input), "values": kind, "frames": frames,
                              "checkpoint": None if config.checkpoint is None else str(config.checkpoint),
                              "weights": None if config.weights is None else str(config.weights),
                              "units": "mm" if kind == "depth_mm" else "relative (larger = nearer)",
                              "files": []}
    with atomic_output_dir(config.out, overwrite=config.overwrite) as out, contextlib.ExitStack() as stack:
        video = stack.enter_context(VideoWriter(out / "depth.mp4", fps=30.0)) if config.video else None
        n = 0
        bar = tqdm(total=frames, desc="depth predict", unit="frame", disable=not config.progress)
        for seq in sequences:
            for i in range(len(seq)):
                values = infer(seq.image(i)).float().cpu().numpy().astype(np.float32)
                name = f"{n:06d}"
                np.save(out / f"{name}.npy", values)
                rgb = colourise(values, inverse=kind != "depth_mm")
                write_png(out / f"{name}.png", rgb)
                if video is not None:
                    video.write(rgb)
                record["files"].append({"index": n, "sequence": seq.name, "frame": i, "npy": f"{name}.npy",
                                        "png": f"{name}.png"})
                n += 1
                bar.update(1)
        bar.close()
        (out / "predict.json").write_text(json.dumps(record, indent=1))
    return record
