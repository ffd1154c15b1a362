"""Benchmark of ``endo3d reconstruct VIDEO`` against the simulator's ground truth.

For each scene (``colon``: a camera travelling down a colon; ``tissue``: a
near-static laparoscope over breathing tissue with a grasper) and each
length, the simulator writes a labelled dataset; only its frames, encoded as
an H.264 mp4, go to ``endo3d reconstruct`` (no depth, poses, intrinsics or
masks). The run's outputs are then scored against the labels:

- **ATE**: RMSE of the camera centres after a Sim(3) (Umeyama) alignment to
  the true centres, in mm and in % of the true path length;
- **ATE in the tissue frame**: the same against the simulator's
  ``c2w_tissue``, the camera relative to the rigid motion that best fits
  the visible tissue. A video cannot tell that motion from the opposite
  camera motion, so this is what any method can recover from images;
  **floor** is the ATE of ``c2w_tissue`` itself against the true poses, the
  error of a method that recovers it exactly (both in % of the true path);
- **depth AbsRel**: scale-invariant (each frame median-scaled, SCARED
  protocol, 150 mm cap) over tissue pixels, all frames;
- **focal error**: estimated vs true focal length at the working size, %;
  **focal probe**: the rises of the camera stage's refitted objective at
  the focal -/+10 % (``metrics.json`` ``cameras.focal_probe``), and whether
  the run judged the focal determined by the video (``*``: not);
- **held-out PSNR** of the Gaussians vs repeating the nearest training frame;
- per-stage seconds from ``metrics.json``.

``--instrument-masks`` also gives each run the simulator's instrument labels
as ``--masks`` (what a user with tool masks gets, e.g. from a segmentation
model); a scene without instruments (the colon) runs without. The grasper
is then left out of training and of both held-out PSNRs. Such rows are
marked ``+masks``; rows with a ``--deformation`` other than the video
default (Deform3DGS's temporal bases) ``+hexplane`` or ``+basis``.

``--input frames`` gives the dataset's PNG frames as an image folder instead
of the mp4 (the same pipeline without the H.264 round trip; e.g. on a GPU
machine without PyAV).

A depth *prior* stands in for the foundation weights a user would pass:
``endo3d depth finetune`` (supervised) on simulated scenes of another seed,
given to each run as ``--depth-init`` (a ``--work`` folder's prior is reused, so two lengths can run as two
processes on one prior). ``--no-prior`` runs from scratch.

Usage:
    python benchmarks/video.py [--lengths 24 48] [--size 160x128] [--fast] [--no-prior]
    python benchmarks/video.py --size 640x512 --lengths 250 --device cuda --input frames     (GPU)
Prints a table and writes benchmarks/results/video.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from endo3d.depth.config import DepthFinetuneConfig
from endo3d.depth.evaluate import ate_rpe, frame_depth_metrics, intrinsics_error
from endo3d.depth.run import RUN_JSON
from endo3d.depth.train import train
from endo3d.gs.config import ReconstructConfig
from endo3d.gs.reconstruct import reconstruct
from endo3d.pipeline.config import VideoSettings
from endo3d.io import VideoWriter, open_dataset, read_png, write_png
from endo3d.sim.config import SimulateConfig
from endo3d.sim.simulate import simulate


def encode_video(dataset: Path, out: Path, fps: float) -> None:
    """The dataset's RGB frames as an H.264 mp4 (visually lossless, crf 18)."""
    frames = sorted((dataset / "rgb").glob("*.png"))
    with VideoWriter(out, fps=fps, crf=18) as writer:
        for f in frames:
            writer.write(read_png(f))


def write_instrument_masks(dataset: Path, out: Path) -> bool:
    """The dataset's instrument labels (1..254) as binary PNGs in ``out``; False if it has none."""
    labels = [f.mask for f in open_dataset(dataset)]
    if any(m is None for m in labels):
        return False
    tools = [((m[0] > 0) & (m[0] < 255)).numpy() for m in labels]
    if not any(t.any() for t in tools):
        return False
    out.mkdir(parents=True, exist_ok=True)
    for k, t in enumerate(tools):
        write_png(out / f"{k:06d}.png", t.astype(np.uint8) * 255)
    return True


