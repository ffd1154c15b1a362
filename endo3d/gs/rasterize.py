"""Differentiable rasterisation of 3D Gaussians: colour, expected depth and opacity images.

:func:`rasterize` renders N Gaussians (world mm, OpenCV camera, K in our pixel
convention; CONVENTIONS.md) with the semantics of gsplat 1.5.3's CUDA
rasteriser (``rasterization(..., render_mode="RGB+ED", packed=False)``):

1. EWA projection and culling, :mod:`endo3d.gs.project`.
2. At each pixel ``p`` (centre ``(u, v)``), the drawn Gaussians front to back
   by camera z (ties by index). With ``d = mean2d - p`` and the conic ``Q``::

       sigma_i = 1/2 d^T Q d
       alpha_i = min(0.999, o_i exp(-sigma_i))

   A Gaussian is skipped at ``p`` when ``alpha_i < 1/255``, ``sigma_i < 0``
   or ``p`` is outside its footprint box (:func:`endo3d.gs.project.footprint_pixels`;
   the opacity-aware box is where ``alpha_i >= 1/255`` can hold, so this is
   decided per pixel, never per tile, and results do not depend on tiling;
   the conic is positive definite, so ``sigma_i < 0`` happens only by
   rounding). With ``T_1 = 1`` and
   ``T_{i+1} = T_i (1 - alpha_i)``, compositing stops before the first
   Gaussian whose ``T_{i+1} <= 1e-4``. Weights ``w_i = alpha_i T_i``.
3. Outputs ``rgb = sum_i w_i c_i + T_final bg``, ``alpha = sum_i w_i =
   1 - T_final`` and ``depth = sum_i w_i z_i / alpha`` (0 where
   ``alpha < 1e-6``).

Backends, all with these semantics:

- ``"torch"``: tile-based CPU/GPU path with an analytic backward; the
  training rasteriser without CUDA. Projection is plain autograd. Each
  Gaussian is listed in the 4x4-pixel tiles where its ``alpha >= 1/255``
  ellipse reaches a pixel centre (:func:`_bin_tiles`); tiles with similar
  list lengths are composited together on ``(tiles, K, 16)`` tensors, where
  ``log(o exp(-sigma))`` is a quadratic in the pixel offset, so one matmul
  evaluates it (:class:`_CompositeTiles`).
- ``"dense"``: every Gaussian against every pixel with plain autograd; the
  oracle the others are tested against (memory N x H x W).
- ``"gsplat"``: gsplat's CUDA kernels, converted at this boundary.
"""

from __future__ import annotations

import math
import numbers
import threading
import weakref
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from endo3d.core.check import ShapeError, check_shape
from endo3d.core.errors import Endo3dError
from endo3d.gs.project import ALPHA_MIN, Projection, footprint_pixels, project_gaussians

Backend = Literal["auto", "torch", "dense", "gsplat"]

ALPHA_MAX = 0.999
"""Largest opacity one Gaussian adds at a pixel (keeps 1 - alpha invertible)."""

T_MIN = 1e-4
"""Compositing stops before the Gaussian that would bring the transmittance to or below this."""

DEPTH_ALPHA_MIN = 1e-6
"""Pixels with accumulated opacity below this get depth 0."""

TILE_SIZE = 4
"""Side of the square pixel tiles of the torch backend (results do not depend on it)."""

_CHUNK_ELEMENTS = 1 << 20
"""The torch backend composites at most about this many (Gaussian, pixel) pairs at once (also the size of each
of its reused CPU buffers, :class:`_Scratch`)."""

_KEPT_BLOCKS = 64
"""At most this many blocks of ``_CHUNK_ELEMENTS`` values per dtype are held for reuse (256 MiB in float32)."""


@dataclass
class RenderOutput:
    """What :func:`rasterize` returns.

    Attributes:
        rgb: ``(3, H, W)`` ``sum_i w_i c_i + T_final * background``.
        depth: ``(1, H, W)`` expected z-depth in mm, ``sum_i w_i z_i / alpha``; 0 where ``alpha < 1e-6``.
        alpha: ``(1, H, W)`` accumulated opacity ``sum_i w_i = 1 - T_final``.
        means2d: ``(N, 2)`` projected centres in pixels (our K convention), 0 for culled Gaussians.
            When grads are enabled, ``means2d.grad`` after backward is the gradient of the loss
            w.r.t. them (what densification reads; gsplat's ``info["means2d"]``).
        radii: ``(N,)`` int32 footprint radius in pixels, ``max(r_x, r_y)``; 0 = culled / not drawn.
    """

    rgb: Tensor
    depth: Tensor
    alpha: Tensor
    means2d: Tensor
    radii: Tensor


