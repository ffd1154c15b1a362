"""Benchmark of ``endo3d.gs.rasterize``: forward and forward+backward time per backend.

The scene is what a surface reconstruction looks like: N Gaussians on a
textured wavy surface 50-150 mm in front of the camera (90 degree horizontal
field of view), spread evenly over the image, flattened along the surface
normal, with tangential scales such that neighbours overlap, opacities in
0.6-0.99 and colours from a texture. Each timing is the median of
``--repeats`` runs after one warm-up (``cpu`` columns: process CPU time, all
threads; on a shared machine the wall time suffers from other load first);
backward uses the loss ``sum(rgb * g1) + sum(depth * g2) + sum(alpha * g3)``
with fixed random ``g``.

Backends: ``torch`` (CPU with ``--threads`` threads for each of
``--tile-sizes``, and on CUDA when available), ``dense`` (CPU, only while
N * H * W <= ``--dense-max``) and ``gsplat`` (CUDA only). ``pairs/px`` is the
mean number of footprint boxes covering a pixel.

Usage: python benchmarks/rasterize.py [--sizes 160x128 320x256 640x512] [--counts 1000 5000 20000 50000]
       [--threads 2] [--tile-sizes 4] [--repeats 5] [--json benchmarks/results/rasterize.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from endo3d.gs.project import project_gaussians
import endo3d.gs.rasterize as rasterize_module
from endo3d.gs.rasterize import rasterize


def surface_scene(n: int, width: int, height: int, seed: int = 0, device: str = "cpu") -> dict:
    """Gaussians on a wavy textured surface seen by a 90 degree camera at the origin (identity pose)."""
    g = torch.Generator().manual_seed(seed)
    f = 0.5 * width / math.tan(math.radians(45.0))
    K = torch.tensor([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])
    # pixel positions spread evenly (jittered grid), depth of the surface there
    cols = max(1, round(math.sqrt(n * width / height)))
    rows = -(-n // cols)
    idx = torch.arange(n)
    u = ((idx % cols).float() + torch.rand(n, generator=g)) / cols * (width + 8) - 4.5
    v = ((idx // cols).float() + torch.rand(n, generator=g)) / rows * (height + 8) - 4.5
    xn, yn = (u - K[0, 2]) / f, (v - K[1, 2]) / f
    z = 100 + 35 * torch.sin(2.1 * xn + 0.7) * torch.cos(1.7 * yn - 0.3) + 15 * xn
    means = torch.stack([xn * z, yn * z, z], -1)
    # surface normal from finite differences of the depth map z(xn, yn)
    dzdx = 35 * 2.1 * torch.cos(2.1 * xn + 0.7) * torch.cos(1.7 * yn - 0.3) + 15
    dzdy = -35 * 1.7 * torch.sin(2.1 * xn + 0.7) * torch.sin(1.7 * yn - 0.3)
    tangent_x = torch.stack([z + xn * dzdx, yn * dzdx, dzdx], -1)
    tangent_y = torch.stack([xn * dzdy, z + yn * dzdy, dzdy], -1)
    normal = torch.nn.functional.normalize(torch.cross(tangent_x, tangent_y, dim=-1), dim=-1)
    quats = _quat_from_z_axis(normal)
    spacing = z / f * math.sqrt(width * height / n)  # mm between neighbours, seen frontally
    scales = torch.stack([0.7 * spacing, 0.7 * spacing, 0.05 * spacing], -1)
    scales = scales * (0.8 + 0.4 * torch.rand(n, 3, generator=g))
    opacities = 0.6 + 0.39 * torch.rand(n, generator=g)
    texture = 0.5 + 0.4 * torch.stack([torch.sin(9 * xn + 3 * yn), torch.sin(7 * yn + 1), torch.cos(5 * xn * yn)], -1)
    colors = texture + 0.05 * torch.randn(n, 3, generator=g)
    scene = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                 viewmat=torch.eye(4), K=K)
    return {k: t.to(device) for k, t in scene.items()}


def _quat_from_z_axis(axis: torch.Tensor) -> torch.Tensor:
    """Quaternions (w, x, y, z) rotating +z onto the unit vectors ``axis`` (N, 3)."""
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(axis)
    half = torch.nn.functional.normalize(axis + z, dim=-1)
    return torch.cat([(z * half).sum(-1, keepdim=True), torch.cross(z, half, dim=-1)], -1)


def time_backend(scene: dict, width: int, height: int, backend: str, repeats: int) -> dict[str, float]:
    """Median wall and process CPU milliseconds of forward and of forward+backward."""
    device = scene["means"].device
    params = {k: scene[k].clone().requires_grad_() for k in ("means", "quats", "scales", "opacities", "colors")}
    g = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(c, height, width, generator=g).to(device) for c in (3, 1, 1)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward():
        return rasterize(**params, viewmat=scene["viewmat"], K=scene["K"], width=width, height=height,
                         backend=backend)

    def forward_backward() -> None:
        out = forward()
        loss = sum((o * c).sum() for o, c in zip((out.rgb, out.depth, out.alpha), cotangents))
        loss.backward()

    result = {}
    for name, step in (("forward", forward), ("forward_backward", forward_backward)):
        wall, cpu = [], []
        for i in range(repeats + 1):
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            sync()
            if i:
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
        result[f"{name}_ms"] = 1e3 * statistics.median(wall)
        result[f"{name}_cpu_ms"] = 1e3 * statistics.median(cpu)
    return result


def pairs_per_pixel(scene: dict, width: int, height: int) -> float:
    """Mean number of footprint boxes (clipped to the image) covering a pixel."""
    proj = project_gaussians(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["viewmat"],
                             scene["K"], width, height, near=0.01, far=1e10, eps2d=0.3)
    m, r = proj.means2d[proj.visible].cpu(), proj.radii[proj.visible].cpu().double()
    lo, hi = torch.floor(m - r - 0.5) + 1, torch.ceil(m + r + 0.5) - 1
    size = torch.tensor([width - 1.0, height - 1.0], dtype=torch.float64)
    extent = (torch.minimum(hi, size) - torch.clamp_min(lo, 0) + 1).clamp_min(0)
    return float(extent.prod(-1).sum()) / (width * height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["160x128", "320x256", "640x512"])
    parser.add_argument("--counts", nargs="+", type=int, default=[1000, 5000, 20000, 50000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile-sizes", nargs="+", type=int, default=[rasterize_module.TILE_SIZE])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense-max", type=float, default=2.1e7, help="largest N * H * W run on the dense backend")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/rasterize.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs = [("torch", "cpu", t) for t in args.tile_sizes] + [("dense", "cpu", None)]
    if torch.cuda.is_available():
        runs += [("torch", "cuda", rasterize_module.TILE_SIZE), ("gsplat", "cuda", None)]
    rows = []
    header = (f"{'backend':7s} {'device':6s} {'tile':>4s} {'size':>8s} {'N':>6s} {'pairs/px':>8s} {'fwd ms':>8s} "
              f"{'fwd+bwd ms':>10s} {'cpu fwd':>8s} {'cpu f+b':>8s}")
    print(header)
    print("-" * len(header))
    default_tile = rasterize_module.TILE_SIZE
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        for n in args.counts:
            scene_cpu = surface_scene(n, width, height)
            density = pairs_per_pixel(scene_cpu, width, height)
            for backend, device, tile in runs:
                if backend == "dense" and n * width * height > args.dense_max:
                    continue
                scene = {k: t.to(device) for k, t in scene_cpu.items()}
                rasterize_module.TILE_SIZE = tile or default_tile
                try:
                    times = time_backend(scene, width, height, backend, args.repeats)
                finally:
                    rasterize_module.TILE_SIZE = default_tile
                rows.append(dict(backend=backend, device=device, tile_size=tile, width=width, height=height, n=n,
                                 pairs_per_pixel=density, **times))
                print(f"{backend:7s} {device:6s} {tile or '':>4} {size:>8s} {n:6d} {density:8.1f} "
                      f"{times['forward_ms']:8.1f} {times['forward_backward_ms']:10.1f} "
                      f"{times['forward_cpu_ms']:8.1f} {times['forward_backward_cpu_ms']:8.1f}")
    machine = dict(cpu=platform.processor() or platform.machine(), cores=len(os.sched_getaffinity(0)),
                   threads=args.threads, load_average=os.getloadavg(), torch=torch.__version__,
                   gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                   python=platform.python_version())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dict(machine=machine, rows=rows), indent=2))
    print(f"\n{args.threads} CPU threads of {machine['cores']} cores, load average {machine['load_average'][0]:.1f}; "
          f"JSON: {args.json}")


if __name__ == "__main__":
    main()
