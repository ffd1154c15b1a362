"""Benchmark of ``endo3d simulate``: labelled frames per second and where the time goes.

For each scene and resolution this runs the real job (all labels, material
maps, preview video, all cores) into a temporary folder and reports

- ``fps``: frames / wall time of the whole job (scene building, metering,
  worker start-up and writing included);
- ``steady fps``: frames / (wall time - setup), the rate once frames flow;
- the share of worker time in ray casting (BVH builds, primary, shadow and
  flow-visibility rays), shading (G-buffer, textures, BRDF, camera
  response), labels (depth, normals, flow), encoding (PNG) and preview.

Usage: python benchmarks/simulate.py [--frames 60] [--scenes colon tissue airway]
       [--sizes 320x256 640x512] [--json benchmarks/results/simulate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from endo3d.sim.config import SimulateConfig
from endo3d.sim.simulate import STAGES, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--scenes", nargs="+", default=["colon", "tissue", "airway"])
    parser.add_argument("--sizes", nargs="+", default=["320x256", "640x512"])
    parser.add_argument("--deform-scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/simulate.json"))
    args = parser.parse_args()

    rows = []
    header = f"{'scene':8s} {'size':>8s} {'frames':>6s} {'fps':>6s} {'steady':>7s} {'setup s':>8s} " + \
        " ".join(f"{s:>8s}" for s in STAGES)
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        for scene in args.scenes:
            with tempfile.TemporaryDirectory() as tmp:
                report = simulate(SimulateConfig(scene=scene, out=Path(tmp) / "out", frames=args.frames, width=width,
                                                 height=height, deform_scale=args.deform_scale,
                                                 workers=args.workers), progress=False)
            total = sum(report.stage_seconds.values())
            shares = {s: report.stage_seconds[s] / total for s in STAGES}
            steady = report.frames / max(report.wall_seconds - report.setup_seconds, 1e-9)
            rows.append(dict(scene=scene, width=width, height=height, frames=report.frames,
                             wall_seconds=report.wall_seconds, setup_seconds=report.setup_seconds,
                             fps=report.frames_per_second, steady_fps=steady,
                             stage_seconds=report.stage_seconds, stage_share=shares))
            print(f"{scene:8s} {size:>8s} {report.frames:6d} {report.frames_per_second:6.1f} {steady:7.1f} "
                  f"{report.setup_seconds:8.1f} " + " ".join(f"{100 * shares[s]:7.0f}%" for s in STAGES))
    machine = dict(cpu=platform.processor() or platform.machine(), cores=len(os.sched_getaffinity(0)),
                   python=platform.python_version())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dict(machine=machine, deform_scale=args.deform_scale, rows=rows), indent=2))
    print(f"\n{machine['cores']} cores; deform scale {args.deform_scale}; JSON: {args.json}")


if __name__ == "__main__":
    main()