def rasterize(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, viewmat: Tensor, K: Tensor,
    width: int, height: int, *, background: Tensor | None = None, backend: Backend = "auto",
    near: float = 0.01, far: float = 1e10, eps2d: float = 0.3,
) -> RenderOutput:
    """Render N Gaussians into one camera (module docstring for the maths).

    Args:
        means: ``(N, 3)`` world-frame centres, mm.
        quats: ``(N, 4)`` rotations ``(w, x, y, z)``, normalised here.
        scales: ``(N, 3)`` standard deviations along the rotated axes, mm (already exp'd).
        opacities: ``(N,)`` in (0, 1) (already sigmoid'ed).
        colors: ``(N, 3)`` any real values (already evaluated from SH).
        viewmat: ``(4, 4)`` world-to-camera, OpenCV frame.
        K: ``(3, 3)`` intrinsics in pixels, our pixel-centre convention.
        width, height: image size in pixels.
        background: ``(3,)`` colour behind the Gaussians; None = black.
        backend: ``"torch"``, ``"dense"``, ``"gsplat"`` (float32 CUDA only) or ``"auto"``
            (gsplat for float32 CUDA tensors when it imports, else torch).
        near, far: Gaussians with camera z outside ``[near, far]`` mm are culled.
        eps2d: blur added to each 2D covariance, pixels^2.

    All float tensors share one dtype (float32 or float64) and device. The
    outputs are differentiable w.r.t. means, quats, scales, opacities, colors,
    background (and viewmat, K).

    Raises:
        Endo3dError: bad shapes, dtypes, sizes or backend; ``"gsplat"`` without CUDA.
    """
    _check_inputs(means, quats, scales, opacities, colors, viewmat, K, background, width, height, near, far, eps2d)
    width, height = int(width), int(height)
    if background is None:
        background = means.new_zeros(3)
    if backend not in ("auto", "torch", "dense", "gsplat"):
        raise Endo3dError(f"rasterize: unknown backend {backend!r} (auto, torch, dense or gsplat)")
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and means.dtype == torch.float32 and _gsplat_imports() else "torch"
    if backend == "gsplat":
        if not means.is_cuda or means.dtype != torch.float32:
            raise Endo3dError(f"rasterize: backend 'gsplat' needs float32 CUDA tensors, got {means.dtype} on "
                              f"{means.device}")
        if not _gsplat_imports():
            raise Endo3dError("rasterize: backend 'gsplat' needs the gsplat package, which does not import")
        if len(means):  # no Gaussians: the torch backend's background image is exact
            return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
                                     near, far, eps2d)
    proj = project_gaussians(means, quats, scales, opacities, viewmat, K, width, height,
                             near=near, far=far, eps2d=eps2d)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    features = torch.cat([colors, proj.depths[:, None]], dim=-1)
    if backend == "dense":
        image = _composite_dense(proj, opacities, features, width, height)
    else:
        image = _composite_torch(proj, opacities, features, width, height, TILE_SIZE)
    return _finish(image[:3], image[3:4], image[4:5], background, proj.means2d, proj.radii.amax(-1))


def _check_inputs(means, quats, scales, opacities, colors, viewmat, K, background, width, height, near, far,
                  eps2d) -> None:
    try:
        n = check_shape(means, "N 3", "means")["N"]
        check_shape(quats, f"{n} 4", "quats")
        check_shape(scales, f"{n} 3", "scales")
        check_shape(opacities, f"{n}", "opacities")
        check_shape(colors, f"{n} 3", "colors")
        check_shape(viewmat, "4 4", "viewmat")
        check_shape(K, "3 3", "K")
        if background is not None:
            check_shape(background, "3", "background")
    except ShapeError as e:
        raise Endo3dError(f"rasterize: {e}") from e
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
               "viewmat": viewmat, "K": K}
    if background is not None:
        tensors["background"] = background
    if means.dtype not in (torch.float32, torch.float64):
        raise Endo3dError(f"rasterize: means has dtype {means.dtype}, expected float32 or float64")
    for name, t in tensors.items():
        if t.dtype != means.dtype or t.device != means.device:
            raise Endo3dError(f"rasterize: {name} is {t.dtype} on {t.device}, means is {means.dtype} on {means.device}")
    if not all(isinstance(size, numbers.Integral) and size > 0 for size in (width, height)):
        raise Endo3dError(f"rasterize: image size {width!r} x {height!r} must be positive integers")
    if not (0 < near < far) or eps2d < 0:
        raise Endo3dError(f"rasterize: need 0 < near < far and eps2d >= 0, got {near}, {far}, {eps2d}")


