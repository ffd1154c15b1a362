"""Physical facts of the metal-rough BRDF (endo3d.render.brdf)."""

from __future__ import annotations

import math

import pytest
import torch

from endo3d.core import ShapeError
from endo3d.render.brdf import (
    ALPHA_MIN,
    Material,
    brdf,
    fresnel_schlick,
    ggx_ndf,
    roughness_to_alpha,
    smith_g,
    smith_visibility,
)

F64 = torch.float64


def unit(theta: float, phi: float = 0.0) -> torch.Tensor:
    """Unit vector at polar angle theta from +z, azimuth phi (radians)."""
    return torch.tensor(
        [math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)], dtype=F64
    )


def test_fresnel_limits() -> None:
    f0 = torch.tensor([0.02, 0.04, 0.9], dtype=F64)
    assert torch.allclose(fresnel_schlick(torch.ones(1, dtype=F64), f0), f0)
    assert torch.allclose(fresnel_schlick(torch.zeros(1, dtype=F64), f0), torch.ones(3, dtype=F64))
    cos = torch.linspace(1.0, 0.0, 50, dtype=F64).unsqueeze(-1)
    f = fresnel_schlick(cos, f0)
    assert (f.diff(dim=0) >= 0).all(), "reflectance grows towards grazing"
    near_grazing = fresnel_schlick(torch.tensor([1e-4], dtype=F64), f0)
    assert torch.allclose(near_grazing, torch.ones(3, dtype=F64), atol=1e-3)


@pytest.mark.parametrize("alpha", [ALPHA_MIN, 0.01, 0.1, 0.5, 1.0])
def test_ggx_ndf_is_normalised(alpha: float) -> None:
    # integral of D(h) (n.h) d omega_h = 2 pi int_0^1 D(mu) mu d mu, with t = 1 - mu on a
    # log grid (D peaks within t ~ alpha^2 of mu = 1) and the trapezoid rule in log t.
    t = torch.logspace(-14, 0, 40001, dtype=F64)
    mu = (1 - t).unsqueeze(-1)
    g = 2 * math.pi * ggx_ndf(mu, torch.tensor([alpha], dtype=F64)) * mu
    integral = torch.trapezoid(g.squeeze(-1) * t, torch.log(t))
    assert integral.item() == pytest.approx(1.0, abs=1e-4)


def test_smith_g_matches_lambda_form_and_limits() -> None:
    # G2 = 1 / (1 + Lambda(l) + Lambda(v)), Lambda = (sqrt(1 + a^2 tan^2 theta) - 1) / 2.
    theta_l = torch.linspace(0.0, 1.5, 16, dtype=F64)
    theta_v = torch.linspace(0.1, 1.4, 16, dtype=F64).flip(0)
    alpha = torch.tensor([0.05, 0.3, 0.7, 1.0], dtype=F64).view(-1, 1, 1)
    lam = lambda th: (torch.sqrt(1 + alpha.square() * torch.tan(th).square()) - 1) / 2  # noqa: E731
    expected = 1 / (1 + lam(theta_l.view(1, -1, 1)) + lam(theta_v.view(1, -1, 1)))
    g = smith_g(torch.cos(theta_l).view(1, -1, 1), torch.cos(theta_v).view(1, -1, 1), alpha)
    assert torch.allclose(g, expected, rtol=1e-10)
    one = torch.ones(1, dtype=F64)
    assert smith_g(one, one, torch.tensor([0.8], dtype=F64)).item() == pytest.approx(1.0)
    assert smith_g(torch.zeros(1, dtype=F64), one, torch.tensor([0.8], dtype=F64)).item() == 0.0
    v = smith_visibility(torch.cos(theta_l).view(1, -1, 1), torch.cos(theta_v).view(1, -1, 1), alpha)
    four_nl_nv = 4 * torch.cos(theta_l).view(1, -1, 1) * torch.cos(theta_v).view(1, -1, 1)
    assert torch.allclose(v * four_nl_nv, g, rtol=1e-12)


def test_roughness_to_alpha_floor() -> None:
    r = torch.tensor([0.0, 0.01, 0.5, 1.0], dtype=F64)
    assert torch.allclose(roughness_to_alpha(r), torch.tensor([ALPHA_MIN, ALPHA_MIN, 0.25, 1.0], dtype=F64))


def _material(albedo, roughness, specular, metallic, dtype=F64) -> Material:
    return Material.create(albedo, roughness, specular, metallic, dtype=dtype)


