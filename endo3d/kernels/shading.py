"""Shading of G-buffer points: the fused CUDA kernel, with :func:`endo3d.render.shading.shade` as reference.

:func:`shade_points` computes, for ``P`` surface points lit by spot lights
shared by all of them, the linear radiance towards the camera at the origin::

    L = sum_k V_k brdf(n, w_k, v) E_k + ambient (1 - metallic) albedo

exactly as :func:`~endo3d.render.shading.shade` (the model, the clamps and
the finite values at ``X = 0`` and at a light position are that function's).
On CUDA tensors it runs ``cuda_ext/shading.cu``: one thread per point
forward, and a backward that recomputes each light's terms, runs their
hand-written adjoint and sums the light and ambient gradients over the
points in the kernel; the reference makes and keeps dozens of ``(P, .)``
intermediate tensors per light instead. Anything else (CPU tensors,
``ENDO3D_KERNELS=torch``, a failed build, shapes or dtypes the kernel does
not take) calls the reference itself, so the CPU results are the
reference's bit for bit.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.autograd.function import once_differentiable

from endo3d.kernels.build import cuda_ops
from endo3d.render.brdf import Material
from endo3d.render.lights import SpotLight
from endo3d.render.shading import shade

__all__ = ["shade_points"]


class _ShadePoints(torch.autograd.Function):
    """``shade_forward`` / ``shade_backward`` of ``cuda_ext/shading.cu`` on flat, contiguous inputs.

    Inputs after ``ops``: points, normals, albedo ``(P, 3)``; roughness,
    specular, metallic ``(P, 1)``; visibility ``(P, L)`` or None; light
    positions, directions, intensities ``(L, 3)``; falloffs ``(L,)``;
    ambient ``(3,)`` or None. The backward asks the kernel for the gradients
    of exactly the inputs that need one.
    """

    @staticmethod
    def forward(ctx: Any, ops: Any, *inputs: torch.Tensor | None) -> torch.Tensor:
        ctx.ops = ops
        ctx.save_for_backward(*inputs)
        return ops.shade_forward(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        needs = sum(1 << i for i, need in enumerate(ctx.needs_input_grad[1:]) if need)
        grads = ctx.ops.shade_backward(grad.contiguous(), *ctx.saved_tensors, needs)
        return (None, *grads)


def _fits_kernel(points: torch.Tensor, normals: torch.Tensor, material: Material, lights: Sequence[SpotLight],
                 ambient: torch.Tensor | None, visibility: Sequence[torch.Tensor] | None) -> bool:
    """Whether the inputs have the flat shapes the kernel takes, one floating dtype and one device."""
    if points.dim() != 2 or points.shape[1] != 3 or normals.shape != points.shape or not lights:
        return False
    n = points.shape[0]
    per_point = [(field, (n, c)) for field, c in zip(material.fields(), (3, 1, 1, 1))]
    if visibility is not None:
        if len(visibility) != len(lights):
            return False
        per_point += [(v, (n, 1)) for v in visibility]
    for tensor, shape in per_point:
        if tensor.dim() > 2 or tensor.shape[-1:] != shape[1:] or tensor.shape[:-1] not in ((), (1,), shape[:1]):
            return False
    if ambient is not None and ambient.shape not in ((3,), (1, 3)):
        return False
    if any(light.position.shape != (3,) or light.direction.shape != (3,) or light.intensity.shape != (3,)
           or light.falloff.shape != () for light in lights):
        return False
    tensors = [points, normals, *material.fields(), *(t for light in lights for t in _light_tensors(light))]
    tensors += [t for t in (ambient, *(visibility or ())) if t is not None]
    return (points.dtype in (torch.float32, torch.float64)
            and all(t.dtype == points.dtype and t.device == points.device for t in tensors))


def _light_tensors(light: SpotLight) -> tuple[torch.Tensor, ...]:
    return light.position, light.direction, light.intensity, light.falloff


def shade_points(
    points: torch.Tensor,
    normals: torch.Tensor,
    material: Material,
    lights: Sequence[SpotLight],
    ambient: torch.Tensor | None = None,
    *,
    visibility: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Linear radiance towards the camera of ``P`` points lit by shared spot lights (module docstring).

    The same function as :func:`endo3d.render.shading.shade` for flat inputs;
    with these shapes (float32 or float64, one CUDA device) it runs the fused
    kernel, which gives every input that requires one its gradient (a field
    given once for all points, e.g. a ``(1, 3)`` albedo, the sum over them).

    Args:
        points: ``(P, 3)`` surface points ``X`` in mm, camera frame (camera at the origin).
        normals: ``(P, 3)`` unit normals facing the camera.
        material: albedo ``(P, 3)``, roughness, specular and metallic
            ``(P, 1)``; a leading size of 1 (or none) broadcasts over the points.
        lights: spot lights shared by all points: position, direction and
            intensity ``(3,)``, falloff ``()``.
        ambient: ``(3,)`` (or ``(1, 3)``) inter-reflection radiance; ``None`` for none.
        visibility: one ``(P, 1)`` (or ``(1, 1)``) shadow factor in [0, 1] per
            light; ``None`` for no shadows.

    Returns:
        ``(P, 3)`` linear RGB radiance. Other shapes (e.g. lights with batch
        dims) and CPU tensors are passed to the reference unchanged, so the
        result is bit-identical to :func:`~endo3d.render.shading.shade` there.
    """
    fits = _fits_kernel(points, normals, material, lights, ambient, visibility)
    ops = cuda_ops(points, normals, *material.fields()) if fits else None
    if ops is None:
        return shade(points, normals, material, lights, ambient, visibility=visibility)
    n = points.shape[0]
    albedo, roughness, specular, metallic = (
        field.expand(n, c).contiguous() for field, c in zip(material.fields(), (3, 1, 1, 1)))
    vis = None if visibility is None else torch.cat([v.expand(n, 1) for v in visibility], dim=1)
    positions, directions, intensities, falloffs = (
        torch.stack(tensors) for tensors in zip(*(_light_tensors(light) for light in lights)))
    return _ShadePoints.apply(
        ops, points.contiguous(), normals.contiguous(), albedo, roughness, specular, metallic, vis,
        positions, directions, intensities, falloffs, None if ambient is None else ambient.reshape(3).contiguous())
