"""Fine-tuning experiment (EndoPBR): depth fine-tuned on PBR renders vs on the original frames, held-out test.

1. ``endo3d simulate --scene colon --deform-scale 0`` twice: sequence A
   (``--train-seed``) is the "real" training video, sequence B
   (``--eval-seed``: another colon, other geometry, texture and path) the
   held-out test video with ground-truth depth;
2. ``pbr fit`` on A (its own held-out frames ``(i - 1) % 8 == 0`` are not
   fitted), then ``pbr render`` of NEW frames along new camera paths as
   ``endo3d/v1`` datasets with depth labels (the synthetic data factory):
   by default A's path reversed and shifted (1.5, 0, -3) mm, and A's path
   shifted (-1.5, 1, 2) mm with the light changed (intensity x0.7,
   falloff x1.3); both at speed 2, so together as many frames as A;
3. the same supervised fine-tune (``depth finetune``: same network, loss,
   learning rate, batch, steps and seed, hence the same initial weights and
   batch-index sequence) on
   - ``original``: A's frames and ground-truth depth,
   - ``pbr``: the PBR renders and their depth labels,
   - ``both``: A and the renders;
4. ``depth eval`` (SCARED protocol: per-frame median scaling, cap 150 mm)
   of every arm, of the initial (untrained) network and of a constant-depth
   prediction, on B; and AbsRel on A as the in-family sanity check (a
   fine-tune that learns is clearly below the constant-depth AbsRel).

The depth network has no foundation weights here (vits from random init,
full fine-tuning), so this measures what the labelled frames teach a network
from scratch, not the adaptation of Depth Anything; give ``--weights`` to
start from Depth Anything.

Defaults (CPU-sized, about 25 min on one thread): A 32 frames, B 24 frames,
128x96 simulated; PBR fit 600 steps; renders 2 x 16 frames; depth vits at
112x84, batch 4, 300 steps, Adam 2e-4, SILog, depth range 1..300 mm.

Usage: python benchmarks/pbr_depth_finetune.py [--frames 32 --eval-frames 24 --sim-size 128x96 --fit-steps 600]
       [--steps 300 --lr 2e-4 --net-size 112x84] [--threads 1] [--work DIR]
       [--json benchmarks/results/pbr_depth_finetune.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endo3d.depth.config import DepthEvalConfig, DepthFinetuneConfig
from endo3d.depth.data import open_sequences
from endo3d.depth.evaluate import DEPTH_METRICS, evaluate, evaluate_sequences, frame_depth_metrics
from endo3d.depth.run import LoadedRun
from endo3d.depth.train import build_models, train
from endo3d.pbr.config import PbrFitConfig, PbrRenderConfig
from endo3d.pbr.fit import fit
from endo3d.pbr.render import render_dataset
from endo3d.sim.config import SimulateConfig
from endo3d.sim.simulate import simulate


@dataclass(frozen=True)
class RenderPath:
    """One new camera path / light of the synthetic data factory (fields of :class:`PbrRenderConfig`)."""

    name: str
    reverse: bool = False
    speed: float = 1.0
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    light_scale: float = 1.0
    falloff_scale: float = 1.0


RENDER_PATHS = (
    RenderPath("reverse-shift", reverse=True, speed=2.0, shift_mm=(1.5, 0.0, -3.0)),
    RenderPath("shift-relit", speed=2.0, shift_mm=(-1.5, 1.0, 2.0), light_scale=0.7, falloff_scale=1.3),
)
"""Default new paths: together as many frames as the training video, none on its path."""


@dataclass
class PreparedData:
    """The experiment's datasets: A (train video), B (held-out), the PBR run and its renders."""

    train: Path
    heldout: Path
    pbr_run: Path
    renders: list[Path]
    fit_metrics: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def prepare_data(work: Path, *, frames: int = 32, eval_frames: int = 24, width: int = 128, height: int = 96,
                 train_seed: int = 1, eval_seed: int = 2, fit_steps: int = 600,
                 paths: tuple[RenderPath, ...] = RENDER_PATHS, fit_overrides: dict[str, Any] | None = None,
                 reuse: bool = False) -> PreparedData:
    """Simulate A and B (rigid colon), fit PBR on A and render ``paths`` as labelled datasets under ``work``.

    With ``reuse``, steps whose output already exists in ``work`` are skipped.
    """
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    train_ds, heldout_ds = work / "A-train", work / "B-heldout"
    clock = time.perf_counter()
    for out, n, seed in ((train_ds, frames, train_seed), (heldout_ds, eval_frames, eval_seed)):
        if not (reuse and (out / "meta.json").is_file()):
            simulate(SimulateConfig(scene="colon", out=out, frames=n, width=width, height=height, deform_scale=0.0,
                                    seed=seed, workers=1, preview=False, overwrite=True), progress=False)
    seconds["simulate"] = time.perf_counter() - clock

    run = work / "pbr-run"
    clock = time.perf_counter()
    if reuse and (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
    else:
        metrics = fit(PbrFitConfig(dataset=train_ds, out=run, steps=fit_steps, seed=train_seed, overwrite=True,
                                   renders=False, progress=False, **(fit_overrides or {}))).metrics
    seconds["pbr_fit"] = time.perf_counter() - clock

    renders = []
    clock = time.perf_counter()
    for p in paths:
        out = work / f"render-{p.name}"
        if not (reuse and (out / "meta.json").is_file()):
            render_dataset(PbrRenderConfig(run=run, out=out, reverse=p.reverse, speed=p.speed, shift_mm=p.shift_mm,
                                           light_scale=p.light_scale, falloff_scale=p.falloff_scale,
                                           overwrite=True, progress=False))
        renders.append(out)
    seconds["pbr_render"] = time.perf_counter() - clock
    return PreparedData(train_ds, heldout_ds, run, renders, metrics, seconds)


def constant_depth_metrics(data: Path, cap_mm: float | None = None) -> dict[str, float]:
    """The evaluation protocol applied to a constant prediction (after median scaling: the frame's median depth)."""
    total: dict[str, list[float]] = {}
    for seq in open_sequences([data]):
        cap = cap_mm if cap_mm is not None else seq.eval_cap_mm
        for i in range(len(seq)):
            gt = seq.depth(i)
            if gt is None:
                continue
            mask = seq.mask(i)
            out = frame_depth_metrics(gt[0].numpy(), np.ones(gt.shape[-2:]), cap_mm=cap,
                                      valid=None if mask is None else mask[0].numpy())
            if out is not None:
                for k, v in out[0].items():
                    total.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in total.items()}


