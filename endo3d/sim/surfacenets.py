"""Meshing a signed distance function with Surface Nets.

One vertex per grid cell that the surface crosses, at the mean of the zero
crossings on the cell's edges, then moved onto the surface by Newton steps
``x <- x - phi(x) grad(phi) / |grad(phi)|^2`` of the exact SDF; one quad
(two triangles) per grid edge whose ends differ in sign, joining the four
cells around that edge. The result is watertight where the surface stays
inside the grid, with faces oriented towards positive ``phi`` (outwards).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

SDF = Callable[[np.ndarray], np.ndarray]


def sdf_gradient(sdf: SDF, points: np.ndarray, h: float = 1e-3) -> np.ndarray:
    """Central-difference gradient ``(N, 3)`` of ``sdf`` at ``points`` (N, 3)."""
    grad = np.empty_like(points)
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = h
        grad[:, axis] = (sdf(points + step) - sdf(points - step)) / (2 * h)
    return grad


def surface_nets(grid: np.ndarray, origin: np.ndarray, voxel: float, sdf: SDF | None = None,
                 newton_steps: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Mesh the zero level set of SDF samples.

    Args:
        grid: ``(nx, ny, nz)`` SDF values at ``origin + voxel * (i, j, k)``;
            negative inside.
        origin: ``(3,)`` position of sample (0, 0, 0), mm.
        voxel: grid spacing, mm.
        sdf: the exact SDF, for projecting vertices onto the surface; None
            keeps the mean-crossing positions.
        newton_steps: projection steps.

    Returns:
        ``vertices (V, 3)`` float64 and ``faces (F, 3)`` int32.
    """
    nx, ny, nz = grid.shape
    inside = grid < 0
    cell_shape = (nx - 1, ny - 1, nz - 1)
    cell_ids, crossings, quads = [], [], []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        crossing = inside[tuple(lo)] != inside[tuple(hi)]
        idx = np.argwhere(crossing)  # edge start (i, j, k), edge along `axis`
        g0 = grid[tuple(lo)][crossing]
        g1 = grid[tuple(hi)][crossing]
        frac = g0 / (g0 - g1)
        points = origin + voxel * idx.astype(np.float64)
        points[:, axis] += voxel * frac
        a1, a2 = (axis + 1) % 3, (axis + 2) % 3
        # The four cells around the edge: offsets 0/-1 along the two other axes.
        around = []
        for d1, d2 in ((-1, -1), (0, -1), (0, 0), (-1, 0)):
            cell = idx.copy()
            cell[:, a1] += d1
            cell[:, a2] += d2
            around.append(cell)
        ok = np.ones(len(idx), dtype=bool)
        for cell in around:
            ok &= np.all((cell >= 0) & (cell < cell_shape), axis=1)
        flat = [np.ravel_multi_index(tuple(c[ok].T), cell_shape) for c in around]
        cell_ids.extend(flat)
        crossings.extend([points[ok]] * 4)
        quad = np.stack(flat, axis=1)
        starts_inside = inside[tuple(lo)][crossing][ok]
        quad[~starts_inside] = quad[~starts_inside][:, ::-1]
        quads.append(quad)
    quads = np.concatenate(quads)
    cells, owner = np.unique(np.concatenate(cell_ids), return_inverse=True)
    crossings = np.concatenate(crossings)
    counts = np.bincount(owner, minlength=len(cells))
    vertices = np.stack([np.bincount(owner, weights=crossings[:, c], minlength=len(cells)) for c in range(3)], axis=1)
    vertices /= counts[:, None]
    index = np.searchsorted(cells, quads)
    faces = np.concatenate([index[:, [0, 1, 2]], index[:, [0, 2, 3]]]).astype(np.int32)
    if sdf is not None:
        for _ in range(newton_steps):
            g = sdf_gradient(sdf, vertices)
            vertices = vertices - (sdf(vertices) / np.maximum(np.sum(g * g, axis=1), 1e-12))[:, None] * g
    return vertices, faces
