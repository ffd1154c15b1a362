"""Render the README's sample strips: for each scene, one frame as RGB, depth,
normals, flow and mask, side by side, into docs/images/samples.jpg.

Usage: python tools/make_readme_strips.py [--out docs/images/samples.jpg]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import open3d as o3d

from endo3d import viz
from endo3d.io import read_dataset
from endo3d.sim.config import SimulateConfig
from endo3d.sim.simulate import simulate

SCENES = [("colon", 14), ("airway", 14), ("tissue", 26)]  # scene, frame shown


def strip(root: Path, index: int) -> np.ndarray:
    f = read_dataset(root).frame(index)
    rgb = np.round(f.rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    flow = viz.flow_to_rgb(f.flow.permute(1, 2, 0).numpy(), f.flow_valid[0].numpy())
    return viz.tile([rgb, viz.depth_to_rgb(f.depth[0].numpy()), viz.normals_to_rgb(f.normal.permute(1, 2, 0).numpy()),
                     flow, viz.mask_to_rgb(f.mask[0].numpy())], columns=5, gap=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/samples.jpg"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scene, index in SCENES:
            out = Path(tmp) / scene
            simulate(SimulateConfig(scene=scene, out=out, frames=index + 2, width=240, height=192, preview=False))
            rows.append(strip(out, index))
    image = viz.tile(rows, columns=1, gap=4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    o3d.t.io.write_image(str(args.out), o3d.t.geometry.Image(o3d.core.Tensor(np.ascontiguousarray(image))), 88)
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]})")


if __name__ == "__main__":
    main()