def initial_metrics(config: DepthFinetuneConfig, data: Path) -> dict[str, float]:
    """Metrics of the network every arm starts from (same seed, same init), untrained."""
    net, _, _ = build_models(config, torch.device("cpu"))
    result = evaluate_sequences(LoadedRun(net.eval(), None, {}), open_sequences([data]))
    return result["depth"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32, help="frames of the training video A")
    parser.add_argument("--eval-frames", type=int, default=24, help="frames of the held-out video B")
    parser.add_argument("--sim-size", default="128x96", help="simulated WxH (A, B and the renders)")
    parser.add_argument("--train-seed", type=int, default=1)
    parser.add_argument("--eval-seed", type=int, default=2)
    parser.add_argument("--fit-steps", type=int, default=600, help="pbr fit steps")
    parser.add_argument("--encoder", default="vits")
    parser.add_argument("--weights", type=Path, default=None, help="Depth Anything weights (optional)")
    parser.add_argument("--net-size", default="112x84", help="network WxH (multiples of 14)")
    parser.add_argument("--steps", type=int, default=300, help="depth fine-tuning steps (every arm)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--loss", default="silog", choices=("silog", "ssi", "l1log"))
    parser.add_argument("--min-depth-mm", type=float, default=1.0)
    parser.add_argument("--max-depth-mm", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0, help="depth fine-tuning seed (every arm)")
    parser.add_argument("--arms", nargs="+", default=["original", "pbr", "both"], choices=("original", "pbr", "both"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep data and runs here and reuse existing data (default: temporary)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/pbr_depth_finetune.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sw, sh = (int(v) for v in args.sim_size.split("x"))
    nw, nh = (int(v) for v in args.net_size.split("x"))
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="pbr_depth_ft_") as tmp:
        work = args.work or Path(tmp)
        data = prepare_data(work, frames=args.frames, eval_frames=args.eval_frames, width=sw, height=sh,
                            train_seed=args.train_seed, eval_seed=args.eval_seed, fit_steps=args.fit_steps,
                            reuse=args.work is not None)
        print(f"data: A {data.train.name}, B {data.heldout.name}, PBR held-out PSNR "
              f"{data.fit_metrics['psnr_tissue']:.2f} dB (tissue), renders "
              f"{', '.join(p.name for p in data.renders)}; "
              + ", ".join(f"{k} {v:.0f} s" for k, v in data.seconds.items()), flush=True)
        train_sets = {"original": (data.train,), "pbr": tuple(data.renders), "both": (data.train, *data.renders)}
        common = dict(encoder=args.encoder, weights=args.weights, height=nh, width=nw, batch_size=args.batch_size,
                      steps=args.steps, lr=args.lr, loss=args.loss, full=args.weights is None,
                      min_depth_mm=args.min_depth_mm, max_depth_mm=args.max_depth_mm, seed=args.seed,
                      checkpoint_every=args.steps, overwrite=True, progress=False, device="cpu")
        train_frames = {k: sum(len(s) for s in open_sequences(list(v))) for k, v in train_sets.items()}

        rows: dict[str, dict[str, Any]] = {}
        rows["constant depth"] = dict(heldout=constant_depth_metrics(data.heldout),
                                      train_abs_rel=constant_depth_metrics(data.train)["abs_rel"])
        init_config = DepthFinetuneConfig(data=(data.train,), out=work / "unused", **common)
        rows["initial (untrained)"] = dict(heldout=initial_metrics(init_config, data.heldout),
                                           train_abs_rel=initial_metrics(init_config, data.train)["abs_rel"])
        for arm in args.arms:
            out = work / f"ft-{arm}"
            result = train(DepthFinetuneConfig(data=train_sets[arm], out=out, **common))
            assert result is not None
            heldout, _ = evaluate(DepthEvalConfig(data=(data.heldout,), checkpoint=out, out=out / "eval-B.json",
                                                  progress=False, device="cpu"))
            own, _ = evaluate(DepthEvalConfig(data=(data.train,), checkpoint=out, out=out / "eval-A.json",
                                              progress=False, device="cpu"))
            rows[arm] = dict(heldout=heldout["depth"], train_abs_rel=own["depth"]["abs_rel"],
                             train_frames=train_frames[arm], seconds=result.info["train_seconds"],
                             loss_first_last=[result.info["loss_first_10"], result.info["loss_last_10"]])
            print(f"arm {arm}: {train_frames[arm]} frames, {result.info['train_seconds']:.0f} s, loss "
                  f"{result.info['loss_first_10']:.3f} -> {result.info['loss_last_10']:.3f}, AbsRel on B "
                  f"{heldout['depth']['abs_rel']:.4f}", flush=True)

    head = f"{'model':22s} {'frames':>6s} " + " ".join(f"{m:>8s}" for m in DEPTH_METRICS) + f" {'AbsRel A':>9s}"
    print(f"\nevaluated on held-out B (colon seed {args.eval_seed}, {args.eval_frames} frames; median scaling, "
          f"cap 150 mm); last column: AbsRel on the training video A")
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        frames = str(r.get("train_frames", "-"))
        print(f"{name:22s} {frames:>6s} " + " ".join(f"{r['heldout'][m]:8.4f}" for m in DEPTH_METRICS)
              + f" {r['train_abs_rel']:9.4f}")
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s; data " + ", ".join(f"{k} {v:.0f} s" for k, v in data.seconds.items()))

    machine = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                   threads=torch.get_num_threads())
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = dict(machine=machine, settings=settings,
                  render_paths=[vars(p) | {"shift_mm": list(p.shift_mm)} for p in RENDER_PATHS],
                  pbr_fit={k: data.fit_metrics.get(k) for k in ("psnr_tissue", "psnr", "ssim", "train_psnr")},
                  data_seconds=data.seconds, total_seconds=total, rows=rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
