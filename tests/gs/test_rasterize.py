"""Rasterisation of 3D Gaussians (endo3d.gs.rasterize): torch backend vs dense oracle, closed forms, gsplat parity."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch

import endo3d.gs.rasterize as rasterize_module
from endo3d.core import Endo3dError
from endo3d.gs.project import ALPHA_MIN, project_gaussians
from endo3d.gs.rasterize import ALPHA_MAX, T_MIN, RenderOutput, rasterize

WIDTH, HEIGHT = 64, 48
PARAMS = ("means", "quats", "scales", "opacities", "colors", "background")
# (gradient tolerance relative to the largest gradient of a parameter, image tolerance)
TOLERANCE = {torch.float32: (2e-4, 3e-5), torch.float64: (1e-9, 1e-10)}


pytestmark = pytest.mark.usefixtures("one_thread")


def _camera(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A 64x48 camera (f = 50 px) looking along a tilted axis from (10, -5, -20) mm: ``(viewmat, K)``."""
    K = torch.tensor([[50.0, 0.0, 31.5], [0.0, 52.0, 23.5], [0.0, 0.0, 1.0]], dtype=dtype)
    angle = math.radians(10.0)
    rot = torch.tensor([[math.cos(angle), 0.0, math.sin(angle)], [0.0, 1.0, 0.0],
                        [-math.sin(angle), 0.0, math.cos(angle)]], dtype=dtype)
    c2w = torch.eye(4, dtype=dtype)
    c2w[:3, :3], c2w[:3, 3] = rot, torch.tensor([10.0, -5.0, -20.0], dtype=dtype)
    return torch.linalg.inv(c2w), K


def _to_world(points_cam: torch.Tensor, viewmat: torch.Tensor) -> torch.Tensor:
    c2w = torch.linalg.inv(viewmat)
    return points_cam @ c2w[:3, :3].T + c2w[:3, 3]


