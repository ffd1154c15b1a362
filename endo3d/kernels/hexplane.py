"""HexPlane feature query (EndoGaussian's deformation field), with a CUDA kernel.

For ``N`` points with coordinates ``x`` in :math:`[0, 1]^D` (values outside
are clamped) and ``S`` scales, each scale a table :math:`T_s` of shape
``(R_s, F)`` holding ``P`` planes as row blocks (:class:`PlaneLayout`)::

    features[n, s F + f] = prod_p  bilinear(plane_{s,p}[:, :, f], x[n, a_p], x[n, b_p])

so every scale contributes ``F`` features, the product over its planes of
one bilinear lookup each (:func:`bilinear_lookup`). For the HexPlane field
(:class:`endo3d.gs.deform.HexPlaneField`) ``D = 4`` (box-normalised
``x, y, z`` and time ``t``) and ``P = 6`` (planes ``xy xz yz xt yt zt``).

:func:`hexplane_features` runs ``cuda_ext/hexplane.cu`` (all scales and
planes in one launch, forward and backward) for float32 CUDA tensors when
:func:`endo3d.kernels.build.cuda_ops` allows, otherwise
:func:`hexplane_features_reference`, the pure-PyTorch oracle. Both give
gradients to the tables and to ``x`` (zero where ``x`` is outside
:math:`[0, 1]`, like ``torch.clamp``'s, which passes the gradient for
``0 <= x <= 1``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from endo3d.kernels.build import cuda_ops

__all__ = ["PlaneLayout", "bilinear_lookup", "hexplane_features", "hexplane_features_reference"]

#: Limits of the CUDA kernel (``kMaxScales``, ``kMaxPlanes``, ``kMaxDims`` in ``cuda_ext/hexplane.cu``);
#: other shapes use the reference.
MAX_SCALES, MAX_PLANES, MAX_DIMS = 8, 6, 4


class PlaneLayout(NamedTuple):
    """Where one scale's planes sit in its ``(R, F)`` table.

    Attributes:
        sizes: samples along each of the ``D`` coordinates (each >= 2).
        planes: ``(offset, a, b)`` per plane: the plane occupies rows
            ``offset .. offset + sizes[b] * sizes[a] - 1``, row-major
            (``plane[v, u] = table[offset + v * sizes[a] + u]``); coordinate
            ``a`` runs along ``u``, ``b`` along ``v``. Samples sit at
            ``k / (size - 1)`` (``align_corners=True``).

    Any ``(sizes, planes)`` pair (e.g. ``HexPlaneField._layout``'s tuples) is accepted where a layout is asked for.
    """

    sizes: tuple[int, ...]
    planes: tuple[tuple[int, int, int], ...]


# -- reference ---------------------------------------------------------------------------------------


class _Bilinear(torch.autograd.Function):
    """Bilinear interpolation in cells given by their first row ``base`` and fractions ``fu``, ``fv``.

    ``out[b] = (1-fu)(1-fv) T[k] + fu (1-fv) T[k+1] + (1-fu) fv T[k+W] + fu fv T[k+W+1]``
    with ``k = base[b]`` and ``T = table``. Written as a custom function so
    that every pass over the ``B x 4 x F`` corner data is one fast kernel:

    - forward: ``F.embedding_bag`` with the 4 weights per bag;
    - ``d out / d fu = (1-fv) (T[k+1] - T[k]) + fv (T[k+W+1] - T[k+W])``, a
      linear interpolation in the table of differences along ``u``, and
      likewise for ``fv``: two 2-row ``embedding_bag`` calls;
    - the table's gradient is scattered feature-first: contributions as
      ``(F, 4B)`` rows, one ``index_add_`` (long contiguous rows instead of
      ``4B`` rows of ``F``, which is what autograd of a gather would scatter).
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, base: torch.Tensor, fu: torch.Tensor, fv: torch.Tensor,
                row_stride: int) -> torch.Tensor:
        ctx.save_for_backward(table, base, fu, fv)
        ctx.row_stride = row_stride
        weights = torch.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], 1)
        return F.embedding_bag(_corners(base, row_stride), table, per_sample_weights=weights, mode="sum")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        table, base, fu, fv = ctx.saved_tensors
        w = ctx.row_stride
        grad_table = grad_fu = grad_fv = None
        if ctx.needs_input_grad[0]:
            rows, features = table.shape
            weights = torch.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv])  # (4, B)
            contrib = grad.T.contiguous()[:, None, :] * weights  # (F, 4, B)
            index = torch.cat([base, base + 1, base + w, base + w + 1])
            grad_table = table.new_zeros(features, rows).index_add_(1, index, contrib.flatten(1)).T
        if ctx.needs_input_grad[2]:
            du = table[1:] - table[:-1]  # du[k] = T[k+1] - T[k]
            along_u = F.embedding_bag(torch.stack([base, base + w], 1), du,
                                      per_sample_weights=torch.stack([1 - fv, fv], 1), mode="sum")
            grad_fu = (along_u * grad).sum(1)
        if ctx.needs_input_grad[3]:
            dv = table[w:] - table[:-w]  # dv[k] = T[k+W] - T[k]
            along_v = F.embedding_bag(torch.stack([base, base + 1], 1), dv,
                                      per_sample_weights=torch.stack([1 - fu, fu], 1), mode="sum")
            grad_fv = (along_v * grad).sum(1)
        return grad_table, None, grad_fu, grad_fv, None


