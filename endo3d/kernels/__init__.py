"""Fused CUDA kernels for the hot paths, each with its pure-PyTorch reference.

One function per operation chooses the CUDA kernel (CUDA tensors, library
built) or the reference (the oracle of the parity tests); see
:mod:`endo3d.kernels.build` for the build, the cache and ``ENDO3D_KERNELS``.

- :func:`hexplane_features`: the HexPlane multi-plane feature query
  (EndoGaussian's deformation field), all planes and scales in one launch.
- :func:`shade_points`: spot-light + GGX/Lambert shading of G-buffers.
- :func:`photometric_loss`: masked ``(1 - w) L1 + w (1 - SSIM)``.

The operations are imported on first use so that importing this package
(the CLI's configs do) does not load torch.
"""

from typing import Any

from endo3d.kernels.config import KernelsBuildConfig, KernelsStatusConfig

__all__ = ["KernelsBuildConfig", "KernelsStatusConfig", "hexplane_features", "photometric_loss", "shade_points"]

_HOMES = {"hexplane_features": "hexplane", "shade_points": "shading", "photometric_loss": "ssim"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        from importlib import import_module

        return getattr(import_module(f"endo3d.kernels.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