def score(dataset: Path, run: Path) -> dict:
    """Compare a run folder with the dataset it was made from (see the module docstring)."""
    data = open_dataset(dataset)
    frames = list(data)
    cameras = json.loads((run / "cameras.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    pred = np.array([f["c2w"] for f in cameras["frames"]])
    gt = np.stack([f.c2w for f in frames])
    pose = ate_rpe(pred, gt)
    ate = pose["ate_mm"]
    path = float(np.sum(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1)))
    if "c2w_tissue" not in frames[0].extra:
        raise SystemExit(f"{dataset}: made by an older simulator (no c2w_tissue); delete it to simulate it again")
    tissue = np.stack([np.array(f.extra["c2w_tissue"]) for f in frames])
    ate_tissue, floor = ate_rpe(pred, tissue)["ate_mm"], ate_rpe(tissue, gt)["ate_mm"]

    def pct(mm: float) -> float:
        return 100 * mm / max(path, 1e-9)

    rels = []
    for k, f in enumerate(frames):
        pred_depth = np.load(run / "depth" / f"{k:06d}.npy")
        gt_depth = f.depth[0].numpy()
        valid = f.valid[0].numpy() & (pred_depth > 0)
        out = frame_depth_metrics(gt_depth, np.maximum(pred_depth, 1e-3), cap_mm=150.0, valid=valid)
        if out is not None:
            rels.append(out[0]["abs_rel"])
    focal_pct = intrinsics_error(np.array(cameras["K"]), frames[0].K)["focal_error_pct"]
    probe = metrics["cameras"]["focal_probe"]
    return {
        "frames": len(frames), "ate_mm": ate, "path_mm": path, "ate_pct_path": pct(ate),
        "ate_tissue_frame_mm": ate_tissue, "ate_tissue_frame_pct_path": pct(ate_tissue),
        "ate_floor_pct_path": pct(floor),
        "sim3_scale": pose["scale"], "abs_rel": float(np.mean(rels)), "focal_error_pct": focal_pct,
        "focal_probe_rise_pct": [100 * r for r in probe["objective_rise"]], "focal_determined": probe["determined"],
        "psnr": metrics["psnr"], "psnr_nearest_frame": metrics["baseline_nearest_frame"]["psnr"],
        "stage_seconds": metrics["stage_seconds"], "total_seconds": sum(metrics["stage_seconds"].values()),
        "num_gaussians": metrics["num_gaussians"], "deformation": metrics["deformation"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", nargs="+", default=["colon", "tissue"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[24, 48], help="frames per video")
    parser.add_argument("--size", default="160x128", help="simulated (and working) size WxH")
    parser.add_argument("--fps", type=float, default=10.0, help="simulated frame rate (motion between frames)")
    parser.add_argument("--fast", action="store_true", help="reconstruct with --fast")
    parser.add_argument("--no-prior", action="store_true", help="no depth prior: depth from scratch on the video")
    parser.add_argument("--prior-steps", type=int, default=150)
    parser.add_argument("--adapt-steps", type=int, default=0, help="0: the preset's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--input", choices=["mp4", "frames"], default="mp4",
                        help="what reconstruct is given: the H.264 mp4, or the PNG frames as an image folder")
    parser.add_argument("--deformation", choices=["auto", "hexplane", "basis"], default="auto",
                        help="the Gaussians' deformation field (reconstruct --deformation; auto: the bases for video)")
    parser.add_argument("--instrument-masks", action="store_true",
                        help="give reconstruct the simulator's instrument labels as --masks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: temporary)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/video.json"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prior = None
        prior_seconds = 0.0
        if not args.no_prior:
            start = time.perf_counter()
            sources = []
            for scene in args.scenes:  # other seed: none of the benchmark's own frames
                sources.append(work / f"prior_{scene}")
                if not (sources[-1] / "meta.json").exists():
                    simulate(SimulateConfig(scene=scene, out=sources[-1], frames=24, width=width, height=height,
                                            fps=args.fps, seed=args.seed + 100, workers=0, preview=False,
                                            overwrite=True), progress=False)
            prior = work / "prior"
            net_h, net_w = 14 * round(height / 14), 14 * round(width / 14)
            if not (prior / RUN_JSON).is_file():  # a --work folder's prior is reused (e.g. by a second length)
                train(DepthFinetuneConfig(data=tuple(sources), out=prior, steps=args.prior_steps, loss="silog",
                                          full=True, height=net_h, width=net_w, device=args.device,
                                          overwrite=True, seed=args.seed, progress=False,
                                          checkpoint_every=args.prior_steps))
            prior_seconds = time.perf_counter() - start
        for scene in args.scenes:
            for length in args.lengths:
                dataset = work / f"{scene}_{length}"
                if not (dataset / "meta.json").exists():
                    simulate(SimulateConfig(scene=scene, out=dataset, frames=length, width=width, height=height,
                                            fps=args.fps, seed=args.seed, workers=0, preview=False, overwrite=True),
                             progress=False)
                if args.input == "mp4":
                    video = work / f"{scene}_{length}.mp4"
                    encode_video(dataset, video, args.fps)
                else:
                    video = dataset / "rgb"
                masks = work / f"instruments_{scene}_{length}"
                masked = args.instrument_masks and write_instrument_masks(dataset, masks)
                field = "" if args.deformation == "auto" else f"+{args.deformation}"
                label = scene + ("+masks" if masked else "") + field
                run = work / f"run_{label.replace('+', '_')}_{length}"
                reconstruct(ReconstructConfig(input=video, out=run, overwrite=True, fast=args.fast, width=width,
                                              stride=1, max_frames=length, depth_init=prior,
                                              masks=masks if masked else None, deformation=args.deformation,
                                              adapt_steps=args.adapt_steps, device=args.device, seed=args.seed,
                                              progress=False, video=VideoSettings(image_fps=args.fps)))
                row = {"scene": label, "instrument_masks": masked, **score(dataset, run)}
                rows.append(row)
                print(f"{row['scene']} {length}: ATE {row['ate_pct_path']:.1f} % of path (tissue frame "
                      f"{row['ate_tissue_frame_pct_path']:.1f} %, floor {row['ate_floor_pct_path']:.1f} %), "
                      f"AbsRel {row['abs_rel']:.3f}, "
                      f"focal {row['focal_error_pct']:.1f} %, PSNR {row['psnr']:.2f} "
                      f"(nearest frame {row['psnr_nearest_frame']:.2f}) dB, {row['total_seconds']:.0f} s", flush=True)
    header = ["scene", "frames", "ATE mm", "path mm", "ATE %", "tissue-frame %", "floor %", "AbsRel", "focal %",
              "focal probe -/+ %", "PSNR", "nearest", "seconds"]
    print("\n" + " | ".join(header))
    for r in rows:
        low, high = r["focal_probe_rise_pct"]
        print(" | ".join([r["scene"], str(r["frames"]), f"{r['ate_mm']:.2f}", f"{r['path_mm']:.1f}",
                          f"{r['ate_pct_path']:.1f}", f"{r['ate_tissue_frame_pct_path']:.1f}",
                          f"{r['ate_floor_pct_path']:.1f}", f"{r['abs_rel']:.3f}", f"{r['focal_error_pct']:.1f}",
                          f"{low:+.1f}/{high:+.1f}{'' if r['focal_determined'] else '*'}",
                          f"{r['psnr']:.2f}", f"{r['psnr_nearest_frame']:.2f}", f"{r['total_seconds']:.0f}"]))
    print("targets: ATE < 2 % of the path, AbsRel < 0.08, focal within 5 %; "
          "the floor is the ATE of recovering the tissue frame exactly; *: the run flagged its focal as not "
          "determined by the video")
    print("stage seconds: " + "; ".join(f"{r['scene']} {r['frames']}: " + ", ".join(
        f"{k} {v:.0f}" for k, v in r["stage_seconds"].items()) for r in rows))
    machine = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                   threads=torch.get_num_threads(),
                   cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine,
                                     "prior_seconds": prior_seconds, "rows": rows}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
