"""FrameRenderer (endo3d.gs.frame_renderer): inference renders, eager on CPU, CUDA-graph replay on GPU."""

from __future__ import annotations

import pytest
import torch

from endo3d.gs.deform import make_field
from endo3d.gs.deform_config import HexPlaneConfig
from endo3d.gs.frame_renderer import FrameRenderer
from endo3d.gs.gaussians import create_splats
from endo3d.gs.model import DeformableGaussians

W, H = 80, 64
K = torch.tensor([[70.0, 0, 39.5], [0, 70.0, 31.5], [0, 0, 1]])


def _scene(device: str = "cpu", n: int = 300, seed: int = 0) -> DeformableGaussians:
    """Gaussians in front of the camera, a HexPlane field with non-zero heads (so deformation shows)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * torch.tensor([40.0, 30, 20]) - torch.tensor([20.0, 15, -40])
    aabb = torch.stack([means.min(0).values - 1, means.max(0).values + 1])
    field = make_field(HexPlaneConfig(), aabb)
    torch.manual_seed(seed)
    for head in field.heads.values():
        torch.nn.init.normal_(head[-1].weight, std=0.05)
    splats = create_splats(means, torch.rand(n, 3, generator=g), torch.full((n, 3), 1.5), opacity=0.6,
                           extra=field.per_gaussian_init(n))
    with torch.no_grad():
        splats["shN"].normal_(0, 0.1, generator=g)
    return DeformableGaussians(splats, field, sh_degree=3).to(device)


def _camera(device: str, angle: float = 0.0) -> torch.Tensor:
    """Looking down +z from x = 5 angle mm."""
    c2w = torch.eye(4)
    c2w[0, 3] = 5 * angle
    return c2w.to(device)


def test_cpu_renders_are_the_models_own() -> None:
    model = _scene()
    render = FrameRenderer(model)
    assert not render.uses_graph
    for t in (0.0, 0.4, torch.tensor(0.9)):
        ours = render(_camera("cpu", 0.3), K, W, H, t)
        ref = model.render(_camera("cpu", 0.3), K, W, H, t)
        assert torch.equal(ours.rgb, ref.rgb) and torch.equal(ours.depth, ref.depth)
        assert not ours.rgb.requires_grad
    still = FrameRenderer(model, deform=False)(_camera("cpu"), K, W, H, 0.9)
    assert torch.equal(still.rgb, model.render(_camera("cpu"), K, W, H, 0.9, deform=False).rgb)
    assert not torch.equal(still.rgb, render(_camera("cpu"), K, W, H, 0.9).rgb)  # the field moves things


def test_a_failed_capture_falls_back_to_eager_rendering_once(monkeypatch, caplog) -> None:
    model = _scene()
    render = FrameRenderer(model)
    calls = []

    def fails(device):
        calls.append(device)
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(FrameRenderer, "uses_graph", property(lambda self: self.graph is not False))
    monkeypatch.setattr(render, "_capture", fails)
    with caplog.at_level("WARNING", logger="endo3d.gs"):
        first = render(_camera("cpu"), K, W, H, 0.5)
        second = render(_camera("cpu"), K, W, H, 0.7)
    assert len(calls) == 1 and render.graph is False
    assert [r.getMessage() for r in caplog.records] == [
        "FrameRenderer: CUDA graph capture failed (operation not permitted when stream is capturing); "
        "rendering eagerly"]
    assert torch.equal(first.rgb, model.render(_camera("cpu"), K, W, H, 0.5).rgb)
    assert torch.equal(second.rgb, model.render(_camera("cpu"), K, W, H, 0.7).rgb)


@pytest.mark.cuda
def test_cuda_graph_matches_eager_and_follows_the_model() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = _scene("cuda")
    Kc = K.cuda()
    graphed, eager = FrameRenderer(model), FrameRenderer(model, graph=False)
    assert graphed.uses_graph and not eager.uses_graph

    def same(t, angle=0.0) -> None:
        a, b = graphed(_camera("cuda", angle), Kc, W, H, t), eager(_camera("cuda", angle), Kc, W, H, t)
        assert torch.allclose(a.rgb, b.rgb, atol=1e-5) and torch.allclose(a.depth, b.depth, atol=1e-4)
        assert a.rgb.abs().sum() > 0

    for t, angle in ((0.0, 0.0), (0.3, 0.5), (torch.tensor(0.8, device="cuda"), -0.4), (1.0, 0.1)):
        same(t, angle)
    first = graphed._captured
    # an in-place update (an optimizer step) is read by the same graph
    with torch.no_grad():
        model.splats["means"].add_(0.5)
        next(iter(model.field.heads.values()))[-1].bias.add_(0.2)
    same(0.6)
    assert graphed._captured is first
    # replaced, resized parameters (densification) and a new SH degree: captured again
    n = model.num_gaussians
    keep = torch.arange(n, device="cuda") % 3 != 0
    for key in list(model.splats.keys()):
        model.splats[key] = torch.nn.Parameter(model.splats[key].detach()[keep])
    same(0.6, 0.2)
    assert graphed._captured is not first
    model.sh_degree = 1
    second = graphed._captured
    same(0.2)
    assert graphed._captured is not second
