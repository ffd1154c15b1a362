"""Deformation fields (endo3d.gs.deform): HexPlane (EndoGaussian) and temporal bases (Deform3DGS)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from endo3d.gs.deform import (
    PLANE_NAMES,
    BasisField,
    Deltas,
    HexPlaneField,
    apply_deltas,
    basis_functions,
    bilinear_lookup,
    make_field,
)
from endo3d.gs.deform_config import BasisConfig, HexPlaneConfig
from endo3d.gs.gaussians import create_splats

F64 = torch.float64
AABB = torch.tensor([[-5.0, -4.0, 20.0], [5.0, 4.0, 30.0]])
#: A small HexPlane so that tests run in milliseconds.
SMALL = HexPlaneConfig(features=4, resolution=6, time_resolution=5, scales=(1, 2), width=16,
                       deform_opacities=True)
#: Deform3DGS's initial basis width (``init_param``); the repo's default, 0, is one frame spacing of a run's clip.
ANCHOR_WIDTH = 0.01
ANCHOR_BASIS = BasisConfig(init_width=ANCHOR_WIDTH)


pytestmark = pytest.mark.usefixtures("one_thread")


def _splats(field, n: int = 40, seed: int = 0) -> torch.nn.ParameterDict:
    g = torch.Generator().manual_seed(seed)
    means = AABB[0] + torch.rand(n, 3, generator=g) * (AABB[1] - AABB[0])
    splats = create_splats(means, torch.rand(n, 3, generator=g), torch.full((n,), 0.3), sh_degree=1,
                           extra=field.per_gaussian_init(n))
    with torch.no_grad():
        splats["quats"].copy_(torch.randn(n, 4, generator=g))
        splats["scales"].add_(torch.randn(n, 3, generator=g) * 0.1)
    return splats


def _fields() -> list:
    torch.manual_seed(0)
    return [make_field(SMALL, AABB), make_field(BasisConfig(init_width=ANCHOR_WIDTH, deform_opacities=True), AABB)]


@pytest.mark.parametrize("index", [0, 1], ids=["hexplane", "basis"])
def test_fresh_field_is_identity(index: int) -> None:
    field = _fields()[index]
    splats = _splats(field)
    for t in (0.0, 0.37, torch.tensor(1.0)):
        deltas = field(splats, t)
        for key in ("means", "scales", "quats", "opacities"):
            assert torch.equal(getattr(deltas, key), torch.zeros_like(splats[key])), key
        deformed = apply_deltas(splats, deltas)
        for key in ("means", "scales", "opacities"):
            assert torch.equal(deformed[key], splats[key])
        assert torch.allclose(deformed["quats"], F.normalize(splats["quats"], dim=-1))


def test_make_field_and_interface() -> None:
    hex_field, basis = _fields()
    assert isinstance(hex_field, HexPlaneField) and isinstance(basis, BasisField)
    assert hex_field.per_gaussian_init(5) == {}
    init = basis.per_gaussian_init(5)
    assert sorted(init) == ["deform_centres", "deform_weights", "deform_widths"]
    assert all(v.shape == (5, 11, 17) for v in init.values())
    assert not init["deform_weights"].any()
    assert torch.allclose(init["deform_centres"][3, 7], torch.linspace(0, 1, 17))
    assert torch.all(init["deform_widths"] == 0.01)
    assert list(basis.parameters()) == [] and basis.param_groups(1e-3, 1e-4) == []
    assert float(basis.regularization()) == 0.0
    groups = hex_field.param_groups(1e-3, 1e-4)
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    assert sum(len(g["params"]) for g in groups) == len(list(hex_field.parameters()))
    with pytest.raises(ValueError):
        make_field(SMALL, torch.tensor([[0.0, 0, 0], [1, 0, 1]]))  # empty along y
    with pytest.raises(ValueError):
        make_field(dataclasses.replace(SMALL, time_resolution=1), AABB)
    with pytest.raises(ValueError):
        make_field(BasisConfig(num_basis=0, init_width=ANCHOR_WIDTH), AABB)
    with pytest.raises(ValueError, match="resolved"):
        make_field(BasisConfig(), AABB)  # width 0 = one frame spacing: needs the clip (resolve_field)


def test_presets() -> None:
    eg = HexPlaneConfig.endogaussian()
    assert (eg.features, eg.resolution, eg.time_resolution, eg.scales, eg.width) == (64, 64, 100, (1, 2, 4, 8), 32)
    assert eg.features * len(eg.scales) == 256  # EndoGaussian's trunk: Linear(256 -> 32)
    assert eg.problems() == [] and HexPlaneConfig().problems() == [] and BasisConfig().problems() == []
    field = make_field(HexPlaneConfig(), AABB)
    assert field.trunk[0].in_features == 16 and field.trunk[0].out_features == 32
    # (time, x, features) at scale 2: 64 time samples by 64 spatial ones; (y, x, features) at scale 1
    assert field.plane(1, "xt").shape == (64, 64, 8) and field.plane(0, "xy").shape == (32, 32, 8)


def test_shapes_and_disabled_heads() -> None:
    hex_field, basis = _fields()
    splats = _splats(basis, n=9)
    for field in (hex_field, basis):
        d = field(splats, 0.5)
        assert d.means.shape == (9, 3) and d.scales.shape == (9, 3)
        assert d.quats.shape == (9, 4) and d.opacities.shape == (9,)
        # per-Gaussian times
        d = field(splats, torch.linspace(0, 1, 9))
        assert d.means.shape == (9, 3)
    only_means = make_field(dataclasses.replace(SMALL, deform_scales=False, deform_quats=False,
                                                deform_opacities=False), AABB)
    d = only_means(splats, 0.2)
    assert d.means.shape == (9, 3) and d.scales is None and d.quats is None and d.opacities is None
    assert BasisField(ANCHOR_BASIS)(_splats(BasisField(ANCHOR_BASIS), n=3), 0.1).opacities is None
    empty = hex_field({"means": torch.zeros(0, 3)}, 0.5)
    assert empty.means.shape == (0, 3)


def _one_adam_step(field, splats, loss_fn) -> None:
    params = list(field.parameters()) + [splats[k] for k in splats]
    opt = torch.optim.Adam(params, lr=1e-2)
    loss_fn().backward()
    opt.step()
    opt.zero_grad()
    loss_fn().backward()


def test_gradients_reach_hexplane_after_one_step() -> None:
    field = _fields()[0]
    splats = _splats(field)

    def loss():
        d = field(splats, 0.3)
        return sum((getattr(d, k) - 0.1).square().sum() for k in ("means", "scales", "quats", "opacities"))

    _one_adam_step(field, splats, loss)
    for name, p in field.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert splats["means"].grad.abs().sum() > 0  # through the deltas' dependence on the positions


def test_gradients_reach_basis_parameters_after_one_step() -> None:
    field = _fields()[1]
    splats = _splats(field)
    times = torch.rand(splats["means"].shape[0], generator=torch.Generator().manual_seed(4))

    def loss():
        d = field(splats, times)
        return sum((getattr(d, k) - 0.1).square().sum() for k in ("means", "scales", "quats", "opacities"))

    _one_adam_step(field, splats, loss)
    for key in ("deform_weights", "deform_centres", "deform_widths"):
        assert splats[key].grad.abs().sum() > 0, key


# -- bilinear lookup ------------------------------------------------------------------------------------


def _planes_table(dtype=torch.float32, seed: int = 0):
    """Three planes of width 7: heights 5, 7 and 4, as one table."""
    g = torch.Generator().manual_seed(seed)
    sizes = (7, 5, 4)  # samples along coordinates 0, 1, 2; coordinate 0 is every plane's width
    heights = (5, 7, 4)  # plane 1 is (0, 0): a diagonal plane, u = v
    planes = ((0, 0, 1), (35, 0, 0), (84, 0, 2))
    table = torch.randn(35 + 49 + 28, 3, generator=g, dtype=dtype)
    return table, sizes, planes, heights


def test_bilinear_matches_grid_sample_inside_and_outside() -> None:
    table, sizes, planes, heights = _planes_table(F64)
    g = torch.Generator().manual_seed(1)
    coords = torch.rand(500, 3, generator=g, dtype=F64) * 1.6 - 0.3  # ~half outside [0, 1]
    coords[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.5, 1.0, 0.0]], dtype=F64)
    table.requires_grad_(True)
    coords.requires_grad_(True)
    ours = bilinear_lookup(table, coords, sizes, planes)
    assert ours.shape == (500, 3, 3)
    cotangent = torch.randn(ours.shape, generator=g, dtype=F64)
    grads = torch.autograd.grad((ours * cotangent).sum(), (table, coords))
    refs = []
    for (offset, a, b), h in zip(planes, heights):
        plane = table[offset: offset + h * sizes[a]].view(h, sizes[a], -1).permute(2, 0, 1)[None]
        grid = (coords[:, [a, b]] * 2 - 1)[None, None]
        refs.append(F.grid_sample(plane, grid, mode="bilinear", padding_mode="border",
                                  align_corners=True)[0, :, 0].T)
    ref = torch.stack(refs, 1)
    assert torch.allclose(ours, ref, atol=1e-12)
    ref_grads = torch.autograd.grad((ref * cotangent).sum(), (table, coords))
    assert torch.allclose(grads[0], ref_grads[0], atol=1e-12)
    # coordinate gradients agree away from the box faces (where grid_sample's border clamp has a kink)
    inside = ((coords > 1e-6) & (coords < 1 - 1e-6)).all(1)
    assert inside.sum() > 50
    assert torch.allclose(grads[1][inside], ref_grads[1][inside], atol=1e-10)
    outside_x = (coords[:, 0] < 0) | (coords[:, 0] > 1)
    assert not grads[1][outside_x, 0].any()


def test_bilinear_gradcheck() -> None:
    table, sizes, planes, _ = _planes_table(F64)
    g = torch.Generator().manual_seed(2)
    # keep points away from cell edges, where bilinear interpolation has kinks
    cells = torch.randint(0, 3, (6, 3), generator=g)
    coords = (cells + 0.2 + 0.6 * torch.rand(6, 3, generator=g, dtype=F64)) / torch.tensor([6.0, 4.0, 3.0], dtype=F64)
    torch.autograd.gradcheck(lambda tb, c: bilinear_lookup(tb, c, sizes, planes),
                             (table.requires_grad_(True), coords.requires_grad_(True)))


def test_bilinear_hits_samples_exactly() -> None:
    table, sizes, planes, _ = _planes_table()
    # sample (u, v) = (3, 2) of the first plane sits at coordinates (3 / 6, 2 / 4)
    coords = torch.tensor([[3 / 6, 2 / 4, 0.0]])
    assert torch.allclose(bilinear_lookup(table, coords, sizes, planes)[0, 0], table[0 + 2 * 7 + 3])


# -- regularisers ---------------------------------------------------------------------------------------


def test_regularizers() -> None:
    config = dataclasses.replace(SMALL, tv_weight=1.0, time_smoothness_weight=0.0, time_l1_weight=0.0)
    field = make_field(config, AABB)
    assert field.regularization().item() > 0  # random spatial planes
    with torch.no_grad():
        for p in field.planes:
            p.fill_(0.7)
    assert field.regularization().item() == 0.0
    with torch.no_grad():
        field.plane(0, "xy")[2, 3, 1] += 1.0
    tv = field.regularization().item()
    plane = field.plane(0, "xy")
    n_v = (plane.shape[0] - 1) * plane.shape[1] * plane.shape[2]
    n_u = plane.shape[0] * (plane.shape[1] - 1) * plane.shape[2]
    assert math.isclose(tv, 2 / n_v + 2 / n_u, rel_tol=1e-5)  # two differences per axis touch the bump

    smooth = make_field(dataclasses.replace(SMALL, tv_weight=0.0, time_smoothness_weight=1.0, time_l1_weight=0.0),
                        AABB)
    l1 = make_field(dataclasses.replace(SMALL, tv_weight=0.0, time_smoothness_weight=0.0, time_l1_weight=1.0), AABB)
    assert smooth.regularization().item() == 0.0 and l1.regularization().item() == 0.0  # time planes start at 1
    with torch.no_grad():
        for field in (smooth, l1):
            for s in range(len(SMALL.scales)):
                for name in ("xt", "yt", "zt"):
                    t_plane = field.plane(s, name)
                    t_plane.copy_(torch.linspace(0.5, 1.5, t_plane.shape[0])[:, None, None].expand_as(t_plane))
    assert smooth.regularization().item() < 1e-12  # linear in time: no second difference
    assert l1.regularization().item() > 0.1
    with torch.no_grad():
        smooth.plane(1, "zt")[2] += 1.0
    assert smooth.regularization().item() > 0


def test_plane_views_share_the_table() -> None:
    field = make_field(SMALL, AABB)
    for s in range(len(SMALL.scales)):
        total = sum(field.plane(s, name).numel() for name in PLANE_NAMES)
        assert total == field.planes[s].numel()
        assert field.plane(s, "yt").data_ptr() != field.plane(s, "xt").data_ptr()
    assert torch.all(field.plane(0, "zt") == 1) and field.plane(0, "xz").min() >= 0.1


# -- temporal bases ---------------------------------------------------------------------------------------


def test_basis_function_values() -> None:
    mu, sigma = torch.tensor(0.4, dtype=F64), torch.tensor(0.1, dtype=F64)
    for t in (0.4, 0.5, 0.25, 0.9):
        expected = math.exp(-(((t - 0.4) ** 2) / (0.1**2 + 1e-4)) ** 2)
        assert math.isclose(float(basis_functions(torch.tensor(t, dtype=F64), mu, sigma)), expected, rel_tol=1e-12)
    # the repo's initial width: exp(-1) at |t - mu| = (sigma^2 + 1e-4)^(1/2) = sqrt(2e-4)
    assert math.isclose(float(basis_functions(torch.tensor(math.sqrt(2e-4)), torch.tensor(0.0), torch.tensor(0.01))),
                        math.exp(-1), rel_tol=1e-5)


def test_basis_field_sums_weighted_bases() -> None:
    field = BasisField(BasisConfig(num_basis=3, init_width=ANCHOR_WIDTH, deform_opacities=True))
    splats = _splats(field, n=2)
    with torch.no_grad():
        splats["deform_weights"].zero_()
        splats["deform_weights"][1, 0] = torch.tensor([1.0, 2.0, 3.0])    # x of Gaussian 1
        splats["deform_weights"][0, 10] = torch.tensor([0.0, -1.0, 0.0])  # opacity of Gaussian 0
        splats["deform_widths"].fill_(0.3)
    t = 0.3
    b = [math.exp(-(((t - mu) ** 2) / (0.09 + 1e-4)) ** 2) for mu in (0.0, 0.5, 1.0)]
    with torch.no_grad():
        d = field(splats, t)
    assert math.isclose(float(d.means[1, 0]), b[0] + 2 * b[1] + 3 * b[2], rel_tol=1e-6)
    assert math.isclose(float(d.opacities[0]), -b[1], rel_tol=1e-6)
    assert float(d.means.abs().sum()) == pytest.approx(abs(b[0] + 2 * b[1] + 3 * b[2]), rel=1e-6)


# -- apply_deltas -------------------------------------------------------------------------------------------


def test_apply_deltas_adds_and_renormalises() -> None:
    g = torch.Generator().manual_seed(5)
    splats = {"means": torch.randn(6, 3, generator=g), "scales": torch.randn(6, 3, generator=g),
              "quats": torch.randn(6, 4, generator=g) * 3, "opacities": torch.randn(6, generator=g)}
    deltas = Deltas(means=torch.ones(6, 3), quats=torch.randn(6, 4, generator=g))
    out = apply_deltas(splats, deltas)
    assert set(out) == {"means", "scales", "quats", "opacities"}
    assert torch.equal(out["means"], splats["means"] + 1)
    assert out["scales"] is splats["scales"] and out["opacities"] is splats["opacities"]
    assert torch.allclose(out["quats"].norm(dim=-1), torch.ones(6))
    q = splats["quats"] + deltas.quats
    assert torch.allclose(out["quats"], q / q.norm(dim=-1, keepdim=True))
    # same rotation as the unnormalised sum: the quaternion direction is kept
    assert torch.allclose((out["quats"] * q).sum(-1), q.norm(dim=-1))


# -- fitting a known motion ---------------------------------------------------------------------------------


def _fit(field, splats, steps: int = 100, lr: float = 0.02) -> tuple[float, float]:
    """Fit means(t) = means + sin(2 pi t) (1, 0.5, 0) mm at 16 frames; losses before and after.

    Every Gaussian is evaluated at every frame in one call (per-Gaussian times).
    """
    n, frames = splats["means"].shape[0], 16
    times = torch.arange(frames).repeat_interleave(n) / (frames - 1)
    target = torch.sin(2 * math.pi * times)[:, None] * torch.tensor([1.0, 0.5, 0.0])
    per_gaussian = [v for k, v in splats.items() if k.startswith("deform_")]
    opt = torch.optim.Adam(list(field.parameters()) + per_gaussian, lr=lr)

    def loss() -> torch.Tensor:
        tiled = {k: v.repeat(frames, *[1] * (v.dim() - 1)) for k, v in splats.items()}
        return (field(tiled, times).means - target).square().sum(-1).mean()

    first = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    return first, loss().item()


def test_hexplane_fits_a_sinusoidal_motion() -> None:
    torch.manual_seed(0)
    field = make_field(dataclasses.replace(SMALL, time_resolution=9), AABB)
    before, after = _fit(field, _splats(field, n=48))
    assert after < before / 10, (before, after)


def test_basis_field_fits_a_sinusoidal_motion() -> None:
    field = make_field(ANCHOR_BASIS, AABB)  # Deform3DGS's narrow initial widths, 16 frames off the centres
    before, after = _fit(field, _splats(field, n=48), lr=0.05)
    assert after < before / 10, (before, after)
