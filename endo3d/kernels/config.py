"""Settings of ``endo3d kernels build``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KernelsBuildConfig:
    """Compile the CUDA kernels ahead of time into the cache (needs the CUDA toolkit, not a GPU).

    Without this, they are compiled at the first use on a GPU. Set
    ``TORCH_CUDA_ARCH_LIST`` (e.g. ``9.0``) on a machine without a GPU, and
    ``ENDO3D_CACHE_DIR`` to choose the cache folder.
    """

    verbose: bool = False
    """Show the compiler's commands and messages."""


@dataclass
class KernelsStatusConfig:
    """Say which path the operations take here (CUDA kernels or PyTorch reference) and why."""

    build: bool = False
    """Also try to build and load the kernels now (otherwise only report the cache)."""