def directional_albedo(material: Material, theta_v: float, n_t: int = 400, n_phi: int = 121) -> float:
    """int_{hemisphere} f(l, v) cos(theta_l) d omega_l, in half-vector coordinates.

    ``l = 2 (v.h) h - v`` and ``d omega_l = 4 (v.h) d omega_h``; ``h`` runs over
    ``cos theta_h = 1 - t`` (t on a log grid, so the GGX peak at ``h = n`` is
    resolved) and ``phi`` in [0, pi] (the integrand is even in phi, v in the xz plane).
    """
    t = torch.logspace(-10, 0, n_t, dtype=F64)
    phi = torch.linspace(0.0, math.pi, n_phi, dtype=F64)
    cos_h = (1 - t).view(-1, 1)
    sin_h = torch.sqrt(1 - cos_h.square())
    h = torch.stack(
        [sin_h * torch.cos(phi), sin_h * torch.sin(phi), cos_h.expand(-1, n_phi)], dim=-1
    )  # (n_t, n_phi, 3)
    v = unit(theta_v)
    v_dot_h = (h * v).sum(-1, keepdim=True)
    l = 2 * v_dot_h * h - v
    n = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    f = brdf(n.expand_as(l), l, v.expand_as(l), material)
    integrand = f * l[..., 2:].clamp_min(0) * 4 * v_dot_h.clamp_min(0)  # (n_t, n_phi, 3)
    over_phi = 2 * torch.trapezoid(integrand, phi, dim=1)  # (n_t, 3)
    over_t = torch.trapezoid(over_phi * t.view(-1, 1), torch.log(t), dim=0)
    return over_t.max().item()


def test_quadrature_integrates_lambert_to_one() -> None:
    # specular = metallic = 0 is exactly Lambertian (f = 1 / pi for albedo 1): the
    # quadrature below must give 1, for any view angle.
    lambert = _material(1.0, 0.5, 0.0, 0.0)
    for theta_v in (0.0, 0.8, 1.4):
        assert directional_albedo(lambert, theta_v) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("roughness", [0.05, 0.2, 0.4, 0.7, 1.0])
def test_white_furnace_energy_conservation(roughness: float) -> None:
    materials = [
        _material(1.0, roughness, 0.02, 0.0),
        _material(1.0, roughness, 0.05, 0.0),
        _material(1.0, roughness, 0.04, 0.5),
        _material(1.0, roughness, 0.04, 1.0),
    ]
    for theta_v in (0.0, 0.5, 1.0, 1.4, 1.5):
        for material in materials:
            assert directional_albedo(material, theta_v) <= 1.0 + 2e-3
    # The quadrature sees the specular peak: a smooth white metal seen head-on
    # reflects nearly everything (single-scattering GGX loses only a few percent).
    if roughness <= 0.2:
        assert directional_albedo(materials[-1], 0.0) > 0.95


def test_helmholtz_reciprocity() -> None:
    gen = torch.Generator().manual_seed(0)
    n_pts = 200
    l = torch.nn.functional.normalize(torch.randn(n_pts, 3, generator=gen, dtype=F64), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(n_pts, 3, generator=gen, dtype=F64), dim=-1)
    l[:, 2] = l[:, 2].abs()
    v[:, 2] = v[:, 2].abs()
    n = torch.tensor([0.0, 0.0, 1.0], dtype=F64).expand(n_pts, 3)
    material = Material(
        torch.rand(n_pts, 3, generator=gen, dtype=F64),
        torch.rand(n_pts, 1, generator=gen, dtype=F64),
        0.1 * torch.rand(n_pts, 1, generator=gen, dtype=F64),
        torch.rand(n_pts, 1, generator=gen, dtype=F64),
    )
    assert torch.allclose(brdf(n, l, v, material), brdf(n, v, l, material), rtol=1e-12, atol=0)


def test_metal_peak_closed_form() -> None:
    # l = v = n on a metal: F = F0 = albedo, D = 1 / (pi alpha^2), G = 1, so
    # f = albedo / (4 pi alpha^2).
    n = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    for roughness in (0.1, 0.5, 1.0):
        albedo = (0.9, 0.6, 0.3)
        f = brdf(n, n, n, _material(albedo, roughness, 0.04, 1.0))
        expected = torch.tensor(albedo, dtype=F64) / (4 * math.pi * roughness**4)
        assert torch.allclose(f, expected, rtol=1e-12)


def test_zero_below_horizon_and_back_facing() -> None:
    n = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    material = _material(0.8, 0.5, 0.04, 0.0)
    assert (brdf(n, unit(2.0), unit(0.3), material) == 0).all()
    assert (brdf(n, unit(0.3), unit(2.0), material) == 0).all()
    assert (brdf(n, unit(0.3), unit(0.2), material) > 0).all()


