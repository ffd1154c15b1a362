"""Generate scenes/bladder.ply: a bladder-like closed organ for the cystoscopy
example scene (an ellipsoid, ~45 x 40 x 35 mm radii, with smooth bumps and a
narrowing neck at the bottom where the cystoscope enters).

Usage: python tools/make_bladder_mesh.py [--out scenes/bladder.ply] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import trimesh


def bladder(seed: int) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    rng = np.random.default_rng(seed)
    d = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    k = rng.standard_normal((12, 3))
    bumps = np.sum(np.cos(d @ k.T * 3.0 + rng.uniform(0, 2 * np.pi, 12)), axis=1) / np.sqrt(12)
    radius = 1.0 + 0.05 * bumps - 0.35 * np.exp(-((d[:, 2] + 1.0) / 0.35) ** 2)  # neck at the bottom
    mesh.vertices = d * radius[:, None] * np.array([45.0, 40.0, 35.0])
    return mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("scenes/bladder.ply"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bladder(args.seed).export(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
