"""Benchmark of ``endo3d reconstruct``: both deformation fields on the simulated ``tissue`` scene.

For each size, simulates a ``tissue`` sequence (64 frames, breathing, the
grasper pulling), then reconstructs it with the HexPlane field
(EndoGaussian) and the per-Gaussian basis field (Deform3DGS) using the
default settings for the device, each in its own process, and reports the
held-out metrics (PSNR masked full image and tissue only, SSIM, depth RMSE),
training time, render FPS, the number of Gaussians and peak memory (process
RSS on CPU; peak allocated GPU memory on CUDA).

``--data DIR`` reconstructs an existing ``endo3d/v1`` dataset instead of
simulating (e.g. on a GPU machine without open3d). ``--kernels auto torch``
runs each reconstruction once per kernel backend (``ENDO3D_KERNELS``): the
effect of the CUDA kernels on training time and render FPS.

Usage: python benchmarks/reconstruct.py [--sizes 160x128 320x256] [--fields hexplane basis]
       [--frames 64] [--device auto] [--data DIR] [--kernels auto]
       [--json benchmarks/results/reconstruct.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from queue import Empty

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
    """Reconstruct in a fresh process so peak memory is this run's own.

    Raises:
        RuntimeError: the process ended without a result (its traceback is on stderr above).
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_reconstruct, args=(config, queue))
    proc.start()
    while True:
        try:
            metrics = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the reconstruction of {config.input} failed (exit code {proc.exitcode})") from None
    proc.join()
    return metrics


def datasets(args: argparse.Namespace, tmp: Path):
    """``(size, folder)`` pairs: the given dataset, or a simulated ``tissue`` sequence per size."""
    if args.data is not None:
        meta = json.loads((args.data / "meta.json").read_text())
        yield f"{meta['width']}x{meta['height']}", args.data
        return
    from endo3d.sim.simulate import simulate

    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        data = tmp / f"tissue_{size}"
        simulate(SimulateConfig(scene="tissue", out=data, frames=args.frames, width=width, height=height,
                                preview=False), progress=False)
        yield size, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["160x128", "320x256"])
    parser.add_argument("--fields", nargs="+", default=["hexplane", "basis"])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int, default=0, help="fine iterations (0: the device default)")
    parser.add_argument("--data", type=Path, help="an endo3d/v1 dataset to use instead of simulating")
    parser.add_argument("--kernels", nargs="+", default=["auto"], choices=["auto", "cuda", "torch"],
                        help="ENDO3D_KERNELS values to run each reconstruction with")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/reconstruct.json"))
    args = parser.parse_args()

    rows = []
    header = (f"{'field':9s} {'kernels':7s} {'size':>8s} {'PSNR':>6s} {'tissue':>7s} {'SSIM':>6s} {'depth mm':>9s} "
              f"{'train s':>8s} {'wall s':>7s} {'fps':>7s} {'gauss':>7s} {'peak MB':>8s}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for size, data in datasets(args, Path(tmp)):
            for field, kernels in itertools.product(args.fields, args.kernels):
                os.environ["ENDO3D_KERNELS"] = kernels  # inherited by the spawned process
                config = ReconstructConfig(input=data, out=Path(tmp) / f"run_{field}_{size}_{kernels}",
                                           deformation=field, device=args.device, iterations=args.iterations,
                                           progress=False)
                m = run_one(config)
                peak = m["peak_gpu_mb"] if m["peak_gpu_mb"] is not None else m["peak_rss_mb"]
                rows.append(dict(field=field, kernels=kernels, size=size, data=str(args.data or "tissue"), **m))
                print(f"{field:9s} {kernels:7s} {size:>8s} {m['psnr']:6.2f} {m['psnr_tissue']:7.2f} "
                      f"{m['ssim']:6.3f} {m['depth_rmse_mm']:9.2f} {m['train_seconds']:8.0f} "
                      f"{m['wall_seconds']:7.0f} {m['render_fps']:7.1f} {m['num_gaussians']:7d} {peak:8.0f}",
                      flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                     "python": platform.python_version(), "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