def test_broadcasting_and_shape_errors() -> None:
    n = torch.tensor([0.0, 0.0, 1.0])
    l = torch.stack([unit(0.1 * i).float() for i in range(5)]).view(5, 1, 3)
    material = Material(torch.rand(4, 3), torch.rand(4, 1), torch.full((1,), 0.04), torch.zeros(1))
    f = brdf(n, l, n, material)
    assert f.shape == (5, 4, 3) and f.dtype == torch.float32
    with pytest.raises(ShapeError):
        brdf(n, l, n, Material(torch.rand(4, 2), torch.rand(4, 1), torch.zeros(1), torch.zeros(1)))


def _random_material(n: int, gen: torch.Generator) -> list[torch.Tensor]:
    return [
        (0.1 + 0.8 * torch.rand(n, 3, generator=gen, dtype=F64)).requires_grad_(),
        (0.2 + 0.7 * torch.rand(n, 1, generator=gen, dtype=F64)).requires_grad_(),
        (0.02 + 0.05 * torch.rand(n, 1, generator=gen, dtype=F64)).requires_grad_(),
        (0.1 + 0.8 * torch.rand(n, 1, generator=gen, dtype=F64)).requires_grad_(),
    ]


def test_gradcheck_brdf() -> None:
    gen = torch.Generator().manual_seed(1)
    n_pts = 6
    l = torch.stack([unit(0.2 + 0.2 * i, 0.5 * i) for i in range(n_pts)]).requires_grad_()
    v = torch.stack([unit(0.9 - 0.1 * i, -0.3 * i) for i in range(n_pts)]).requires_grad_()
    n = torch.stack([unit(0.1, 0.2 * i) for i in range(n_pts)]).requires_grad_()
    fields = _random_material(n_pts, gen)

    def fn(n, l, v, *fields):
        return brdf(n, l, v, Material(*fields))

    assert torch.autograd.gradcheck(fn, (n, l, v, *fields))


def test_gradcheck_public_terms() -> None:
    cos = torch.linspace(0.05, 0.95, 7, dtype=F64).view(-1, 1).requires_grad_()
    cos2 = torch.linspace(0.9, 0.1, 7, dtype=F64).view(-1, 1).requires_grad_()
    alpha = torch.linspace(0.05, 1.0, 7, dtype=F64).view(-1, 1).requires_grad_()
    f0 = torch.rand(7, 3, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(fresnel_schlick, (cos, f0))
    assert torch.autograd.gradcheck(ggx_ndf, (cos, alpha))
    assert torch.autograd.gradcheck(smith_g, (cos, cos2, alpha))
    assert torch.autograd.gradcheck(smith_visibility, (cos, cos2, alpha))


def test_gradients_at_normal_incidence_grazing_and_zero_roughness() -> None:
    # Normal incidence, parametrised on the sphere (directions stay unit): gradcheck in angles.
    def at_angles(angles, roughness):
        theta_l, theta_v = angles[0], angles[1]
        l = torch.stack([torch.sin(theta_l), torch.zeros_like(theta_l), torch.cos(theta_l)])
        v = torch.stack([torch.zeros_like(theta_v), torch.sin(theta_v), torch.cos(theta_v)])
        n = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
        albedo, specular, metallic = (torch.tensor(x, dtype=F64) for x in ([0.7, 0.5, 0.4], [0.04], [0.2]))
        return brdf(n, l, v, Material(albedo, roughness, specular, metallic))

    angles = torch.zeros(2, dtype=F64, requires_grad=True)
    roughness = torch.tensor([0.5], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(at_angles, (angles, roughness))

    # Unconstrained directions at exact normal incidence, at grazing light and at
    # roughness 0 (the alpha floor): gradients exist and are finite.
    n = torch.tensor([[0.0, 0.0, 1.0]] * 3, dtype=F64, requires_grad=True)
    l = torch.stack([unit(0.0), unit(math.pi / 2), unit(0.4)]).requires_grad_()
    v = torch.stack([unit(0.0), unit(0.3), unit(0.4, 1.0)]).requires_grad_()
    fields = [
        torch.tensor([[0.7, 0.5, 0.4]] * 3, dtype=F64, requires_grad=True),
        torch.tensor([[0.5], [0.5], [0.0]], dtype=F64, requires_grad=True),
        torch.full((3, 1), 0.04, dtype=F64, requires_grad=True),
        torch.full((3, 1), 0.3, dtype=F64, requires_grad=True),
    ]
    for dtype in (torch.float32, F64):
        args = [t.detach().to(dtype).requires_grad_() for t in (n, l, v, *fields)]
        brdf(*args[:3], Material(*args[3:])).sum().backward()
        for t in args:
            assert torch.isfinite(t.grad).all()
    assert torch.autograd.gradcheck(
        lambda *f: brdf(n[:1], l[:1], v[:1], Material(*f)), tuple(t[:1].detach().requires_grad_() for t in fields)
    )
