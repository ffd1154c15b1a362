"""Run folders of ``endo3d depth train`` / ``finetune``: what is saved and how a model is rebuilt.

A run folder holds::

    run.json              format, mode, network (DepthNetConfig), settings, base, metrics
    base.safetensors      the backbone's base weights, when they did not come from a
                          --weights file (random init, --init of another run, full fine-tuning)
    adapters.safetensors  LoRA / necks (and the DPT head if it trained), endo3d adapter format
    heads.safetensors     the multi-scale depth heads
    pose.safetensors      the pose / brightness / intrinsics network (self-supervised runs)

With ``--weights FILE`` the run records the file's path instead of copying
it (``run.json["weights"]``): keep the file where it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from endo3d.core.config import from_dict
from endo3d.core.errors import InputError
from endo3d.depth.config import RUN_FORMAT, DepthNetConfig
from endo3d.depth.model import DepthAnything, DepthAnythingConfig
from endo3d.depth.network import DepthNet, build_backbone
from endo3d.depth.posenet import PoseNet

__all__ = ["LoadedRun", "base_state_dict", "load_run", "read_run_json", "save_tensors", "load_tensors"]

BASE_FILE = "base.safetensors"
ADAPTER_FILE = "adapters.safetensors"
HEADS_FILE = "heads.safetensors"
POSE_FILE = "pose.safetensors"
RUN_JSON = "run.json"


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file atomically (contiguous CPU copies)."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(path, "missing")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise InputError(path, f"unreadable safetensors file ({type(exc).__name__})") from None


def load_into(module: nn.Module, path: Path) -> None:
    """Load ``path`` into ``module`` strictly; missing / unexpected keys are an :class:`InputError`."""
    state = load_tensors(path)
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(path, f"keys differ from the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    wrong = [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        raise InputError(path, f"{len(wrong)} tensors have the wrong shape, e.g. {wrong[0]}")
    module.load_state_dict(state, strict=True)


def base_state_dict(backbone: DepthAnything) -> dict[str, torch.Tensor]:
    """The backbone's weights without adapters (LoRA ``lora_*`` and necks): the base layout."""
    return {k: v for k, v in backbone.state_dict().items() if ".lora_" not in k and ".necks." not in k}


def read_run_json(run: Path) -> dict[str, Any]:
    """``run.json`` of a run folder, checked for the format."""
    path = Path(run) / RUN_JSON
    if not Path(run).is_dir():
        raise InputError(run, "missing" if not Path(run).exists() else "is not a run folder")
    if not path.is_file():
        raise InputError(path, "missing: not a finished depth run (an interrupted one is resumed with --resume)")
    try:
        obj = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != RUN_FORMAT:
        raise InputError(path, f"not a depth run (format {obj.get('format') if isinstance(obj, dict) else None!r})")
    return obj


@dataclass
class LoadedRun:
    """A model rebuilt from a run folder."""

    net: DepthNet
    pose: PoseNet | None
    info: dict[str, Any]
    """``run.json``."""

    @property
    def network(self) -> DepthNetConfig:
        return self.net.config


def build_pose_net(info: dict[str, Any]) -> PoseNet:
    p = info["pose"]
    return PoseNet(learn_intrinsics=bool(p["learn_intrinsics"]), width=int(p["width"]),
                   translation_scale_mm=float(p["translation_scale_mm"]), square_pixels=bool(p["square_pixels"]))


def load_run(run: str | os.PathLike[str]) -> LoadedRun:
    """Rebuild the depth network (and the pose net, if any) of a finished run, in eval mode.

    Raises:
        InputError: not a run folder, a file missing or not matching the
            network, or the ``--weights`` file it was trained from is gone.
    """
    run = Path(run)
    info = read_run_json(run)
    network = from_dict(DepthNetConfig, info["network"], str(run / RUN_JSON), "network")
    if (run / BASE_FILE).is_file():
        backbone = DepthAnything(DepthAnythingConfig(network.encoder, version=network.version))  # type: ignore[arg-type]
        load_into(backbone, run / BASE_FILE)
    elif info.get("weights"):
        weights = Path(info["weights"])
        if not weights.is_file():
            raise InputError(weights, f"base weights of run {run} not found (the run stores their path only)")
        backbone = build_backbone(network, weights)
    else:
        raise InputError(run / BASE_FILE, "missing (and the run names no --weights file)")
    net = DepthNet(backbone, network, inject=False)
    if (run / ADAPTER_FILE).is_file():
        from endo3d.depth.adapters import load_adapters

        load_adapters(backbone, run / ADAPTER_FILE)
    load_into(net.heads, run / HEADS_FILE)
    pose = None
    if (run / POSE_FILE).is_file():
        pose = build_pose_net(info)
        load_into(pose, run / POSE_FILE)
        pose.eval()
    return LoadedRun(net.eval(), pose, info)