def _finish(rgb: Tensor, depth_sum: Tensor, alpha: Tensor, background: Tensor, means2d: Tensor,
            radii: Tensor) -> RenderOutput:
    """Add the background and normalise the depth: ``(3|1, H, W)`` composited sums -> :class:`RenderOutput`."""
    rgb = rgb + (1 - alpha) * background[:, None, None]
    drawn = alpha >= DEPTH_ALPHA_MIN
    depth = torch.where(drawn, depth_sum / alpha.clamp_min(DEPTH_ALPHA_MIN), 0)
    return RenderOutput(rgb=rgb, depth=depth, alpha=alpha, means2d=means2d, radii=radii.to(torch.int32))


# --------------------------------------------------------------------------------------------------- dense oracle


def _composite_dense(proj: Projection, opacities: Tensor, features: Tensor, width: int, height: int) -> Tensor:
    """Every Gaussian against every pixel, plain autograd: ``(C + 1, H, W)`` sums ``sum_i w_i f_i`` and alpha.

    ``features`` is ``(N, C)``; the last output channel is ``sum_i w_i``. Memory ``O(N H W)``.
    """
    dtype, device = features.dtype, features.device
    order = torch.argsort(torch.where(proj.visible, proj.depths, math.inf).detach(), stable=True)
    means2d, conics, radii = proj.means2d[order], proj.conics[order], proj.radii[order]
    u = torch.arange(width, dtype=dtype, device=device)
    v = torch.arange(height, dtype=dtype, device=device)[:, None]
    dx = means2d[:, 0, None, None] - u  # (N, H, W)
    dy = means2d[:, 1, None, None] - v
    a, b, c = (conics[:, k, None, None] for k in range(3))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacities[order, None, None] * torch.exp(-sigma), ALPHA_MAX)
    u0, u1, v0, v1 = footprint_pixels(means2d.detach(), radii)
    in_box = ((u >= u0[:, None, None]) & (u <= u1[:, None, None]) & (v >= v0[:, None, None]) & (v <= v1[:, None, None]))
    drawn = in_box & (radii[:, 0, None, None] > 0) & (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(drawn, alpha, 0)
    transmittance = torch.cumprod(1 - alpha, dim=0)  # T_{i+1}
    alpha = torch.where(transmittance.detach() > T_MIN, alpha, 0)  # stop before T would reach T_MIN
    transmittance = torch.cumprod(1 - alpha, dim=0)
    t_before = torch.cat([torch.ones_like(transmittance[:1]), transmittance[:-1]])
    weights = alpha * t_before
    feats = torch.cat([features[order], torch.ones_like(features[order, :1])], dim=-1)
    return torch.einsum("nhw,nc->chw", weights, feats)


# --------------------------------------------------------------------------------------------------- torch backend


@dataclass(frozen=True)
class _Chunk:
    """Tiles that are composited together: ``gauss[t, k]`` is the k-th nearest Gaussian of tile ``tiles[t]``.

    ``gauss`` is ``(n, K)`` int64, padded with the index N of a dummy Gaussian that is never drawn.
    """

    tiles: Tensor
    gauss: Tensor


@dataclass(frozen=True)
class _TileLayout:
    """Which Gaussians each pixel tile sees, front to back, grouped in chunks of similar list length.

    Attributes:
        tile_size: tile side ``s`` in pixels; a tile holds ``P = s^2`` pixels, row-major.
        tiles_x, tiles_y: number of tiles across and down (the image is padded to whole tiles).
        centres: ``(tiles_y * tiles_x, 2)`` float64 pixel coordinates of the tile centres.
        chunks: the tiles that any Gaussian touches.
    """

    tile_size: int
    tiles_x: int
    tiles_y: int
    centres: Tensor
    chunks: list[_Chunk]


def _bin_tiles(proj: Projection, opacities: Tensor, width: int, height: int, tile_size: int) -> _TileLayout:
    """Sort (tile, Gaussian) pairs by tile, then depth, and bucket tiles by list length.

    A Gaussian is listed in every tile that holds a pixel of its footprint box
    where it may reach ``alpha >= 1/255`` (:func:`_row_spans`). Tiles are
    bucketed by list length rounded up to 4 steps per octave (at most 25 %
    padding) and buckets split in chunks of at most ``_CHUNK_ELEMENTS``
    (Gaussian, pixel) pairs.
    """
    device = proj.means2d.device
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    n = proj.means2d.shape[0]
    ty, tx = torch.meshgrid(torch.arange(tiles_y, device=device), torch.arange(tiles_x, device=device), indexing="ij")
    centres = torch.stack([tx, ty], -1).reshape(-1, 2).to(torch.float64) * tile_size + (tile_size - 1) / 2

    visible = torch.nonzero(proj.visible).squeeze(1)
    depth = proj.depths.detach().index_select(0, visible)  # positive, so its bits sort like it (radix sort)
    bits = depth.view(torch.int32 if depth.dtype == torch.float32 else torch.int64)
    visible = visible.index_select(0, torch.sort(bits, stable=True).indices)  # front to back, ties by index
    means2d = proj.means2d.detach().index_select(0, visible).double()
    u0, u1, v0, v1 = footprint_pixels(means2d, proj.radii.index_select(0, visible))
    u0, u1 = u0.clamp(0, width - 1), u1.clamp(0, width - 1)
    ty0, ty1 = v0.clamp(0, height - 1) // tile_size, v1.clamp(0, height - 1) // tile_size
    # rows of tiles: row j of Gaussian i is tile row ty0 + j
    counts = ty1 - ty0 + 1
    row_owner = torch.repeat_interleave(torch.arange(len(visible), device=device), counts)
    row_y = (ty0.index_select(0, row_owner) + torch.arange(len(row_owner), device=device)
             - (torch.cumsum(counts, 0) - counts).index_select(0, row_owner))
    conics = proj.conics.detach().index_select(0, visible).double()
    reach = torch.log(opacities.detach().index_select(0, visible).double() / ALPHA_MIN)
    col0, col1 = _row_spans(means2d, conics, reach, row_owner, row_y, tile_size, height)
    col0 = torch.maximum(col0, u0.index_select(0, row_owner))
    col1 = torch.minimum(col1, u1.index_select(0, row_owner))
    # tiles: pair k of row j is tile column col0 // s + k, pair number start_j + k
    counts = torch.where(col0 <= col1, col1 // tile_size - col0 // tile_size + 1, 0)
    pair_row = torch.repeat_interleave(torch.arange(len(row_owner), device=device), counts)
    offset = row_y * tiles_x + col0 // tile_size - (torch.cumsum(counts, 0) - counts)
    tile = offset.index_select(0, pair_row) + torch.arange(len(pair_row), device=device)
    key_dtype = torch.int16 if tiles_x * tiles_y <= torch.iinfo(torch.int16).max else torch.int32
    order = torch.sort(tile.to(key_dtype), stable=True).indices  # radix sort: by tile, depth order kept
    tile = tile.index_select(0, order)
    pair_gauss = visible.index_select(0, row_owner).index_select(0, pair_row.index_select(0, order))

    per_tile = torch.bincount(tile, minlength=tiles_x * tiles_y)
    starts = torch.cumsum(per_tile, 0) - per_tile
    used = torch.nonzero(per_tile).squeeze(1)
    length = per_tile[used]
    step = torch.clamp(2 ** (torch.floor(torch.log2(length.double())).long() - 2), min=1)
    padded = -(-length // step) * step
    chunks = []
    pixels = tile_size * tile_size
    for k in torch.unique(padded).tolist():
        tiles = used[padded == k]
        slots = torch.arange(k, device=device)
        for tiles_c in torch.split(tiles, max(1, _CHUNK_ELEMENTS // (k * pixels))):
            index = (starts[tiles_c, None] + slots).clamp_max(len(pair_gauss) - 1)
            gauss = pair_gauss.index_select(0, index.reshape(-1)).reshape(index.shape)
            chunks.append(_Chunk(tiles=tiles_c, gauss=torch.where(slots < per_tile[tiles_c, None], gauss, n)))
    return _TileLayout(tile_size, tiles_x, tiles_y, centres, chunks)


def _row_spans(means2d: Tensor, conics: Tensor, reach: Tensor, owner: Tensor, row_y: Tensor, tile_size: int,
               height: int) -> tuple[Tensor, Tensor]:
    """Pixel columns ``[col0, col1]`` where Gaussian ``owner`` may reach ``alpha >= 1/255`` in tile row ``row_y``.

    ``alpha >= 1/255`` needs ``sigma = 1/2 d^T Q d <= L = ln(255 o)``, an ellipse
    ``d^T Q d <= 2L``. Over the strip of the row's pixel centres,
    ``dy in [lo, hi]``, its x-extent is ``-B dy / A -+ w(dy)`` with
    ``w(dy)^2 = (2L - det(Q) dy^2 / A) / A``. The left end is convex in ``dy``
    and smallest at the ellipse's leftmost point ``dy* = -sqrt(2L) S_xy /
    sqrt(S_xx)`` (``S = Q^-1``), so over the strip at ``dy*`` clamped to it;
    the right end likewise at ``-dy*``. ``L`` gets a margin far above
    rounding, so leaving out the other columns changes no pixel. All float64.

    Returns:
        int64 ``col0, col1`` per row; ``col0 > col1`` when the strip misses the ellipse.
    """
    a, b, c = (q.index_select(0, owner) for q in conics.T)
    two_l = 2 * (reach.index_select(0, owner) * (1 + 1e-3) + 1e-2)
    det = a * c - b * b
    half_height = torch.sqrt(two_l * a / det)  # |dy| <= sqrt(2L S_yy), S_yy = A / det
    mx, my = means2d[:, 0].index_select(0, owner), means2d[:, 1].index_select(0, owner)
    lo = torch.maximum(row_y * tile_size - my, -half_height)
    hi = torch.minimum((row_y * tile_size + tile_size - 1).clamp_max(height - 1) - my, half_height)
    dy_left = b * torch.sqrt(two_l / (c * det))  # -sqrt(2L) S_xy / sqrt(S_xx)

    def x_extent(dy: Tensor, side: float) -> Tensor:
        width = torch.sqrt(((two_l - det / a * dy * dy) / a).clamp_min(0))
        return mx - b / a * dy + side * width

    left = x_extent(torch.minimum(torch.maximum(dy_left, lo), hi), -1.0)
    right = x_extent(torch.minimum(torch.maximum(-dy_left, lo), hi), 1.0)
    missed = lo > hi
    return torch.ceil(left).long().masked_fill(missed, 1), torch.floor(right).long().masked_fill(missed, 0)


def _composite_torch(proj: Projection, opacities: Tensor, features: Tensor, width: int, height: int,
                     tile_size: int) -> Tensor:
    """Tile-based compositing with an analytic backward: ``(C + 1, H, W)`` as :func:`_composite_dense`."""
    with torch.no_grad():
        layout = _bin_tiles(proj, opacities, width, height, tile_size)
    coefficients = _exponent_coefficients(proj.means2d, proj.conics, opacities)
    image = _CompositeTiles.apply(coefficients, features, layout)
    return image[:, :height, :width]


def _exponent_coefficients(means2d: Tensor, conics: Tensor, opacities: Tensor) -> Tensor:
    """``(N, 6)`` float64 coefficients ``k`` of ``log alpha_raw = log o - sigma`` in pixel monomials.

    With ``phi(p) = [1, px, py, px^2, px py, py^2]`` and ``mu = mean2d``::

        log o - 1/2 (p - mu)^T Q (p - mu) = k . phi(p)
        k = [log o - 1/2 mu^T Q mu, (Q mu)_x, (Q mu)_y, -A/2, -B, -C/2]

    Float64 because ``k_0`` cancels against the other terms over the image;
    the compositing re-centres ``k`` on each tile before going to float32.
    Differentiable: the compositing returns ``dL/dk`` and autograd does the rest.
    """
    mu = means2d.double()
    a, b, c = conics.double().unbind(-1)
    q_mu_x = a * mu[:, 0] + b * mu[:, 1]
    q_mu_y = b * mu[:, 0] + c * mu[:, 1]
    log_o = torch.log(opacities.double().clamp_min(ALPHA_MIN))  # drawn ones have o >= 1/255; o = 0 stays finite
    k0 = log_o - 0.5 * (mu[:, 0] * q_mu_x + mu[:, 1] * q_mu_y)
    return torch.stack([k0, q_mu_x, q_mu_y, -0.5 * a, -b, -0.5 * c], -1)


def _pixel_basis(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(6, P)`` monomials ``phi(q)`` of the pixel offsets ``q`` from the tile centre, pixels row-major."""
    q = torch.arange(tile_size, dtype=torch.float64, device=device) - (tile_size - 1) / 2
    qy, qx = torch.meshgrid(q, q, indexing="ij")
    qx, qy = qx.reshape(-1), qy.reshape(-1)
    return torch.stack([torch.ones_like(qx), qx, qy, qx * qx, qx * qy, qy * qy]).to(dtype)


def _recentre(k: Tensor, cx: Tensor, cy: Tensor, out: Tensor) -> Tensor:
    """Write into ``out`` ``(6, ...)`` the coefficients of ``k . phi(p)`` in the monomials of ``q = p - c``."""
    k0, kx, ky, kxx, kxy, kyy = k
    out[0] = k0 + cx * (kx + kxx * cx + kxy * cy) + cy * (ky + kyy * cy)
    out[1] = kx + 2 * kxx * cx + kxy * cy
    out[2] = ky + kxy * cx + 2 * kyy * cy
    out[3:] = k[3:]
    return out


def _moments_about_origin(m: Tensor, cx: Tensor, cy: Tensor, out: Tensor) -> Tensor:
    """Write into ``out`` ``(6, ...)`` the moments ``sum u phi(p)`` from ``m = sum u phi(q)``, ``p = c + q``.

    (The transpose of :func:`_recentre`.)
    """
    m0, mx, my, mxx, mxy, myy = m
    out[0] = m0
    out[1] = mx + cx * m0
    out[2] = my + cy * m0
    out[3] = mxx + cx * (2 * mx + cx * m0)
    out[4] = mxy + cx * my + cy * (mx + cx * m0)
    out[5] = myy + cy * (2 * my + cy * m0)
    return out


def _image_to_tiles(image: Tensor, layout: _TileLayout) -> Tensor:
    """``(C, tiles_y * s, tiles_x * s)`` -> ``(tiles, C, P)``."""
    s = layout.tile_size
    ch = image.shape[0]
    tiles = image.reshape(ch, layout.tiles_y, s, layout.tiles_x, s).permute(1, 3, 0, 2, 4)
    return tiles.reshape(layout.tiles_y * layout.tiles_x, ch, s * s)


def _tiles_to_image(tiles: Tensor, layout: _TileLayout) -> Tensor:
    """``(tiles, C, P)`` -> ``(C, tiles_y * s, tiles_x * s)``."""
    s = layout.tile_size
    ch = tiles.shape[1]
    image = tiles.reshape(layout.tiles_y, layout.tiles_x, ch, s, s).permute(2, 0, 3, 1, 4)
    return image.reshape(ch, layout.tiles_y * s, layout.tiles_x * s)


class _Scratch(threading.local):
    """Per-thread CPU memory reused across chunks and calls (other devices: plain allocation).

    Fresh multi-megabyte CPU tensors cost page faults every time (glibc hands
    them back to the OS on free): a third of the run time without this.

    - :meth:`take`: temporaries, one buffer per name, never leaving the
      function that takes them.
    - :meth:`keep`: tensors kept for the backward, in blocks of
      ``_CHUNK_ELEMENTS`` values; a block is reused once the tensor handed out
      from it is gone (with the autograd graph that held it). At most
      ``_KEPT_BLOCKS`` blocks are held; beyond that, plain allocation.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype], Tensor] = {}
        self.blocks: dict[torch.dtype, list[tuple[Tensor, weakref.ref]]] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of ``shape``: a view of the buffer ``name``, valid until ``name`` is taken again."""
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        numel = math.prod(shape)
        buffer = self.buffers.get((name, dtype))
        if buffer is None or buffer.numel() < numel:
            buffer = self.buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
        return buffer[:numel].view(shape)

    def keep(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of ``shape`` that may live on: a view of a block no live tensor uses."""
        numel = math.prod(shape)
        if device.type != "cpu" or numel > _CHUNK_ELEMENTS:
            return torch.empty(shape, dtype=dtype, device=device)
        blocks = self.blocks.setdefault(dtype, [])
        free = [i for i, (block, user) in enumerate(blocks) if user() is None and len(block) >= numel]
        if free:
            index, block = free[0], blocks[free[0]][0]
        elif len(blocks) < _KEPT_BLOCKS:
            index, block = len(blocks), torch.empty(_CHUNK_ELEMENTS, dtype=dtype)
            blocks.append((block, weakref.ref(block)))
        else:
            return torch.empty(shape, dtype=dtype)
        tensor = block[:numel].view(shape)
        blocks[index] = (block, weakref.ref(tensor))
        return tensor


_SCRATCH = _Scratch()


class _CompositeTiles(torch.autograd.Function):
    """Front-to-back compositing per tile with an analytic backward.

    Inputs are the exponent coefficients ``k`` ``(N, 6)`` of
    :func:`_exponent_coefficients` and features ``f`` ``(N, C)``; the output
    ``(C + 1, tiles_y * s, tiles_x * s)`` holds ``sum_i w_i f_i`` and, last,
    ``sum_i w_i`` (alpha: a feature of ones). The work is per chunk:
    :func:`_composite_chunk` and :func:`_chunk_gradients`.
    """

    @staticmethod
    def forward(ctx, coefficients: Tensor, features: Tensor, layout: _TileLayout) -> Tensor:
        n_gauss, channels = features.shape
        # dummy Gaussian N: never drawn (log alpha = -1e30)
        k_table = torch.cat([coefficients.T, coefficients.new_tensor([-1e30, 0, 0, 0, 0, 0])[:, None]], 1)
        feats = torch.cat([features, torch.ones_like(features[:, :1])], 1)
        feats = torch.cat([feats, feats.new_zeros(1, channels + 1)])
        basis = _pixel_basis(layout.tile_size, features.dtype, features.device)
        out = features.new_zeros(layout.tiles_x * layout.tiles_y, channels + 1, basis.shape[1])
        keep = any(ctx.needs_input_grad)
        saved = []
        for chunk in layout.chunks:
            sums, weights, odds = _composite_chunk(chunk, layout.centres, k_table, feats, basis, keep)
            out.index_copy_(0, chunk.tiles, sums)
            saved.append((weights, odds))
        ctx.layout, ctx.saved, ctx.n_gauss = layout, saved, n_gauss
        ctx.save_for_backward(feats)
        return _tiles_to_image(out, layout)

    @staticmethod
    def backward(ctx, grad_image: Tensor):
        layout: _TileLayout = ctx.layout
        (feats,) = ctx.saved_tensors
        basis = _pixel_basis(layout.tile_size, feats.dtype, feats.device)
        grad_tiles = _image_to_tiles(grad_image, layout)
        # rows: dL/dk (6), dL/df (C + 1); column N: the dummy Gaussian
        grads = torch.zeros(6 + feats.shape[1], ctx.n_gauss + 1, dtype=torch.float64, device=feats.device)
        for chunk, (weights, odds) in zip(layout.chunks, ctx.saved):
            values = _chunk_gradients(chunk, layout.centres, feats, basis, weights, odds,
                                      grad_tiles.index_select(0, chunk.tiles))
            grads.index_add_(1, chunk.gauss.reshape(-1), values.view(grads.shape[0], -1))
        grads = grads[:, :-1]
        return grads[:6].T, grads[6:-1].T.to(feats.dtype), None


def _composite_chunk(chunk: _Chunk, centres: Tensor, k_table: Tensor, feats: Tensor, basis: Tensor,
                     keep: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Composite the ``n`` tiles of a chunk, ``K`` depth-sorted Gaussians each, ``P`` pixels per tile.

    On ``(n, K, P)`` tensors: ``x = exp(k' . phi(q))`` with ``k'`` the
    Gaussian's coefficients re-centred on the tile (one matmul),
    ``alpha = min(0.999, x)`` zeroed below 1/255, ``T_{j+1} = cumprod(1 - alpha)``,
    alpha zeroed where ``T_{j+1} <= 1e-4`` (stop before that Gaussian),
    ``w_j = alpha_j T_j``; then ``sum_j w_j f_j`` is a batched matmul.

    Args:
        k_table: ``(6, N + 1)`` float64 coefficients, column N the dummy Gaussian.
        feats: ``(N + 1, C + 1)`` features with the ones channel.
        basis: ``(6, P)`` :func:`_pixel_basis`.
        keep: return ``w`` and ``alpha / (1 - alpha)`` ``(n, K, P)`` for the backward.

    Returns:
        ``(n, C + 1, P)`` sums, and the weights and odds (None unless ``keep``).
    """
    dtype, device = feats.dtype, feats.device
    (n, k), pixels = chunk.gauss.shape, basis.shape[1]
    index = chunk.gauss.reshape(-1)

    def buffer(name: str, kept: bool = False, dtype: torch.dtype = dtype) -> Tensor:
        if kept:
            return _SCRATCH.keep((n, k, pixels), dtype, device)
        return _SCRATCH.take(name, (n, k, pixels), dtype, device)

    rows = _SCRATCH.take("rows", (6, n, k), torch.float64, device)
    for row, table_row in zip(rows.view(6, -1), k_table):
        torch.index_select(table_row, 0, index, out=row)
    centre = centres.index_select(0, chunk.tiles)[:, :, None]
    local = _recentre(rows, centre[:, 0], centre[:, 1], _SCRATCH.take("local", (6, n, k), dtype, device))
    alpha = buffer("alpha")
    torch.mm(local.view(6, -1).T, basis, out=alpha.view(-1, pixels)).exp_()  # o exp(-sigma)
    alpha.clamp_max_(ALPHA_MAX)
    alpha_min = torch.nextafter(torch.tensor(ALPHA_MIN, dtype=dtype), torch.tensor(0.0, dtype=dtype)).item()
    torch.nn.functional.threshold_(alpha, alpha_min, 0.0)  # keeps alpha >= 1/255
    one_minus = torch.sub(1.0, alpha, out=buffer("one_minus", kept=keep))
    after = torch.cumprod(one_minus, 1, out=buffer("after"))  # T_{j+1}, non-increasing in j
    if after[:, -1].amin() <= T_MIN:
        alpha.masked_fill_(torch.le(after, T_MIN, out=buffer("stop", dtype=torch.bool)), 0.0)
    weights = buffer("weights", kept=keep)
    weights[:, 0] = alpha[:, 0]
    torch.mul(alpha[:, 1:], after[:, :-1], out=weights[:, 1:])
    f = feats.index_select(0, index).view(n, k, -1)
    sums = torch.bmm(f.transpose(1, 2), weights)
    if not keep:
        return sums, None, None
    return sums, weights, torch.div(alpha, one_minus, out=one_minus)


def _chunk_gradients(chunk: _Chunk, centres: Tensor, feats: Tensor, basis: Tensor, weights: Tensor, odds: Tensor,
                     grad: Tensor) -> Tensor:
    """Per (tile, slot) gradients ``(6 + C + 1, n, K)`` float64: ``dL/dk`` then ``dL/df``.

    With ``g`` ``(n, C + 1, P)`` the output gradient at a pixel, ``cg_j = f_j . g``
    and ``S_j = sum_{l > j} w_l cg_l``::

        dL/dalpha_j = T_j cg_j - S_j / (1 - alpha_j)

    (the background and ``dL/dalpha`` enter through the ones channel).
    ``u_j = alpha_j dL/dalpha_j = w_j cg_j - alpha_j / (1 - alpha_j) S_j`` is
    ``dL/d log x_j``, 0 where alpha was clamped to 0.999, so
    ``dL/dk = sum_p u phi(p)``: a matmul of ``u`` with the tile's monomials,
    moved to the image origin in float64. ``dL/df_j = sum_p w_j g``.
    """
    dtype, device = feats.dtype, feats.device
    n, k, pixels = weights.shape
    channels = feats.shape[1]
    values = _SCRATCH.take("values", (6 + channels, n, k), torch.float64, device)
    values[6:] = torch.bmm(grad, weights.transpose(1, 2)).transpose(0, 1)  # dL/df
    f = feats.index_select(0, chunk.gauss.reshape(-1)).view(n, k, channels)
    u = torch.bmm(f, grad, out=_SCRATCH.take("u", (n, k, pixels), dtype, device)).mul_(weights)  # w_j cg_j
    backwards = torch.arange(k - 1, -1, -1, device=device)
    suffix = torch.index_select(u, 1, backwards, out=_SCRATCH.take("suffix", (n, k, pixels), dtype, device))
    suffix.cumsum_(1)  # suffix[:, i] = sum_{l >= K-1-i} w_l cg_l
    later = torch.index_select(suffix, 1, backwards[1:], out=_SCRATCH.take("later", (n, k - 1, pixels), dtype, device))
    u[:, :-1].addcmul_(odds[:, :-1], later, value=-1.0)  # - odds_j S_j, j < K-1 (S_{K-1} = 0)
    odds_clamped = torch.tensor(ALPHA_MAX, dtype=dtype) / (1 - torch.tensor(ALPHA_MAX, dtype=dtype))
    u.masked_fill_(torch.ge(odds, odds_clamped, out=_SCRATCH.take("clamped", (n, k, pixels), torch.bool, device)),
                   0.0)
    moments = torch.mm(basis, u.view(-1, pixels).T).view(6, n, k)  # sum_p u phi(q)
    centre = centres.index_select(0, chunk.tiles)[:, :, None]
    _moments_about_origin(moments.double(), centre[:, 0], centre[:, 1], values[:6])
    return values


# --------------------------------------------------------------------------------------------------- gsplat backend


def _gsplat_imports() -> bool:
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background, near, far,
                      eps2d) -> RenderOutput:
    """``gsplat.rasterization`` with K moved to gsplat's pixel frame (centres at +0.5)."""
    from gsplat import rasterization

    to_gsplat = torch.zeros_like(K)
    to_gsplat[0, 2] = to_gsplat[1, 2] = 0.5
    renders, alphas, meta = rasterization(
        means, quats, scales, opacities, colors[None], viewmat[None], (K + to_gsplat)[None], width, height,
        near_plane=near, far_plane=far, eps2d=eps2d, sh_degree=None, packed=False, render_mode="RGB+ED",
        backgrounds=background[None],
    )
    rgb = renders[0, ..., :3].permute(2, 0, 1)
    alpha = alphas[0].permute(2, 0, 1)
    depth = torch.where(alpha >= DEPTH_ALPHA_MIN, renders[0, ..., 3:].permute(2, 0, 1), 0)
    radii = meta["radii"][0].amax(-1).to(torch.int32)
    means2d = _means2d_view(meta["means2d"], radii > 0)
    return RenderOutput(rgb=rgb, depth=depth, alpha=alpha, means2d=means2d, radii=radii)


def _means2d_view(means2d: Tensor, visible: Tensor) -> Tensor:
    """``(N, 2)`` our-convention copy of gsplat's ``(1, N, 2)`` means2d whose ``.grad`` is gsplat's.

    gsplat draws from its own ``(1, N, 2)`` tensor, so a tensor derived from it
    is not on the backward path and ``retain_grad`` would leave its ``.grad``
    None; instead a hook on gsplat's tensor accumulates that tensor's gradient
    into ``.grad`` of the returned one (a shift of the pixel frame leaves the
    gradient unchanged).
    """
    view = torch.where(visible[:, None], means2d[0] - 0.5, 0)
    if means2d.requires_grad:
        view.retain_grad()  # off the backward path, it only lets .grad be read and set without a warning

        def store(grad: Tensor) -> None:
            view.grad = grad[0].clone() if view.grad is None else view.grad + grad[0]

        means2d.register_hook(store)
    return view
