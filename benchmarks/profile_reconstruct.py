"""Where a reconstruction's training step and render spend their time.

Builds the trainer of ``endo3d reconstruct`` on a dataset, trains ``--warmup``
steps (so densification has grown the model), then times the phases of a
fine-stage step with synchronised timers, each the median over ``--steps``
frames:

- ``deform``: the deformation field's forward (``field(splats, t)``);
- ``deform+bwd``: its forward and backward;
- ``render``: a full render with deformation (field + SH + rasterisation),
  eager (``DeformableGaussians.render``, what training calls);
- ``splat inputs`` and ``rasterize``: its two parts, eager;
- ``render graphed``: the same render through ``FrameRenderer`` (what
  evaluation, ``render_fps`` and ``endo3d render`` call; on CUDA the first
  part is a replayed CUDA graph);
- ``loss``: the photometric (L1 + SSIM) and depth terms;
- ``step``: render + loss + backward (what one iteration costs, without the
  optimiser and density control).

It then runs ``torch.profiler`` over the same steps and prints the operators
with the most self time (device time on CUDA), which is what the fused kernels
of ``cuda_ext/`` were chosen from. ``--kernels torch|auto`` picks the path of
:mod:`endo3d.kernels` (``ENDO3D_KERNELS``).

Usage: python benchmarks/profile_reconstruct.py DATA [--field hexplane] [--device auto] [--warmup 500]
       [--steps 30] [--kernels auto] [--json benchmarks/results/profile_reconstruct.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def _timer(device):
    import torch

    def measure(fn, repeats: int) -> float:
        """Median milliseconds of ``fn()`` over ``repeats`` calls (synchronised)."""
        times = []
        for r in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(r)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    return measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--field", default="hexplane", choices=["hexplane", "basis"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--kernels", default="auto", choices=["auto", "cuda", "torch"])
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/profile_reconstruct.json"))
    args = parser.parse_args()
    os.environ["ENDO3D_KERNELS"] = args.kernels

    import torch

    from endo3d.core.device import resolve_device
    from endo3d.gs.config import ReconstructConfig
    from endo3d.geometry.se3 import invert_pose
    from endo3d.gs.data import load_frames
    from endo3d.gs.frame_renderer import FrameRenderer
    from endo3d.gs.losses import inverse_depth_l1, photometric_loss
    from endo3d.gs.rasterize import rasterize
    from endo3d.gs.reconstruct import choose_backend
    from endo3d.gs.train import Trainer

    device = resolve_device(args.device)
    config = ReconstructConfig(input=args.data, out=Path("unused"), deformation=args.field, device=args.device,
                               progress=False)
    frames = load_frames(args.data)
    trainer = Trainer(config, frames, device, choose_backend("auto", device))
    trainer.step = trainer.schedule.coarse  # fine stage: deformation on
    for _ in range(args.warmup):
        trainer.train_step()
    model, f = trainer.model, trainer.frames
    train = f.train
    pick = [train[k % len(train)] for k in range(args.steps)]
    measure = _timer(device)

    def deform(r):
        with torch.no_grad():
            model.field(model.splats, f.t[pick[r]])

    def deform_bwd(r):
        d = model.field(model.splats, f.t[pick[r]])
        sum(v.sum() for v in (d.means, d.scales, d.quats, d.opacities) if v is not None).backward()

    def render(r):
        with torch.no_grad():
            i = pick[r]
            model.render(f.c2w[i], f.K[i], f.width, f.height, f.t[i], background=trainer.background,
                         backend=trainer.backend)

    graphed = FrameRenderer(model, backend=trainer.backend)

    def render_graphed(r):
        i = pick[r]
        graphed(f.c2w[i], f.K[i], f.width, f.height, f.t[i], background=trainer.background)

    def splat_inputs(r):
        with torch.no_grad():
            i = pick[r]
            return model.splat_inputs(f.t[i], f.c2w[i][:3, 3])

    inputs = [splat_inputs(r) for r in range(args.steps)]

    def rasterize_only(r):
        i = pick[r]
        rasterize(*inputs[r], invert_pose(f.c2w[i]), f.K[i], f.width, f.height, background=trainer.background,
                  backend=trainer.backend)

    outs = {}

    def loss_terms(r):
        i = pick[r]
        out = outs[r]
        return (photometric_loss(out.rgb, f.rgb[i], f.valid[i], config.loss.ssim_weight)
                + config.loss.depth_weight * inverse_depth_l1(out.depth, f.depth[i], f.valid[i]))

    def loss(r):
        with torch.no_grad():
            loss_terms(r)

    def step(r):
        i = pick[r]
        outs[r] = model.render(f.c2w[i], f.K[i], f.width, f.height, f.t[i], background=trainer.background,
                               backend=trainer.backend)
        loss_terms(r).backward()

    for fn in (deform, deform_bwd, render, render_graphed, rasterize_only, step):  # warm up (builds, caches)
        fn(0)
    phases = {"deform": measure(deform, args.steps), "deform+bwd": measure(deform_bwd, args.steps),
              "render": measure(render, args.steps), "splat inputs": measure(splat_inputs, args.steps),
              "rasterize": measure(rasterize_only, args.steps), "render graphed": measure(render_graphed, args.steps)}
    phases["step"] = measure(step, args.steps)
    phases["loss"] = measure(loss, args.steps)
    model.zero_grad(set_to_none=True)

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for r in range(args.steps):
            step(r)
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=args.top)

    print(table)
    print(f"{args.field} on {device.type}, {f.width}x{f.height}, {model.num_gaussians} Gaussians, "
          f"kernels={args.kernels}, median of {args.steps} frames")
    print(f"{'phase':14s} {'ms':>8s} {'share of step':>14s}")
    for name, ms in phases.items():
        print(f"{name:14s} {ms:8.2f} {ms / phases['step']:14.0%}")
    print(f"render: {1e3 / phases['render']:.0f} FPS eager, {1e3 / phases['render graphed']:.0f} FPS graphed "
          f"({graphed.uses_graph=})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "field": args.field, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "width": f.width, "height": f.height, "gaussians": model.num_gaussians, "kernels": args.kernels,
        "phases_ms": phases, "top_ops": table}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