def _corners(base: torch.Tensor, row_stride: int) -> torch.Tensor:
    """Rows of a cell's 4 corners ``base + (0, 1, W, W + 1)``, :math:`(B, 4)`."""
    return base[:, None] + base.new_tensor([0, 1, row_stride, row_stride + 1])


def _axis(u: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell index ``i`` in [0, size - 2] and fraction ``f`` in [0, 1] of ``u`` in [0, 1] on ``size`` samples.

    Samples sit at ``u = k / (size - 1)`` (``align_corners=True``); ``u = 1`` is
    the end of the last cell.
    """
    p = u * (size - 1)
    i = p.detach().floor().clamp(0, size - 2)
    return i.long(), p - i


def bilinear_lookup(table: torch.Tensor, coords: torch.Tensor, sizes: Sequence[int],
                    planes: Sequence[tuple[int, int, int]]) -> torch.Tensor:
    """Bilinear interpolation in planes stored as rows of one table, all of the same width.

    A plane of height ``H`` and width ``W`` occupies rows ``offset ..
    offset + H W - 1`` of ``table``, row-major (``plane[v, u] = table[offset +
    v W + u]``), like a ``(H, W, F)`` tensor. Coordinate ``a`` in [0, 1] runs
    along ``u`` over ``W`` samples, ``b`` along ``v`` over ``H``, samples at
    the ends (``F.grid_sample(align_corners=True)`` with ``2 a - 1``); values
    outside [0, 1] are clamped (``padding_mode="border"``).

    Gradients reach ``table`` and ``coords``.

    Args:
        table: :math:`(R, F)` plane samples.
        coords: :math:`(N, D)` coordinates in [0, 1].
        sizes: samples along each of the ``D`` coordinates; every plane's
            first coordinate must have the same size ``W``.
        planes: ``(offset, a, b)`` per plane: first row and the two coordinates.

    Returns:
        :math:`(N, P, F)` features per point and plane.
    """
    n = coords.shape[0]
    width = sizes[planes[0][1]]
    if any(sizes[a] != width for _, a, _ in planes):
        raise ValueError("all planes of one table need the same width")
    clamped = coords.clamp(0, 1)
    cells = [_axis(clamped[:, d], size) for d, size in enumerate(sizes)]
    base = torch.stack([offset + cells[b][0] * width + cells[a][0] for offset, a, b in planes], 1)
    fa = torch.stack([cells[a][1] for _, a, _ in planes], 1)
    fb = torch.stack([cells[b][1] for _, _, b in planes], 1)
    out = _Bilinear.apply(table, base.flatten(), fa.flatten(), fb.flatten(), width)
    return out.view(n, len(planes), table.shape[1])


def hexplane_features_reference(tables: Sequence[torch.Tensor], coords: torch.Tensor,
                                layouts: Sequence[PlaneLayout | tuple[Any, Any]]) -> torch.Tensor:
    """:func:`hexplane_features` in PyTorch: per scale one :func:`bilinear_lookup`, the product over planes."""
    out = []
    for table, (sizes, planes) in zip(tables, layouts, strict=True):
        per_plane = bilinear_lookup(table, coords, sizes, planes)
        product = per_plane[:, 0]
        for p in range(1, len(planes)):
            product = product * per_plane[:, p]
        out.append(product)
    return torch.cat(out, 1)


# -- CUDA --------------------------------------------------------------------------------------------


def _flat_layout(tables: Sequence[torch.Tensor], coords: torch.Tensor,
                 layouts: Sequence[PlaneLayout | tuple[Any, Any]]) -> list[int] | None:
    """The kernel's layout, ``(offset, a, b, W, H)`` per plane and scale, or ``None`` if it cannot run these."""
    if not 1 <= len(tables) <= MAX_SCALES:
        return None
    if coords.dim() != 2 or not 1 <= coords.shape[1] <= MAX_DIMS or coords.dtype != torch.float32:
        return None
    features, count = tables[0].shape[-1], len(layouts[0][1])
    if not 1 <= count <= MAX_PLANES:
        return None
    flat: list[int] = []
    for table, (sizes, planes) in zip(tables, layouts):
        if table.dtype != torch.float32 or table.dim() != 2 or table.shape[1] != features or len(planes) != count:
            return None
        for offset, a, b in planes:
            flat += [int(offset), int(a), int(b), int(sizes[a]), int(sizes[b])]
    return flat


class _HexPlaneFunction(torch.autograd.Function):
    """The CUDA forward and backward (``torch.ops.endo3d.hexplane_forward`` / ``hexplane_backward``)."""

    @staticmethod
    def forward(ctx, ops: Any, layout: list[int], coords: torch.Tensor, *tables: torch.Tensor) -> torch.Tensor:
        ctx.ops, ctx.layout = ops, layout
        ctx.save_for_backward(coords, *tables)
        return ops.hexplane_forward(list(tables), coords, layout)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        coords, *tables = ctx.saved_tensors
        need_coords, need_tables = ctx.needs_input_grad[2], any(ctx.needs_input_grad[3:])
        grads = ctx.ops.hexplane_backward(tables, coords, ctx.layout, grad.contiguous(), need_tables, need_coords)
        table_grads = [g if needed else None for g, needed in zip(grads[:-1], ctx.needs_input_grad[3:])]
        return None, None, grads[-1], *table_grads


def hexplane_features(tables: Sequence[torch.Tensor], coords: torch.Tensor,
                      layouts: Sequence[PlaneLayout | tuple[Any, Any]]) -> torch.Tensor:
    """Per scale, the product over its planes of a bilinear lookup; the scales' features concatenated.

    ``features[n, s F + f] = prod_p bilinear(plane_{s,p}[:, :, f], x[n, a_p], x[n, b_p])``
    (module docstring; :func:`bilinear_lookup` for one plane). Differentiable
    with respect to ``tables`` and ``coords``.

    The CUDA kernel runs when :func:`~endo3d.kernels.build.cuda_ops` allows
    (CUDA tensors) and the inputs are float32 with at most 8 scales of the
    same ``F`` and number of planes (at most 6), ``D <= 4``; otherwise
    :func:`hexplane_features_reference`.

    Args:
        tables: ``S`` tables :math:`(R_s, F)`, one per scale.
        coords: :math:`(N, D)` coordinates, in [0, 1] (clamped).
        layouts: one :class:`PlaneLayout` (or ``(sizes, planes)`` pair) per table.

    Returns:
        :math:`(N, S F)` features, in the tables' units to the power ``P``.
    """
    if len(tables) != len(layouts):
        raise ValueError(f"{len(tables)} tables but {len(layouts)} layouts")
    ops = cuda_ops(coords, *tables)
    layout = None if ops is None else _flat_layout(tables, coords, layouts)
    if layout is None:
        return hexplane_features_reference(tables, coords, layouts)
    return _HexPlaneFunction.apply(ops, layout, coords.contiguous(), *(t.contiguous() for t in tables))
