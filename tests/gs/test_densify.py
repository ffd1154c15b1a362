"""Adaptive density control: grow, split, prune, reset, with optimiser state kept in step."""

import math

import pytest
import torch

from endo3d.gs.config import DensifyConfig
from endo3d.gs.densify import Densifier


def make(n=4, scale=0.1):
    torch.manual_seed(0)
    splats = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.randn(n, 3)),
        "scales": torch.nn.Parameter(torch.full((n, 3), math.log(scale))),
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)),
        "opacities": torch.nn.Parameter(torch.zeros(n)),
        "sh0": torch.nn.Parameter(torch.rand(n, 1, 3)),
        "deform_weights": torch.nn.Parameter(torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 5)),
    })
    opts = {k: torch.optim.Adam([p], lr=1e-2) for k, p in splats.items()}
    # one step so that every optimiser has moments to keep in step
    sum((p ** 2).sum() for p in splats.values()).backward()
    for o in opts.values():
        o.step()
        o.zero_grad()
    return splats, opts


def fake_grads(densifier, grads_px, width=100, height=80):
    means2d = torch.zeros(len(grads_px), 2, requires_grad=True)
    means2d.grad = torch.stack([torch.as_tensor(grads_px, dtype=torch.float32), torch.zeros(len(grads_px))], -1)
    densifier.accumulate(means2d, torch.ones(len(grads_px), dtype=torch.int32), width, height)


def check_consistent(splats, opts):
    n = splats["means"].shape[0]
    for k, p in splats.items():
        assert p.shape[0] == n
        assert opts[k].param_groups[0]["params"][0] is p
        state = opts[k].state[p]
        assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape


def test_duplicate_small_and_split_large():
    splats, opts = make(n=4, scale=0.1)
    with torch.no_grad():
        splats["scales"][3] = math.log(5.0)  # large: split
    config = DensifyConfig(refine_start=0, refine_stop=1000, refine_every=10, grow_grad2d=1e-3,
                           grow_scale3d=0.01, max_gaussians=100)
    d = Densifier(config, scene_scale=100.0)
    # NDC gradient = pixel gradient * W/2 = 50 * g: 1e-4 px -> 5e-3 > threshold for 0 and 3; 1e-6 -> below
    fake_grads(d, [1e-4, 1e-6, 1e-6, 1e-4])
    old_means = splats["means"].detach().clone()
    old_w = splats["deform_weights"].detach().clone()
    report = d.step(10, splats, opts)
    assert report["duplicated"] == 1 and report["split"] == 1
    check_consistent(splats, opts)
    n = splats["means"].shape[0]
    assert n == 4 + 1 + 1  # +1 copy, split: -1 parent +2 children
    means = splats["means"].detach()
    # survivors first, in order: 0, 1, 2, then the copy of 0, then the two children of 3
    assert torch.equal(means[:3], old_means[:3])
    assert torch.equal(means[3], old_means[0])
    assert torch.allclose(torch.exp(splats["scales"][4:]), torch.full((2, 3), 5.0 / 1.6))
    assert torch.equal(splats["deform_weights"][4:].detach(), old_w[3].repeat(2, 1))
    # children sit within a few sigma of the parent
    assert ((means[4:] - old_means[3]).norm(dim=-1) < 5 * 5.0 * 3 ** 0.5).all()
    # new rows have zero moments, old rows keep theirs
    st = opts["means"].state[splats["means"]]
    assert (st["exp_avg"][3:] == 0).all() and (st["exp_avg"][:3] != 0).any()
    # statistics restart after a refinement
    assert d.grad2d is None


def test_prune_low_opacity_and_cap():
    splats, opts = make(n=6)
    with torch.no_grad():
        splats["opacities"][[1, 4]] = -10.0
    config = DensifyConfig(refine_start=0, refine_stop=1000, refine_every=10, grow_grad2d=1e-3, max_gaussians=7)
    d = Densifier(config, scene_scale=1e6)
    fake_grads(d, [1e-4, 1e-4, 1e-4, 1e-6, 1e-4, 2e-4])
    report = d.step(10, splats, opts)
    # room for 1 of the 4 high-gradient candidates with opacity: the largest gradient (index 5) wins
    assert report["duplicated"] == 1
    assert report["pruned"] == 2
    check_consistent(splats, opts)
    assert splats["means"].shape[0] == 5
    assert (torch.sigmoid(splats["opacities"].detach()) > 0.005).all()


def test_no_refinement_outside_window():
    splats, opts = make()
    d = Densifier(DensifyConfig(refine_start=100, refine_stop=200, refine_every=10, grow_grad2d=0.0,
                                max_gaussians=100), 1.0)
    fake_grads(d, [1.0] * 4)
    assert d.step(50, splats, opts)["duplicated"] == 0
    assert d.step(205, splats, opts)["duplicated"] == 0
    assert splats["means"].shape[0] == 4


def test_opacity_reset_clamps_and_zeroes_moments():
    splats, opts = make()
    with torch.no_grad():
        splats["opacities"].fill_(3.0)
    d = Densifier(DensifyConfig(refine_start=10_000, refine_stop=20_000, reset_every=30, prune_opacity=0.01), 1.0)
    assert d.step(30, splats, opts)["reset"] == 1
    assert torch.allclose(torch.sigmoid(splats["opacities"].detach()), torch.full((4,), 0.02))
    assert (opts["opacities"].state[splats["opacities"]]["exp_avg"] == 0).all()


def test_gradient_statistics_use_ndc_units_and_drawn_only():
    d = Densifier(DensifyConfig(), 1.0)
    means2d = torch.zeros(3, 2, requires_grad=True)
    means2d.grad = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d.accumulate(means2d, torch.tensor([1, 1, 0], dtype=torch.int32), 200, 100)
    assert torch.allclose(d.grad2d, torch.tensor([100.0, 50.0, 0.0]))
    assert torch.equal(d.count, torch.tensor([1.0, 1.0, 0.0]))


@pytest.mark.parametrize("n", [1, 3])
def test_never_prunes_everything(n):
    splats, opts = make(n=n)
    with torch.no_grad():
        splats["opacities"].fill_(-20.0)
    d = Densifier(DensifyConfig(refine_start=0, refine_stop=100, refine_every=10, max_gaussians=10), 1.0)
    fake_grads(d, [0.0] * n)
    d.step(10, splats, opts)
    assert splats["means"].shape[0] == n
