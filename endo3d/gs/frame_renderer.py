"""Inference rendering of a trained scene, frame after frame, with the per-frame work on CUDA as one graph.

Rendering a deformable scene at time ``t`` is two parts
(:meth:`DeformableGaussians.render`):

1. :meth:`~DeformableGaussians.splat_inputs`: the deformation query, its
   decoder MLP, the activations and the SH colours. That is about sixty small
   kernels, and at 640x512 their launch cost is larger than their run time.
2. The rasteriser. gsplat's tile lists are sized on the host, so this part
   synchronises once per frame.

For a fixed scene, part 1 always has the same shapes. So on CUDA it is
captured once as a ``torch.cuda.CUDAGraph`` and replayed for every frame,
with ``t`` and the camera centre copied into the graph's static inputs. Part
2 runs eagerly.

The graph reads the model's parameters where they are. An in-place update,
such as an optimizer step, is therefore seen by the next replay. When a
parameter or buffer is *replaced* or resized (densification, loading a
checkpoint), or when the SH degree or the kernel backend changes, the graph
is captured again.

On the CPU, and with ``graph=False``, each frame simply calls
:meth:`DeformableGaussians.render`. So does a renderer whose capture failed
(an operation that cannot be recorded): one warning says why. Both paths give the same images (the
CUDA parity test checks this); gradients are off in both.
"""

from __future__ import annotations

import itertools
import logging
from typing import Hashable

import torch

from endo3d.geometry.se3 import invert_pose
from endo3d.gs.model import DeformableGaussians, SplatInputs
from endo3d.gs.rasterize import RenderOutput, rasterize
from endo3d.kernels.build import backend as kernel_backend

__all__ = ["FrameRenderer"]

LOG = logging.getLogger("endo3d.gs")


class FrameRenderer:
    """Renders ``model`` for many cameras and times, without gradients.

    Args:
        model: the scene.
        deform: apply the deformation field (False: the canonical scene).
        backend: the rasteriser (:func:`endo3d.gs.rasterize.rasterize`).
        graph: replay part 1 as a CUDA graph. ``None`` means yes for
            float32 CUDA scenes.
    """

    def __init__(self, model: DeformableGaussians, *, deform: bool = True, backend: str = "auto",
                 graph: bool | None = None) -> None:
        self.model = model
        self.deform = deform
        self.backend = backend
        self.graph = graph
        self._captured: torch.cuda.CUDAGraph | None = None
        self._state: Hashable = None
        self._t = self._centre = None
        self._outputs: SplatInputs | None = None

    @property
    def uses_graph(self) -> bool:
        """Whether part 1 is replayed as a CUDA graph for this model."""
        means = self.model.splats["means"]
        wanted = self.graph if self.graph is not None else (means.is_cuda and means.dtype == torch.float32)
        return bool(wanted) and means.is_cuda and len(means) > 0

    @torch.no_grad()
    def __call__(self, c2w: torch.Tensor, K: torch.Tensor, width: int, height: int, t: float | torch.Tensor, *,
                 background: torch.Tensor | None = None) -> RenderOutput:
        """The render at time ``t`` (normalised, a number or a 0-d tensor) from ``c2w`` (4,4), ``K`` (3,3)."""
        inputs = self._replay(t, c2w[:3, 3]) if self.uses_graph else None
        if inputs is None:
            inputs = self.model.splat_inputs(t, c2w[:3, 3], self.deform)
        return rasterize(*inputs, invert_pose(c2w), K, width, height, background=background, backend=self.backend)

    def _state_key(self) -> Hashable:
        """Identity, address and shape of every parameter and buffer, the SH degree and the kernel backend."""
        tensors = itertools.chain(self.model.parameters(), self.model.buffers())
        return (tuple((id(x), x.data_ptr(), tuple(x.shape)) for x in tensors), self.model.sh_degree,
                kernel_backend())

    def _replay(self, t: float | torch.Tensor, centre: torch.Tensor) -> SplatInputs | None:
        """Part 1 from the graph (captured first if the model changed); None if it cannot be captured."""
        state = self._state_key()
        if state != self._state:
            try:
                self._capture(centre.device)
            except RuntimeError as e:  # an operation that cannot be recorded: eager from now on
                LOG.warning("FrameRenderer: CUDA graph capture failed (%s); rendering eagerly",
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
                self.graph, self._captured, self._outputs, self._state = False, None, None, None
                return None
            self._state = state
        if isinstance(t, torch.Tensor):
            self._t.copy_(t.reshape(()))
        else:
            self._t.fill_(float(t))
        self._centre.copy_(centre)
        self._captured.replay()
        return self._outputs

    def _capture(self, device: torch.device) -> None:
        """Record part 1 with static inputs, after two warm-up runs on a side stream (lazy initialisation)."""
        means = self.model.splats["means"]
        self._captured = self._outputs = None
        self._t = torch.zeros((), dtype=means.dtype, device=device)
        self._centre = torch.zeros(3, dtype=means.dtype, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model.splat_inputs(self._t, self._centre, self.deform)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.model.splat_inputs(self._t, self._centre, self.deform)
        self._captured, self._outputs = graph, outputs
