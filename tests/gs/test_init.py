"""Initial Gaussians from depth: points on the true surface, gaps filled from other frames."""

import torch

from endo3d.gs.data import load_frames
from endo3d.gs.init import frame_points, initial_points, knn_spacing, seen_by
from endo3d.io import is_test_frame


def test_split_follows_the_anchor_protocol(tissue):
    frames = load_frames(tissue)
    assert frames.test == [1, 9]
    assert all(not is_test_frame(int(frames.index[i])) for i in frames.train)
    assert sorted(frames.train + frames.test) == list(range(len(frames)))
    assert float(frames.t[0]) == 0.0 and float(frames.t[-1]) == 1.0


def test_frame_points_reproject_onto_their_pixels(tissue):
    frames = load_frames(tissue)
    points, rgb, uv = frame_points(frames, 0)
    w2c = torch.linalg.inv(frames.c2w[0])
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    K = frames.K[0]
    u = K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2]
    v = K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]
    assert torch.allclose(torch.stack([u, v], -1), uv, atol=1e-2)
    assert torch.equal(rgb, frames.rgb[0, :, uv[:, 1].long(), uv[:, 0].long()].T)
    # only tissue pixels with depth
    assert len(points) == int((frames.valid[0] & (frames.depth[0] > 0)).sum())


def test_seen_by_explains_the_frames_own_points_and_not_hidden_ones(tissue):
    frames = load_frames(tissue)
    points, _, _ = frame_points(frames, 0)
    assert bool(seen_by(frames, 0, points, 1.0).all())
    # points pulled 30 mm towards the camera are in front of the observed surface: not explained
    centre = frames.c2w[0, :3, 3]
    towards = points + 30 * torch.nn.functional.normalize(centre - points, dim=-1)
    assert not bool(seen_by(frames, 0, towards, 1.0).any())


def test_initial_points_count_and_spacing(tissue):
    frames = load_frames(tissue)
    cloud = initial_points(frames, 2000, generator=torch.Generator().manual_seed(0))
    assert cloud.points.shape == (2000, 3) and cloud.rgb.shape == (2000, 3)
    assert (cloud.spacing > 0).all()
    # the tool hides tissue in frame 0 that later frames reveal: the union has more than frame 0 alone
    full = initial_points(frames, 10**9, generator=torch.Generator().manual_seed(0))
    assert len(full.points) > len(frame_points(frames, frames.train[0])[0])


def test_knn_spacing_on_a_grid():
    g = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij"), -1).reshape(-1, 2)
    points = torch.cat([g * 2.0, torch.zeros(25, 1)], 1)
    s = knn_spacing(points, k=3, chunk=7)
    assert torch.allclose(s[12], torch.tensor(2.0))  # interior point: 4 neighbours at 2 mm
