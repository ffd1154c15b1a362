"""Benchmark of ``endo3d depth``: supervised fine-tuning on one scene family, self-supervised LoRA adaptation on another.

Steps (small CPU-sized defaults; every number is a flag):

1. simulate ``tissue`` (near-static laparoscope, breathing) and ``colon``
   (moving camera) datasets;
2. ``depth finetune`` on tissue (supervised, SILog, full fine-tuning of the
   backbone: with no foundation weights the backbone starts from random
   init, so there is nothing to keep frozen yet);
3. evaluate that model on colon: the "unadapted" baseline;
4. ``depth train --init FINETUNED`` on colon: self-supervised, DV-LoRA +
   necks + disparity heads, learned intrinsics, frozen backbone;
5. evaluate again on colon: AbsRel before/after, the trainable share, the
   learned focal length error against the simulator's K, pose ATE/RPE.

Colon is the adaptation family because self-supervision needs camera
motion (tissue's camera barely moves). With ``--weights`` the backbone is
Depth Anything and ``--ft-full`` can be turned off.

Usage: python benchmarks/depth.py [--encoder vits] [--frames 24] [--ft-steps 300] [--ss-steps 300]
       [--json benchmarks/results/depth.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from endo3d.depth.config import DepthEvalConfig, DepthFinetuneConfig, DepthTrainConfig
from endo3d.depth.evaluate import evaluate, format_table
from endo3d.depth.train import train
from endo3d.sim.config import SimulateConfig
from endo3d.sim.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="vits")
    parser.add_argument("--weights", type=Path, default=None, help="Depth Anything weights (optional)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--sim-size", default="128x96", help="simulated WxH")
    parser.add_argument("--net-size", default="112x84", help="network WxH (multiples of 14)")
    parser.add_argument("--ft-steps", type=int, default=300)
    parser.add_argument("--ss-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--ft-lr", type=float, default=2e-4)
    parser.add_argument("--ss-lr", type=float, default=1e-3)
    parser.add_argument("--pose-lr", type=float, default=1e-3)
    parser.add_argument("--pose-width", type=int, default=32)
    parser.add_argument("--no-ft-full", action="store_true", help="fine-tune adapters only (with --weights)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: temporary)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/depth.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sw, sh = (int(v) for v in args.sim_size.split("x"))
    nw, nh = (int(v) for v in args.net_size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = {}
        t0 = time.perf_counter()
        for scene in ("tissue", "colon"):
            data[scene] = work / scene
            if not (data[scene] / "meta.json").exists():
                simulate(SimulateConfig(scene=scene, out=data[scene], frames=args.frames, width=sw, height=sh,
                                        workers=0, preview=False, overwrite=True), progress=False)
        sim_s = time.perf_counter() - t0
        common = dict(encoder=args.encoder, weights=args.weights, height=nh, width=nw, batch_size=args.batch_size,
                      device=args.device, overwrite=True, checkpoint_every=max(args.ft_steps, args.ss_steps),
                      progress=False)
        ft = train(DepthFinetuneConfig(data=(data["tissue"],), out=work / "ft", steps=args.ft_steps, lr=args.ft_lr,
                                       loss="silog", full=not args.no_ft_full, **common))
        assert ft is not None
        before, _ = evaluate(DepthEvalConfig(data=(data["colon"],), checkpoint=work / "ft", out=work / "before.json",
                                             progress=False, device=args.device))
        common.pop("weights")
        ss = train(DepthTrainConfig(data=(data["colon"],), out=work / "ss", steps=args.ss_steps, lr=args.ss_lr,
                                    pose_lr=args.pose_lr, pose_width=args.pose_width, init=work / "ft", **common))
        assert ss is not None
        after, _ = evaluate(DepthEvalConfig(data=(data["colon"],), checkpoint=work / "ss", out=work / "after.json",
                                            progress=False, device=args.device))
        tissue_ft, _ = evaluate(DepthEvalConfig(data=(data["tissue"],), checkpoint=work / "ft",
                                                out=work / "tissue.json", progress=False, device=args.device))

    print("fine-tuned on tissue, evaluated on tissue (sanity):")
    print(format_table(tissue_ft))
    print("\nfine-tuned on tissue, evaluated on colon (unadapted):")
    print(format_table(before))
    print("\nafter self-supervised LoRA adaptation on colon:")
    print(format_table(after))
    summary = {
        "abs_rel_colon_before": before["depth"]["abs_rel"],
        "abs_rel_colon_after": after["depth"]["abs_rel"],
        "a1_colon_before": before["depth"]["a1"],
        "a1_colon_after": after["depth"]["a1"],
        "abs_rel_tissue_finetuned": tissue_ft["depth"]["abs_rel"],
        "trainable_share_adaptation": ss.info["trainable_share"],
        "trainable_parameters_adaptation": ss.info["trainable_parameters"],
        "focal_error_pct": after["intrinsics"]["focal_error_pct"] if after["intrinsics"] else None,
        "principal_point_error_px": after["intrinsics"]["principal_point_error_px"] if after["intrinsics"] else None,
        "ate_mm": after["pose"]["ate_mm"] if after["pose"] else None,
        "rpe_trans_mm": after["pose"]["rpe_trans_mm"] if after["pose"] else None,
        "finetune_seconds": ft.info["train_seconds"],
        "adapt_seconds": ss.info["train_seconds"],
        "simulate_seconds": sim_s,
        "finetune_loss_first_last": [ft.info["loss_first_10"], ft.info["loss_last_10"]],
        "adapt_loss_first_last": [ss.info["loss_first_10"], ss.info["loss_last_10"]],
    }
    print()
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        print(f"{k:{width}s}  {v:.4f}" if isinstance(v, float) else f"{k:{width}s}  {v}")
    machine = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                   threads=torch.get_num_threads(), cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = dict(machine=machine, settings={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  summary=summary, before=before, after=after, tissue_finetuned=tissue_ft)
    args.json.write_text(json.dumps(record, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
