"""Benchmark of ``endo3d reconstruct``: both deformation fields on the simulated ``tissue`` scene.

For each size, simulates a ``tissue`` sequence (64 frames, breathing, the
grasper pulling), then reconstructs it with the HexPlane field
(EndoGaussian) and the per-Gaussian basis field (Deform3DGS) using the
default settings for the device, each in its own process, and reports the
held-out metrics (PSNR masked full image and tissue only, SSIM, depth RMSE),
training time, render FPS, the number of Gaussians and peak memory (process
RSS on CPU; peak allocated GPU memory on CUDA).

Usage: python benchmarks/reconstruct.py [--sizes 160x128 320x256] [--fields hexplane basis]
       [--frames 64] [--device auto] [--json benchmarks/results/reconstruct.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import tempfile
import time
from pathlib import Path

from endo3d.gs.config import ReconstructConfig
from endo3d.sim.config import SimulateConfig


def _reconstruct(config: ReconstructConfig, queue: mp.Queue) -> None:
    import torch

    from endo3d.gs.reconstruct import reconstruct

    start = time.perf_counter()
    result = reconstruct(config)
    metrics = dict(result.metrics)
    metrics.pop("per_frame")
    metrics["wall_seconds"] = time.perf_counter() - start
    metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    queue.put(metrics)


def run_one(config: ReconstructConfig) -> dict:
    """Reconstruct in a fresh process so peak memory is this run's own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_reconstruct, args=(config, queue))
    proc.start()
    metrics = queue.get()
    proc.join()
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["160x128", "320x256"])
    parser.add_argument("--fields", nargs="+", default=["hexplane", "basis"])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int, default=0, help="fine iterations (0: the device default)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/reconstruct.json"))
    args = parser.parse_args()

    from endo3d.sim.simulate import simulate

    rows = []
    header = (f"{'field':9s} {'size':>8s} {'PSNR':>6s} {'tissue':>7s} {'SSIM':>6s} {'depth mm':>9s} "
              f"{'train s':>8s} {'wall s':>7s} {'fps':>7s} {'gauss':>7s} {'peak MB':>8s}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            data = Path(tmp) / f"tissue_{size}"
            simulate(SimulateConfig(scene="tissue", out=data, frames=args.frames, width=width, height=height,
                                    preview=False), progress=False)
            for field in args.fields:
                config = ReconstructConfig(input=data, out=Path(tmp) / f"run_{field}_{size}", deformation=field,
                                           device=args.device, iterations=args.iterations, progress=False)
                m = run_one(config)
                peak = m["peak_gpu_mb"] if m["peak_gpu_mb"] is not None else m["peak_rss_mb"]
                rows.append(dict(field=field, width=width, height=height, frames=args.frames, **m))
                print(f"{field:9s} {size:>8s} {m['psnr']:6.2f} {m['psnr_tissue']:7.2f} {m['ssim']:6.3f} "
                      f"{m['depth_rmse_mm']:9.2f} {m['train_seconds']:8.0f} {m['wall_seconds']:7.0f} "
                      f"{m['render_fps']:7.1f} {m['num_gaussians']:7d} {peak:8.0f}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                     "python": platform.python_version(), "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
