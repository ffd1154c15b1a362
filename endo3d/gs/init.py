"""Gaussians from depth: the initial point cloud of a reconstruction.

Holistic initialisation (EndoGaussian) back-projects the masked depth of the
training frames into world space. A deforming scene does not line up across
time, so like Deform3DGS we anchor the cloud on the first training frame and
add, from the other frames, only the points that frame cannot see: those
that project outside its image or onto pixels it does not know (instrument,
no depth). The union is subsampled at random to the requested count; each
point's colour is its pixel's and its scale the mean distance to its three
nearest neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from endo3d.geometry import project, unproject
from endo3d.geometry.se3 import invert_pose
from endo3d.gs.data import FrameSet


@dataclass
class PointCloud:
    """Points with colours and a neighbour spacing.

    Attributes:
        points: float32 ``(P, 3)`` world mm.
        rgb: float32 ``(P, 3)`` in [0, 1].
        spacing: float32 ``(P,)`` mean distance to the 3 nearest neighbours, mm.
    """

    points: torch.Tensor
    rgb: torch.Tensor
    spacing: torch.Tensor


def frame_points(frames: FrameSet, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World points, colours and pixel positions ``(P, 2)`` of frame ``i``'s valid depth.

    A pixel counts when it is tissue (``valid``) and has depth > 0.
    """
    assert frames.depth is not None
    depth = frames.depth[i, 0]
    ok = frames.valid[i, 0] & (depth > 0)
    v, u = torch.nonzero(ok, as_tuple=True)
    uv = torch.stack([u, v], -1).float()
    rays = unproject(uv, frames.K[i], None, "pinhole")
    cam = rays * (depth[v, u] / rays[:, 2])[:, None]
    c2w = frames.c2w[i]
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    return world, frames.rgb[i, :, v, u].T, uv


def seen_by(frames: FrameSet, i: int, points: torch.Tensor, tolerance_mm: float) -> torch.Tensor:
    """bool ``(P,)``: which world ``points`` frame ``i`` already explains.

    A point is explained when it projects inside frame ``i``'s image onto a
    valid pixel with depth, whatever that depth: a deforming surface moves,
    and only what frame ``i`` could not observe at all is missing from its
    cloud. Points more than ``tolerance_mm`` *in front of* the observed
    surface are not explained (they were hidden behind something else).
    """
    assert frames.depth is not None
    w2c = invert_pose(frames.c2w[i])
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    uv, _ = project(cam, frames.K[i], None, "pinhole")
    u, v = torch.round(torch.nan_to_num(uv, nan=-1.0)).long().unbind(-1)
    inside = (z > 0) & (u >= 0) & (u < frames.width) & (v >= 0) & (v < frames.height)
    out = torch.zeros_like(inside)
    ui, vi = u[inside], v[inside]
    observed = frames.depth[i, 0, vi, ui]
    known = frames.valid[i, 0, vi, ui] & (observed > 0)
    out[inside] = known & ~(z[inside] < observed - tolerance_mm)
    return out


def knn_spacing(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Mean distance (mm) from each point to its ``k`` nearest other points, ``(P,)``."""
    n = points.shape[0]
    if n <= 1:
        return torch.ones(n)
    k = min(k, n - 1)
    out = torch.empty(n)
    for s in range(0, n, chunk):
        d = torch.cdist(points[s:s + chunk], points)
        near = d.topk(k + 1, largest=False).values[:, 1:]  # drop the point itself
        out[s:s + chunk] = near.mean(1)
    return out


def initial_points(frames: FrameSet, count: int, *, generator: torch.Generator) -> PointCloud:
    """The initial cloud of ``count`` points (fewer if the depth has fewer).

    Args:
        frames: the sequence, with depth.
        count: number of points to keep.
        generator: seeds the subsampling.

    Raises:
        ValueError: no training frame has any valid depth pixel.
    """
    train = frames.train
    anchor = train[0]
    points, colours, _ = frame_points(frames, anchor)
    extra_p, extra_c = [points], [colours]
    # a tolerance of a few percent of the scene depth separates "hidden behind" from "moved"
    tolerance = 0.05 * float(frames.depth[anchor][frames.depth[anchor] > 0].median()) if points.numel() else 1.0
    for i in train[1:]:
        p, c, _ = frame_points(frames, i)
        new = ~seen_by(frames, anchor, p, tolerance)
        extra_p.append(p[new])
        extra_c.append(c[new])
    points, colours = torch.cat(extra_p), torch.cat(extra_c)
    if points.shape[0] == 0:
        raise ValueError("no training frame has valid depth on tissue pixels")
    if points.shape[0] > count:
        keep = torch.randperm(points.shape[0], generator=generator)[:count]
        points, colours = points[keep], colours[keep]
    return PointCloud(points=points, rgb=colours, spacing=knn_spacing(points))
