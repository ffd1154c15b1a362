"""Throughput of ``endo3d depth``: training and inference frames/s with ViT-S and ViT-B encoders.

Input size: 256 x 320 (SCARED / EndoDAC) is not a multiple of the ViT's
14-pixel patches; the nearest multiples, 252 x 322 (18 x 23 patches), are
used (``--height`` / ``--width`` change it).

Training: one self-supervised step of ``endo3d depth train``
(:func:`endo3d.depth.train.self_supervised_step`) on a batch of
``--train-batch`` frame triplets (target + neighbours -1 and +1): the depth
network on the targets (4 scales), the pose / brightness / intrinsics
network (ResNet-18, learned intrinsics) on both pairs, view synthesis with
auto-masking and smoothness, backward and an Adam step. ``--modes``:
``adapters`` is EndoDAC's setting (frozen backbone, DV-LoRA rank 4 on every
block's MLP, convolutional necks, depth heads and the pose net train);
``full`` trains every weight. Training frames/s = target frames per second.

Inference: :meth:`endo3d.depth.network.DepthNet.depth` (finest head only) on
``--infer-batch`` frames, no gradients, in eval mode; frames/s = frames per
second through the network (no data loading or resizing).

Backbones start from random init (no weights or data are needed; the
timings do not depend on the values). Images are seeded uniform noise.
Each number is the median over ``--repeats`` timed runs after ``--warmup``
untimed ones; on CUDA each run is timed with CUDA events (and
``torch.cuda.synchronize``), with ``cudnn.benchmark`` on; on CPU with the
wall clock (use tiny counts there: it is a smoke test, not a benchmark).
``--precisions bf16`` runs the forward passes and losses under
``torch.autocast(dtype=torch.bfloat16)`` (weights and optimiser stay float32).

Usage: python benchmarks/depth_throughput.py [--device cuda] [--encoders vits vitb] [--precisions fp32 bf16]
       [--modes adapters full] [--json benchmarks/results/depth_throughput.json]
CPU smoke test: python benchmarks/depth_throughput.py --device cpu --encoders vits --height 56 --width 70
       --train-batch 2 --infer-batch 2 --warmup 1 --repeats 1 --json /tmp/depth_throughput.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from endo3d.depth.config import DepthNetConfig, DepthTrainConfig
from endo3d.depth.losses import LossTerms
from endo3d.depth.network import DepthNet, build_backbone
from endo3d.depth.posenet import PoseNet
from endo3d.depth.train import TRANSLATION_SCALE_MM, Batch, self_supervised_step, set_trainable


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == "bf16"``, else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build(encoder: str, mode: str, height: int, width: int, device: torch.device, seed: int) -> tuple[DepthNet, PoseNet]:
    """Depth network (random-init backbone) and pose net, trainable as ``mode`` says, on ``device``."""
    torch.manual_seed(seed)
    config = DepthNetConfig(encoder=encoder, height=height, width=width,
                            adapter="none" if mode == "full" else "dvlora", necks=mode != "full")
    net = DepthNet(build_backbone(config), config)
    set_trainable(net, full=mode == "full", train_head=False)
    pose = PoseNet(learn_intrinsics=True, width=64, translation_scale_mm=TRANSLATION_SCALE_MM)
    return net.to(device), pose.to(device)


def measure(encoder: str, mode: str, precision: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Training and inference timings of one configuration."""
    h, w = args.height, args.width
    net, pose = build(encoder, mode, h, w, device, args.seed)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    g = torch.Generator().manual_seed(args.seed)
    frames = torch.rand(3, args.train_batch, 3, h, w, generator=g).to(device)
    ok = torch.ones(args.train_batch, 1, h, w, dtype=torch.bool, device=device)
    batch = Batch(target=frames[0], sources=[frames[1], frames[2]], valid=ok, source_valid=[ok, ok], K=None, depth=None)
    config = DepthTrainConfig(data=(Path("unused"),), out=Path("unused"))  # the loss settings' defaults
    params = [p for p in net.parameters() if p.requires_grad] + list(pose.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4)
    noise = torch.Generator().manual_seed(args.seed + 1)
    net.train()
    pose.train()

    def train_step() -> LossTerms:
        with autocast(device, precision):
            terms = self_supervised_step(net, pose, batch, config, noise)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        return terms

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = timed(train_step, device, args.warmup, args.repeats)
    train_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    loss = float(train_step().total.detach())

    net.eval()
    images = torch.rand(args.infer_batch, 3, h, w, generator=g).to(device)

    @torch.no_grad()
    def infer() -> torch.Tensor:
        with autocast(device, precision):
            return net.depth(images)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    infer_s = timed(infer, device, args.warmup, args.repeats)
    infer_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    train_med, infer_med = statistics.median(train_s), statistics.median(infer_s)
    return dict(encoder=encoder, mode=mode, precision=precision, height=h, width=w,
                train_batch=args.train_batch, infer_batch=args.infer_batch,
                trainable_parameters=trainable, depth_parameters=total,
                pose_parameters=sum(p.numel() for p in pose.parameters()),
                train_step_ms=1e3 * train_med, train_fps=args.train_batch / train_med,
                train_step_ms_all=[1e3 * t for t in train_s], train_peak_gib=train_mem, train_loss=loss,
                infer_batch_ms=1e3 * infer_med, infer_fps=args.infer_batch / infer_med,
                infer_batch_ms_all=[1e3 * t for t in infer_s], infer_peak_gib=infer_mem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--encoders", nargs="+", default=["vits", "vitb"])
    parser.add_argument("--modes", nargs="+", default=["adapters"], choices=["adapters", "full"])
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--height", type=int, default=252, help="multiple of 14 (252: nearest to 256)")
    parser.add_argument("--width", type=int, default=322, help="multiple of 14 (322: nearest to 320)")
    parser.add_argument("--train-batch", type=int, default=8, help="frame triplets per training step (EndoDAC: 8)")
    parser.add_argument("--infer-batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="CPU torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/depth_throughput.json"))
    args = parser.parse_args()
    if args.height % 14 or args.width % 14:
        parser.error(f"--height and --width must be multiples of 14, got {args.height} x {args.width}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    started = time.perf_counter()
    rows = []
    header = (f"{'encoder':7s} {'mode':8s} {'prec':4s} {'size':>7s} {'train ms/step':>13s} {'train fps':>9s} "
              f"{'infer ms/batch':>14s} {'infer fps':>9s} {'train GiB':>9s} {'trainable':>10s}")
    print(header)
    print("-" * len(header))
    for encoder in args.encoders:
        for mode in args.modes:
            for precision in args.precisions:
                r = measure(encoder, mode, precision, args, device)
                rows.append(r)
                mem = f"{r['train_peak_gib']:9.2f}" if r["train_peak_gib"] is not None else f"{'-':>9s}"
                print(f"{encoder:7s} {mode:8s} {precision:4s} {args.width:>3d}x{args.height:<3d} "
                      f"{r['train_step_ms']:13.1f} {r['train_fps']:9.1f} {r['infer_batch_ms']:14.1f} "
                      f"{r['infer_fps']:9.1f} {mem} {r['trainable_parameters'] / 1e6:9.2f}M", flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    seconds = time.perf_counter() - started
    machine = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                   device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   cuda=torch.version.cuda, threads=torch.get_num_threads(), cores=len(os.sched_getaffinity(0)),
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.json.write_text(json.dumps(dict(machine=machine, settings=settings, seconds=seconds, rows=rows), indent=1))
    print("\ntrain fps: target frames (each with 2 source frames) per second; infer fps: frames per second.")
    print(f"{machine['gpu'] or 'CPU'}, {seconds:.0f} s in all; JSON: {args.json}")


if __name__ == "__main__":
    main()