def _scene(kind: str, dtype: torch.dtype, seed: int = 0) -> dict:
    """Inputs of :func:`rasterize` (camera included) for a named test scene."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    viewmat, K = _camera(torch.float64)
    if kind == "empty":
        cam = torch.zeros(0, 3, dtype=torch.float64)
    elif kind == "single":
        cam = torch.tensor([[3.0, -2.0, 60.0]], dtype=torch.float64)
    elif kind == "mixed":
        z = 20 + 130 * rand(90)
        xy = (rand(90, 2) * 2 - 1) * 0.8 * z[:, None]  # a third partly or wholly off-screen

        def on_pixel(u: float, v: float, depth: float) -> list[float]:
            return [(u - K[0, 2].item()) / K[0, 0].item() * depth, (v - K[1, 2].item()) / K[1, 1].item() * depth, depth]

        cam = torch.cat([
            torch.cat([xy, z[:, None]], 1),
            torch.tensor([on_pixel(20, 15, 55), on_pixel(40, 30, 75), on_pixel(10, 40, 95), on_pixel(50, 10, 115),
                          on_pixel(30, 20, 80), on_pixel(30, 20, 80)], dtype=torch.float64),
            torch.tensor([[0.0, 0.0, -30.0], [5.0, 5.0, -1.0], [0.0, 0.0, 2.0],  # behind the camera, before near
                          [0.0, 0.0, 350.0], [10.0, 0.0, 500.0],  # beyond far
                          [400.0, 0.0, 50.0], [0.0, -300.0, 60.0],  # off-screen
                          [0.0, 0.0, 90.0], [-10.0, 5.0, 120.0]], dtype=torch.float64),  # huge
            torch.tensor([[5.0, 3.0, 40.0]] * 4, dtype=torch.float64) + torch.tensor([0, 0, 10.0], dtype=torch.float64)
            * torch.arange(4, dtype=torch.float64)[:, None],  # a stack of opaque ones: compositing stops
        ])
    else:
        raise ValueError(kind)
    n = cam.shape[0]
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64) * (0.2 + 5 * rand(n, 1))  # not normalised
    scales = 0.3 + 4 * rand(n, 3)
    opacities = 0.02 + 0.96 * rand(n)
    colors = torch.randn(n, 3, generator=g, dtype=torch.float64)
    if kind == "single":
        scales = torch.tensor([[3.0, 1.5, 0.5]], dtype=torch.float64)
        opacities = torch.tensor([0.8], dtype=torch.float64)
    if kind == "mixed":
        scales[:5, 1:] = 0.05  # needles
        opacities[5:7] = torch.tensor([0.003, 0.0])  # below 1/255: culled (and no NaN gradient from 0)
        opacities[90:94] = 0.9995  # centred on a pixel: alpha clamped to 0.999 there
        scales[90:94] = 3.0
        # 94, 95: the same mean, so the same depth: ties go by index
        scales[103:105] = 35.0  # huge
        opacities[105:109] = 0.995
        scales[105:109] = torch.tensor([4.0, 4.0, 0.5], dtype=torch.float64)
    scene = dict(means=_to_world(cam, viewmat), quats=quats, scales=scales, opacities=opacities, colors=colors,
                 viewmat=viewmat, K=K, background=torch.tensor([0.2, -0.1, 0.5], dtype=torch.float64))
    return {k: v.to(dtype) for k, v in scene.items()}


def _render(scene: dict, backend: str, cotangent_seed: int = 1, **kwargs) -> tuple[RenderOutput, dict]:
    """Render with gradients on, backpropagate a fixed random loss; return the output and all input gradients."""
    leaves = {k: scene[k].clone().requires_grad_() for k in PARAMS}
    out = rasterize(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["colors"],
                    scene["viewmat"], scene["K"], WIDTH, HEIGHT, background=leaves["background"], backend=backend,
                    **kwargs)
    g = torch.Generator().manual_seed(cotangent_seed)
    dtype = scene["means"].dtype
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=dtype).to(o.device) * w).sum()
               for o, w in ((out.rgb, 1.0), (out.depth, 0.01), (out.alpha, 1.0)))
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["means2d"] = out.means2d.grad
    return out, grads


# ------------------------------------------------------------------------------------------- boundary-aware comparison


class Band(NamedTuple):
    """Where two correct float32 rasterisers may disagree (:func:`boundary_band`)."""

    jumps: torch.Tensor  # (H, W) pixels where a skip / clamp / stop decision is about to flip
    swaps: torch.Tensor  # (H, W) pixels drawn by two Gaussians at nearly (not exactly) the same depth
    affected: torch.Tensor  # (N,) Gaussians drawn at any of these pixels


def boundary_band(scene: dict, rel: float = 3e-5, **kwargs) -> Band:
    """Pixels where a discrete decision of the rasteriser is within ``rel`` of flipping, and who is affected.

    Decisions: a Gaussian is skipped at a pixel when ``o exp(-sigma) < 1/255``;
    alpha is clamped at 0.999; compositing stops when ``T`` would reach 1e-4;
    Gaussians are ordered by depth. Two correct float32 implementations may
    decide differently there. A flipped skip or stop changes the pixel by a
    jump (an alpha of ~1/255, a transmittance of ~1e-4), a swapped order by
    anything; either changes the gradients of the Gaussians drawn at the
    pixel. Evaluated in float64, every Gaussian against every pixel.
    """
    f64 = {k: v.detach().double().cpu() for k, v in scene.items()}
    proj = project_gaussians(f64["means"], f64["quats"], f64["scales"], f64["opacities"], f64["viewmat"], f64["K"],
                             WIDTH, HEIGHT, near=kwargs.get("near", 0.01), far=kwargs.get("far", 1e10), eps2d=0.3)
    order = torch.argsort(torch.where(proj.visible, proj.depths, math.inf), stable=True)
    u = torch.arange(WIDTH, dtype=torch.float64)
    v = torch.arange(HEIGHT, dtype=torch.float64)[:, None]
    dx = proj.means2d[order, 0, None, None] - u
    dy = proj.means2d[order, 1, None, None] - v
    a, b, c = (proj.conics[order, i, None, None] for i in range(3))
    raw = f64["opacities"][order, None, None] * torch.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
    raw = torch.where(proj.visible[order, None, None], raw, 0)
    alpha = torch.where(raw >= ALPHA_MIN, raw.clamp_max(ALPHA_MAX), 0)
    after = torch.cumprod(1 - alpha, 0)
    near = ((raw / ALPHA_MIN - 1).abs() < rel) | ((raw / ALPHA_MAX - 1).abs() < rel)
    near |= ((after / T_MIN - 1).abs() < rel) & (alpha > 0)
    drawn = raw >= ALPHA_MIN * (1 - rel)
    depth = proj.depths[order]
    gap = depth[1:] - depth[:-1]
    tie = (gap > 0) & (gap <= rel * depth[1:].abs())  # equal depths are equal anywhere: ties go by index
    jumps, swaps = near.any(0), (tie[:, None, None] & drawn[1:] & drawn[:-1]).any(0)
    affected = torch.zeros(len(order), dtype=torch.bool)
    affected[order] = (drawn & (jumps | swaps)).flatten(1).any(1)
    return Band(jumps, swaps, affected)


def assert_close_with_boundary_band(actual: torch.Tensor, expected: torch.Tensor, band: Band, *, atol: float,
                                    rtol: float, jump: float, max_band_fraction: float = 0.02) -> None:
    """``(C, H, W)`` images agree to ``atol, rtol`` off the band, by ``jump`` at jumps; swaps are not compared."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    in_band = band.jumps | band.swaps
    assert in_band.float().mean() <= max_band_fraction, f"{int(in_band.sum())} band pixels"
    off = ~in_band.expand_as(actual)
    torch.testing.assert_close(actual[off], expected[off], atol=atol, rtol=rtol)
    at_jumps = (band.jumps & ~band.swaps).expand_as(actual)
    assert ((actual - expected)[at_jumps].abs() <= jump).all()


