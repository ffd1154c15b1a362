"""The torch device of a ``--device auto|cpu|cuda`` flag."""

from __future__ import annotations

import torch

from endo3d.core.errors import Endo3dError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is a one-line error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise Endo3dError("--device cuda: no CUDA GPU is available (use --device cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
