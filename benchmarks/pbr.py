"""Benchmark of ``endo3d pbr fit`` / ``pbr render`` on a rigid simulated colon with known light and material.

1. ``endo3d simulate --scene colon --deform-scale 0`` (small, CPU-sized);
2. ``pbr fit`` with the PBR model and with the light-baked baseline (a
   radiance field per point, no light model), same field, steps and seed;
3. reports, on the held-out frames ``(i - 1) % 8 == 0``: PSNR (tissue pixels)
   and SSIM of both models;
4. light recovery against the simulator's lights: falloff and intensity share
   of each light (gauge-free), the intensity after the albedo gauge
   (``I / s_c``, ``s_c`` the least-squares per-channel scale of fitted to true
   albedo on training frames) and the albedo error after that gauge;
5. a novel path where the light moves with the camera (the training path
   reversed and shifted ``--shift-mm`` in the camera frame), rendered by both
   models with ``pbr render`` and by the simulator itself (noise off, the
   same interpolated exposures) as ground truth; and the PBR model with
   changed light (intensity x0.6, falloff x1.5) against the simulator with
   the same change (the baseline cannot change its light). PSNR is over
   tissue pixels whose surface point was seen by some training frame.

Usage: python benchmarks/pbr.py [--frames 24 --size 96x80 --steps 1000] [--json benchmarks/results/pbr.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from endo3d.io import read_dataset
from endo3d.pbr.config import PbrFitConfig, PbrRenderConfig
from endo3d.pbr.data import PoseTrajectory
from endo3d.pbr.fit import fit
from endo3d.pbr.render import render_dataset
from endo3d.sim.config import SimulateConfig
from endo3d.sim.frame import FrameRenderer
from endo3d.sim.scenes.common import BuildArgs
from endo3d.sim.scenes.registry import build_scene, load_spec
from endo3d.sim.simulate import simulate


def simulator_truth(dataset: Path, poses: np.ndarray, exposures: np.ndarray, light_scale: float = 1.0,
                    falloff_scale: float = 1.0) -> list[np.ndarray]:
    """The simulator's own noise-free images of ``dataset``'s scene at ``poses``, float ``(H, W, 3)``."""
    ds = read_dataset(dataset)
    src, meta = ds.meta.source, ds.meta
    name, spec = load_spec(src["scene"])
    args = BuildArgs(meta.width, meta.height, len(ds), meta.fps, src["seed"], src["deform_scale"])
    scene = build_scene(spec, args, src["scene"])
    lights = tuple(dataclasses.replace(l, intensity=tuple(v * light_scale for v in l.intensity),
                                       falloff=l.falloff * falloff_scale) for l in scene.lights)
    scene = dataclasses.replace(
        scene, trajectory=PoseTrajectory(poses, meta.fps), num_frames=len(poses), lights=lights,
        sensor=dataclasses.replace(scene.sensor, noise_shot=0.0, noise_read=0.0))
    renderer = FrameRenderer(scene)
    return [renderer.render(i, renderer.geometry(i), None, float(exposures[i])).rgb.astype(np.float32) / 255
            for i in range(len(poses))]


def covered(novel: Path, train: Path, train_ids: list[int], tolerance_mm: float = 0.3) -> list[np.ndarray]:
    """Per novel frame, bool ``(H, W)``: tissue pixels whose surface point a training frame saw (depth test)."""
    a, b = read_dataset(novel), read_dataset(train)
    K = a.camera.K
    H, W = a.camera.height, a.camera.width
    v, u = np.mgrid[0:H, 0:W]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=float)], axis=-1)
    train_frames = [b.frame(i) for i in train_ids]
    out = []
    for i in range(len(a)):
        f = a.frame(i)
        depth = f.depth[0].numpy().astype(np.float64)
        points = (rays * depth[..., None]) @ f.c2w[:3, :3].T + f.c2w[:3, 3]
        seen = np.zeros((H, W), dtype=bool)
        for t in train_frames:
            w2c = np.linalg.inv(t.c2w)
            p = points @ w2c[:3, :3].T + w2c[:3, 3]
            z = p[..., 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                uu = np.rint(K[0, 0] * p[..., 0] / z + K[0, 2])
                vv = np.rint(K[1, 1] * p[..., 1] / z + K[1, 2])
            inside = (z > 0) & (uu >= 0) & (uu < W) & (vv >= 0) & (vv < H)
            iu, iv = np.where(inside, uu, 0).astype(int), np.where(inside, vv, 0).astype(int)
            td = t.depth[0].numpy()[iv, iu]
            seen |= inside & (t.mask[0].numpy()[iv, iu] == 0) & (np.abs(td - z) < tolerance_mm)
        out.append(seen & (depth > 0) & (f.mask[0].numpy() == 0))
    return out


def masked_psnr(images: list[np.ndarray], truth: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """PSNR in dB over all masked pixels of all frames (one MSE)."""
    err = np.concatenate([(a - b)[m].reshape(-1) for a, b, m in zip(images, truth, masks)])
    return -10 * math.log10(max(float(np.mean(err**2)), 1e-12))


def rendered(path: Path) -> list[np.ndarray]:
    ds = read_dataset(path)
    return [ds.frame(i).rgb.permute(1, 2, 0).numpy() for i in range(len(ds))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="96x80")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shift-mm", type=float, nargs=3, default=(1.5, 0.0, -3.0))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/pbr.json"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "colon"
        clock = time.perf_counter()
        simulate(SimulateConfig(scene="colon", out=data, frames=args.frames, width=width, height=height,
                                deform_scale=0.0, seed=args.seed, workers=1, preview=False), progress=False)
        simulate_seconds = time.perf_counter() - clock
        runs = {}
        for kind in ("pbr", "baked"):
            clock = time.perf_counter()
            result = fit(PbrFitConfig(dataset=data, out=tmp / kind, model=kind, steps=args.steps, seed=args.seed,
                                      progress=False))
            runs[kind] = dict(metrics=result.metrics, seconds=time.perf_counter() - clock)
            print(f"fitted {kind}: {runs[kind]['seconds']:.0f} s, held-out PSNR "
                  f"{result.metrics['psnr_tissue']:.2f} dB (tissue)", flush=True)

        # A novel path: the training path reversed and shifted; the light moves with the camera.
        novel = {}
        for kind in ("pbr", "baked"):
            render_dataset(PbrRenderConfig(run=tmp / kind, out=tmp / f"novel-{kind}", reverse=True,
                                           shift_mm=tuple(args.shift_mm), progress=False))
            novel[kind] = rendered(tmp / f"novel-{kind}")
        render_dataset(PbrRenderConfig(run=tmp / "pbr", out=tmp / "relit", reverse=True,
                                       shift_mm=tuple(args.shift_mm), light_scale=0.6, falloff_scale=1.5,
                                       progress=False))
        path_ds = read_dataset(tmp / "novel-pbr")
        poses = path_ds.poses
        exposures = np.array([f.extra["exposure"] for f in path_ds.meta.frames])
        truth = simulator_truth(data, poses, exposures)
        truth_relit = simulator_truth(data, poses, exposures, light_scale=0.6, falloff_scale=1.5)
        train_ids = [i for i in range(args.frames) if (i - 1) % 8 != 0]
        masks = covered(tmp / "novel-pbr", data, train_ids)
        coverage = float(np.mean([m.sum() / max((path_ds.frame(i).mask[0].numpy() == 0).sum(), 1)
                                  for i, m in enumerate(masks)]))
        novel_psnr = {kind: masked_psnr(novel[kind], truth, masks) for kind in novel}
        relit_psnr = masked_psnr(rendered(tmp / "relit"), truth_relit, masks)
        baked_relit_psnr = masked_psnr(novel["baked"], truth_relit, masks)

    pbr = runs["pbr"]["metrics"]
    lights = pbr["lights"] or {}
    material = pbr["material"]
    row = {
        "scene": "colon", "deform_scale": 0.0, "frames": args.frames, "width": width, "height": height,
        "steps": args.steps, "seed": args.seed, "simulate_seconds": simulate_seconds,
        "heldout": {k: {"psnr_tissue": runs[k]["metrics"]["psnr_tissue"], "psnr": runs[k]["metrics"]["psnr"],
                        "ssim": runs[k]["metrics"]["ssim"], "train_psnr": runs[k]["metrics"]["train_psnr"],
                        "fit_seconds": runs[k]["seconds"]} for k in runs},
        "light": lights,
        "albedo_gauge": material.get("albedo_gauge"),
        "albedo_error": material.get("albedo_error"),
        "novel_path": {"reverse": True, "shift_mm": list(args.shift_mm), "covered_fraction": coverage,
                       "psnr_pbr": novel_psnr["pbr"], "psnr_baked": novel_psnr["baked"],
                       "relit_psnr_pbr": relit_psnr, "relit_psnr_baked_unchanged": baked_relit_psnr},
        "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
    }
    print()
    print(f"{'':34s} {'PBR':>8s} {'baked':>8s}")
    for key, label in (("psnr_tissue", "held-out PSNR, tissue (dB)"), ("ssim", "held-out SSIM")):
        print(f"{label:34s} {row['heldout']['pbr'][key]:8.3f} {row['heldout']['baked'][key]:8.3f}")
    print(f"{'novel path PSNR, covered (dB)':34s} {novel_psnr['pbr']:8.2f} {novel_psnr['baked']:8.2f}")
    print(f"{'novel path + new light PSNR (dB)':34s} {relit_psnr:8.2f} {baked_relit_psnr:8.2f}")
    print(f"{'fit time (s)':34s} {runs['pbr']['seconds']:8.0f} {runs['baked']['seconds']:8.0f}")
    if lights:
        print(f"falloff error {100 * lights['falloff_relative_error']:.1f} %, intensity share error "
              f"{100 * lights['intensity_share_relative_error']:.1f} %, aligned intensity error "
              f"{100 * lights['intensity_aligned_relative_error']:.1f} %, light position error "
              f"{lights['position_error_mm']:.2f} mm")
    if material.get("albedo_error"):
        print(f"albedo MAE after the gauge {material['albedo_error']['mae']:.4f} "
              f"({100 * material['albedo_error']['relative']:.1f} % of the mean), gauge s = "
              f"{', '.join(f'{v:.3f}' for v in material['albedo_gauge'])}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(row, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