def assert_grads_close(actual: dict, expected: dict, affected: torch.Tensor, rel: float,
                       max_affected_fraction: float) -> None:
    """Per-Gaussian gradients agree to ``rel`` x the largest one, except for Gaussians drawn at band pixels."""
    assert not affected.numel() or affected.float().mean() <= max_affected_fraction
    for name in expected:
        e, a = expected[name].detach().cpu().double(), actual[name].detach().cpu().double()
        scale = e.abs().max().item() if e.numel() else 0.0
        if name == "background":
            torch.testing.assert_close(a, e, atol=rel * scale + 1e-12, rtol=rel, msg=name)
            continue
        keep = ~affected
        torch.testing.assert_close(a[keep], e[keep], atol=rel * scale + 1e-12, rtol=rel, msg=name)


# ----------------------------------------------------------------------------------------------------- torch vs dense


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["empty", "single", "mixed"])
def test_torch_matches_dense(kind: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    scene = _scene(kind, dtype)
    kwargs = dict(near=5.0, far=300.0) if kind == "mixed" else {}
    dense, dense_grads = _render(scene, "dense", **kwargs)
    band = boundary_band(scene, **kwargs)
    grad_rel, image_tol = TOLERANCE[dtype]
    # tile sizes, and chunks of at most 300 (Gaussian, pixel) pairs
    for tile_size, chunk in ((2, None), (4, None), (8, None), (16, None), (4, 300)):
        monkeypatch.setattr(rasterize_module, "TILE_SIZE", tile_size)
        if chunk:
            monkeypatch.setattr(rasterize_module, "_CHUNK_ELEMENTS", chunk)
        out, grads = _render(scene, "torch", **kwargs)
        assert torch.equal(out.radii, dense.radii)
        torch.testing.assert_close(out.means2d, dense.means2d, atol=image_tol, rtol=image_tol)
        jump = 2 * ALPHA_MIN * torch.cat([scene["colors"].flatten(), scene["background"]]).abs().max().item()
        assert_close_with_boundary_band(out.rgb, dense.rgb, band, atol=image_tol, rtol=image_tol, jump=jump)
        assert_close_with_boundary_band(out.alpha, dense.alpha, band, atol=image_tol, rtol=image_tol, jump=jump)
        assert_close_with_boundary_band(out.depth * out.alpha, dense.depth * dense.alpha, band, atol=image_tol * 300,
                                        rtol=image_tol, jump=jump * 300)
        assert_grads_close(grads, dense_grads, band.affected, grad_rel, max_affected_fraction=0.05)
    if kind == "mixed":  # the scene exercises what it is meant to
        drawn = dense.radii > 0
        assert drawn[90:96].all() and drawn[105:109].all() and not drawn[[5, 6, 96, 97, 98, 99, 100, 101, 102]].any()
        assert dense.radii.max() > 40


def test_gradcheck_dense_and_torch() -> None:
    # Large, soft Gaussians over a tiny image: no pixel near a discrete decision, so finite differences hold.
    viewmat, K = _camera(torch.float64)
    K = K * torch.tensor([[0.25], [0.25], [1.0]], dtype=torch.float64)  # 16 x 12 -> small image
    cam = torch.tensor([[0.0, 0.0, 40.0], [4.0, -2.0, 55.0], [-3.0, 2.0, 70.0]], dtype=torch.float64)
    inputs = (_to_world(cam, viewmat), torch.tensor([[1.0, 0.2, -0.1, 0.3], [0.5, 0.5, 0.1, 0.0], [2.0, 0, 0, 0.4]],
                                                    dtype=torch.float64),
              torch.tensor([[25.0, 18.0, 5.0], [30.0, 20.0, 8.0], [40.0, 35.0, 10.0]], dtype=torch.float64),
              torch.tensor([0.6, 0.5, 0.7], dtype=torch.float64),
              torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, -0.4], [0.3, 0.3, 1.2]], dtype=torch.float64),
              torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    inputs = tuple(t.requires_grad_() for t in inputs)
    for backend in ("dense", "torch"):
        def images(means, quats, scales, opacities, colors, background, backend=backend):
            out = rasterize(means, quats, scales, opacities, colors, viewmat, K, 16, 12, background=background,
                            backend=backend)
            assert (out.alpha > 0.3).all() and (out.alpha < 0.99).all()
            return out.rgb, out.depth, out.alpha

        assert torch.autograd.gradcheck(images, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


# ------------------------------------------------------------------------------------------------------ closed forms


@pytest.mark.parametrize("backend", ["dense", "torch"])
def test_isotropic_gaussian_closed_form(backend: str) -> None:
    # An isotropic Gaussian (std s mm) on the optical axis at depth z: J = diag(f / z, f / z) at the centre, so
    # cov2d = ((f s / z)^2 + eps2d) I and alpha at pixel offset r is o exp(-r^2 / (2 ((f s / z)^2 + eps2d))).
    f, s, z, o, eps2d = 40.0, 0.9, 30.0, 0.7, 0.3
    width, height = 33, 25
    K = torch.tensor([[f, 0.0, 16.0], [0.0, f, 12.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    color = torch.tensor([[0.9, 0.5, 0.1]], dtype=torch.float64)
    background = torch.tensor([0.0, 0.2, 1.0], dtype=torch.float64)
    f64 = dict(dtype=torch.float64)
    out = rasterize(torch.tensor([[0.0, 0.0, z]], **f64), torch.tensor([[3.0, 0, 0, 0]], **f64),
                    torch.full((1, 3), s, **f64), torch.tensor([o], **f64), color, torch.eye(4, **f64), K, width,
                    height, background=background, backend=backend)
    var = (f * s / z) ** 2 + eps2d
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    expected = o * torch.exp(-((u - 16) ** 2 + (v - 12) ** 2) / (2 * var))
    radius = math.ceil(math.sqrt(2 * math.log(255 * o)) * math.sqrt(var))
    expected = torch.where((expected >= 1 / 255) & ((u - 16).abs() <= radius) & ((v - 12).abs() <= radius), expected, 0)
    torch.testing.assert_close(out.alpha[0], expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.rgb, expected * color[0, :, None, None] + (1 - expected) * background[:, None, None],
                               atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.depth[0], torch.where(expected > 0, z, 0.0).double(), atol=1e-9, rtol=1e-12)
    assert out.radii.tolist() == [radius]
    torch.testing.assert_close(out.means2d, torch.tensor([[16.0, 12.0]], dtype=torch.float64))


def _on_axis(depths: list[float], opacity: float, backend: str, order: list[int]) -> RenderOutput:
    """Wide Gaussians on the optical axis at ``depths``, coloured red, blue, green; 31 x 21 image, centre (15, 10)."""
    n = len(depths)
    K = torch.tensor([[40.0, 0.0, 15.0], [0.0, 40.0, 10.0], [0.0, 0.0, 1.0]])
    means = torch.tensor([[0.0, 0.0, z] for z in depths])[order]
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])[:n][order]
    return rasterize(means, torch.tensor([[1.0, 0, 0, 0]] * n), torch.tensor([[10.0, 10.0, 1.0]] * n),
                     torch.full((n,), opacity), colors, torch.eye(4), K, 31, 21, backend=backend)


@pytest.mark.parametrize("backend", ["dense", "torch"])
def test_nearer_gaussian_wins_whatever_the_order(backend: str) -> None:
    # Red at 50 mm, blue at 80 mm, alpha 0.98 at the centre: weights 0.98 and 0.02 * 0.98.
    images = []
    for order in ([0, 1], [1, 0]):
        out = _on_axis([50.0, 80.0], 0.98, backend, order)
        images.append(out.rgb)
        torch.testing.assert_close(out.rgb[:, 10, 15], torch.tensor([0.98, 0.0, 0.0196]), atol=1e-6, rtol=0)
        torch.testing.assert_close(out.depth[0, 10, 15], torch.tensor((0.98 * 50 + 0.0196 * 80) / 0.9996))
    assert torch.equal(images[0], images[1])


@pytest.mark.parametrize("backend", ["dense", "torch"])
def test_compositing_stops_before_transmittance_reaches_limit(backend: str) -> None:
    # alpha 0.995 at the centre: T = 0.005 after the first, 2.5e-5 <= 1e-4 after a second, which is not drawn.
    out = _on_axis([50.0, 60.0, 70.0], 0.995, backend, [2, 0, 1])
    torch.testing.assert_close(out.alpha[0, 10, 15], torch.tensor(0.995))
    torch.testing.assert_close(out.rgb[:, 10, 15], torch.tensor([0.995, 0.0, 0.0]))
    torch.testing.assert_close(out.depth[0, 10, 15], torch.tensor(50.0))
    assert out.alpha[0, 10, 19] > 0.995  # 4 px off-centre all three fit under the limit


def test_saved_tensors_are_not_shared_between_live_graphs() -> None:
    # Two renders before backward, a retained graph used again after a third render.
    first, second = _scene("mixed", torch.float32, seed=0), _scene("mixed", torch.float32, seed=1)
    _, first_grads = _render(first, "torch")
    _, second_grads = _render(second, "torch")
    leaves = [{k: scene[k].clone().requires_grad_() for k in PARAMS} for scene in (first, second)]
    outs = [rasterize(*[p[k] for k in PARAMS[:5]], scene["viewmat"], scene["K"], WIDTH, HEIGHT,
                      background=p["background"], backend="torch") for p, scene in zip(leaves, (first, second))]
    g = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(o.shape, generator=g) * w for o, w in ((outs[0].rgb, 1.0), (outs[0].depth, 0.01),
                                                                      (outs[0].alpha, 1.0))]
    losses = [sum((o * c).sum() for o, c in zip((out.rgb, out.depth, out.alpha), cotangents)) for out in outs]
    losses[0].backward(retain_graph=True)
    losses[1].backward()
    _render(second, "torch")  # may reuse what the second graph kept, never what the first still holds
    losses[0].backward()
    for p, expected, times in zip(leaves, (first_grads, second_grads), (2, 1)):
        for name in PARAMS:
            torch.testing.assert_close(p[name].grad, times * expected[name], msg=name)


def test_results_do_not_depend_on_grad_mode() -> None:
    scene = _scene("mixed", torch.float32)
    args = [scene[k] for k in PARAMS[:5]] + [scene["viewmat"], scene["K"], WIDTH, HEIGHT]
    with torch.no_grad():
        plain = rasterize(*args, background=scene["background"], backend="torch")
    tracked, _ = _render(scene, "torch")
    for name in ("rgb", "depth", "alpha", "means2d", "radii"):
        assert torch.equal(getattr(plain, name), getattr(tracked, name).detach()), name


# -------------------------------------------------------------------------------------------------- interface, errors


def test_output_layout_and_auto_backend() -> None:
    scene = _scene("mixed", torch.float32)
    out = rasterize(*[scene[k] for k in PARAMS[:5]], scene["viewmat"], scene["K"], WIDTH, HEIGHT)
    n = scene["means"].shape[0]
    assert out.rgb.shape == (3, HEIGHT, WIDTH) and out.depth.shape == out.alpha.shape == (1, HEIGHT, WIDTH)
    assert out.means2d.shape == (n, 2) and out.radii.shape == (n,) and out.radii.dtype == torch.int32
    assert ((out.depth == 0) == (out.alpha < 1e-6)).all()
    assert torch.equal(out.rgb, rasterize(*[scene[k] for k in PARAMS[:5]], scene["viewmat"], scene["K"], WIDTH,
                                          HEIGHT, backend="torch").rgb)


def test_bad_inputs_raise() -> None:
    scene = _scene("single", torch.float32)
    good = [scene[k] for k in PARAMS[:5]] + [scene["viewmat"], scene["K"], WIDTH, HEIGHT]
    bad_args = {0: scene["means"][:, :2], 1: torch.zeros(2, 4), 3: scene["opacities"][:, None], 6: torch.eye(4),
                2: scene["scales"].double()}
    for position, value in bad_args.items():
        args = list(good)
        args[position] = value
        with pytest.raises(Endo3dError):
            rasterize(*args)
    with pytest.raises(Endo3dError):
        rasterize(*good, background=torch.zeros(4))
    with pytest.raises(Endo3dError):
        rasterize(*good[:-2], 0, HEIGHT)
    with pytest.raises(Endo3dError):
        rasterize(*good, backend="cuda")
    with pytest.raises(Endo3dError, match="CUDA"):
        rasterize(*good, backend="gsplat")


def test_gsplat_means2d_gradient_reaches_returned_tensor() -> None:
    # gsplat draws from its own (1, N, 2) means2d; the (N, 2) tensor we return must still get its gradient.
    source = torch.randn(1, 4, 2, requires_grad=True)
    gsplat_means2d = source * 2  # stands for gsplat's non-leaf meta["means2d"]
    ours = rasterize_module._means2d_view(gsplat_means2d, torch.tensor([True, True, False, True]))
    for _ in range(2):  # accumulates like retain_grad
        (gsplat_means2d**2).sum().backward(retain_graph=True)
    torch.testing.assert_close(ours.grad, 2 * 2 * gsplat_means2d[0].detach())
    torch.testing.assert_close(ours.detach()[[0, 1, 3]], gsplat_means2d[0, [0, 1, 3]].detach() - 0.5)
    assert (ours.detach()[2] == 0).all()


# ------------------------------------------------------------------------------------------------------------- gsplat


def _gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _surface_scene(n: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """Small opaque splats on a wavy surface filling the view, as a reconstruction has them."""
    g = torch.Generator().manual_seed(seed)
    viewmat, K = _camera(torch.float64)
    side = math.ceil(math.sqrt(n))
    uv = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)[:n]
    uv = (uv + torch.rand(n, 2, generator=g)) / side * torch.tensor([WIDTH + 6.0, HEIGHT + 6.0]) - 3.5
    z = 80 + 20 * torch.sin(uv[:, 0] / 9) * torch.cos(uv[:, 1] / 7)
    cam = torch.stack([(uv[:, 0] - K[0, 2]) / K[0, 0] * z, (uv[:, 1] - K[1, 2]) / K[1, 1] * z, z], -1).double()
    spacing = z / K[0, 0] * math.sqrt(WIDTH * HEIGHT / n)
    scene = dict(means=_to_world(cam, viewmat), quats=torch.randn(n, 4, generator=g, dtype=torch.float64),
                 scales=torch.stack([0.8 * spacing, 0.8 * spacing, 0.1 * spacing], -1).double(),
                 opacities=0.5 + 0.499 * torch.rand(n, generator=g, dtype=torch.float64),
                 colors=torch.rand(n, 3, generator=g, dtype=torch.float64), viewmat=viewmat, K=K,
                 background=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    return {k: v.to(dtype) for k, v in scene.items()}


@pytest.mark.cuda
@pytest.mark.skipif(not _gsplat_available(), reason="needs a CUDA GPU and the gsplat package")
@pytest.mark.parametrize("kind", ["surface", "mixed"])
def test_gsplat_matches_torch_backend(kind: str) -> None:
    scene = _surface_scene(3000, torch.float32) if kind == "surface" else _scene("mixed", torch.float32)
    kwargs = dict(near=5.0, far=300.0) if kind == "mixed" else {}
    band = boundary_band(scene, **kwargs)
    cuda = {k: v.cuda() for k, v in scene.items()}
    ours, our_grads = _render(cuda, "torch", **kwargs)
    theirs, their_grads = _render(cuda, "gsplat", **kwargs)
    drawn = (ours.radii > 0).cpu()
    # radii: ceil() of the same float32 numbers computed in another order can differ by one pixel
    radius_diff = (ours.radii - theirs.radii).abs().cpu()
    assert torch.equal(drawn, (theirs.radii > 0).cpu()) and radius_diff.max() <= 1
    assert radius_diff.float().mean() < 0.01
    torch.testing.assert_close(theirs.means2d[drawn], ours.means2d[drawn], atol=1e-3, rtol=1e-5)
    scale = max(scene["colors"].abs().max().item(), scene["background"].abs().max().item())
    jump = 2 * ALPHA_MIN * scale
    # The dense surface (3000 splats over 60-100 mm) has near-equal depths (within the band's 3e-5) under ~11 %
    # of its pixels, touching ~38 % of the splats: those are excluded; the rest must agree tightly.
    band_fraction, affected_fraction = (0.15, 0.45) if kind == "surface" else (0.02, 0.1)
    assert_close_with_boundary_band(theirs.rgb, ours.rgb, band, atol=1e-4, rtol=1e-4, jump=jump,
                                    max_band_fraction=band_fraction)
    assert_close_with_boundary_band(theirs.alpha, ours.alpha, band, atol=1e-4, rtol=1e-4, jump=2 * ALPHA_MIN,
                                    max_band_fraction=band_fraction)
    assert_close_with_boundary_band(theirs.depth * theirs.alpha, ours.depth * ours.alpha, band, atol=1e-2,
                                    rtol=1e-4, jump=2 * ALPHA_MIN * 300, max_band_fraction=band_fraction)
    grads = {k: v for k, v in their_grads.items() if k != "background"}
    reference = {k: v for k, v in our_grads.items() if k != "background"}
    for name in reference:  # culled Gaussians: no gradient in either
        assert (grads[name][~drawn.to(grads[name].device)] == 0).all(), name
    assert_grads_close(grads, reference, band.affected, rel=2e-3, max_affected_fraction=affected_fraction)
    # d/d background = sum over pixels of T_final g: each band pixel may add ~|g| (|g| < 6 for these cotangents)
    torch.testing.assert_close(their_grads["background"], our_grads["background"], rtol=1e-3,
                               atol=1e-3 * our_grads["background"].abs().max().item()
                               + 6 * int((band.jumps | band.swaps).sum()))
