"""The near-field spot light model (endo3d.render.lights)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from endo3d.core import ShapeError
from endo3d.render.lights import FALLOFF_MIN, SPOT_MODEL, SpotLight, SpotLights, spot_irradiance

F64 = torch.float64


def _light(position=(0.0, 0.0, 0.0), direction=(0.0, 0.0, 1.0), intensity=(100.0, 200.0, 300.0), falloff=0.0):
    return SpotLight.create(position, direction, intensity, falloff, dtype=F64)


def test_on_axis_inverse_square() -> None:
    light = _light(falloff=2.0)
    d = torch.tensor([3.0, 6.0, 12.0], dtype=F64)
    points = torch.stack([torch.zeros_like(d), torch.zeros_like(d), d], dim=-1)
    normals = torch.tensor([0.0, 0.0, -1.0], dtype=F64).expand(3, 3)
    E, to_light = spot_irradiance(points, normals, light)
    assert torch.allclose(E[0], light.intensity / 9.0)
    assert torch.allclose(E[0] / E[1], torch.full((3,), 4.0, dtype=F64))
    assert torch.allclose(E[1] / E[2], torch.full((3,), 4.0, dtype=F64))
    assert torch.allclose(to_light, normals)


@pytest.mark.parametrize("falloff", [0.0, 1.0, 2.5])
def test_off_axis_angle_gives_cos_power(falloff: float) -> None:
    # A point at distance r, angle theta off the axis, facing the light: E = I cos^mu / r^2.
    light = _light(position=(1.0, -2.0, 0.5), direction=(0.0, 0.0, 2.0), falloff=falloff)
    r = 7.0
    for theta in (0.0, 0.3, 0.9, 1.4):
        for phi in (0.0, 2.0):
            offset = r * torch.tensor(
                [math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)], dtype=F64
            )
            E, _ = spot_irradiance(light.position + offset, -offset / r, light)
            assert torch.allclose(E, light.intensity * math.cos(theta) ** falloff / r**2, rtol=1e-12)


def test_lambert_cosine_and_back_facing() -> None:
    light = _light()
    point = torch.tensor([0.0, 0.0, 5.0], dtype=F64)
    for tilt in (0.0, 0.5, 1.2):
        normal = torch.tensor([math.sin(tilt), 0.0, -math.cos(tilt)], dtype=F64)
        E, _ = spot_irradiance(point, normal, light)
        assert torch.allclose(E, light.intensity / 25.0 * math.cos(tilt))
    E, _ = spot_irradiance(point, torch.tensor([0.0, 0.0, 1.0], dtype=F64), light)
    assert (E == 0).all()


def test_nothing_behind_the_light() -> None:
    for falloff in (0.0, 1.5):
        light = _light(falloff=falloff)
        points = torch.tensor([[0.0, 0.0, -5.0], [5.0, 0.0, 0.0]], dtype=F64)
        E, _ = spot_irradiance(points, -points / 5.0, light)
        assert (E == 0).all()


def test_batched_lights_broadcast() -> None:
    # A light per image (leading dim B) against points (B, N, 3) equals a loop.
    gen = torch.Generator().manual_seed(0)
    positions = torch.randn(2, 3, generator=gen, dtype=F64)
    light = SpotLight(
        positions.unsqueeze(1),
        torch.tensor([[[0.0, 0.1, 1.0]], [[0.2, 0.0, 1.0]]], dtype=F64),
        torch.tensor([[[50.0, 60.0, 70.0]], [[80.0, 90.0, 100.0]]], dtype=F64),
        torch.tensor([[1.0], [2.0]], dtype=F64),
    )
    points = torch.randn(2, 5, 3, generator=gen, dtype=F64) + torch.tensor([0.0, 0.0, 10.0], dtype=F64)
    normals = torch.nn.functional.normalize(-points, dim=-1)
    E, w = spot_irradiance(points, normals, light)
    assert E.shape == (2, 5, 3) and w.shape == (2, 5, 3)
    for b in range(2):
        single = SpotLight(light.position[b, 0], light.direction[b, 0], light.intensity[b, 0], light.falloff[b, 0])
        E_b, w_b = spot_irradiance(points[b], normals[b], single)
        assert torch.allclose(E[b], E_b) and torch.allclose(w[b], w_b)


def test_degenerate_points_are_finite() -> None:
    # Points at the light, on the axis, at 90 degrees off axis with mu = 0 and 1.5:
    # finite values and gradients.
    for falloff in (0.0, 1.5):
        position = torch.tensor([1.0, 0.0, 0.0], dtype=F64, requires_grad=True)
        direction = torch.tensor([0.0, 0.0, 1.0], dtype=F64, requires_grad=True)
        mu = torch.tensor(falloff, dtype=F64, requires_grad=True)
        light = SpotLight(position, direction, torch.ones(3, dtype=F64), mu)
        points = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 4.0], [4.0, 0.0, 0.0]], dtype=F64, requires_grad=True)
        normals = torch.tensor([[0.0, 0.0, -1.0]] * 3, dtype=F64, requires_grad=True)
        E, w = spot_irradiance(points, normals, light)
        (E.sum() + w.sum()).backward()
        assert torch.isfinite(E).all() and (E[0] == 0).all()
        for t in (position, direction, mu, points, normals):
            assert torch.isfinite(t.grad).all()


def test_gradcheck_spot_irradiance() -> None:
    position = torch.tensor([1.5, -0.5, 0.2], dtype=F64, requires_grad=True)
    direction = torch.tensor([0.1, 0.05, 1.0], dtype=F64, requires_grad=True)
    intensity = torch.tensor([80.0, 90.0, 100.0], dtype=F64, requires_grad=True)
    falloff = torch.tensor(1.7, dtype=F64, requires_grad=True)
    points = torch.tensor(
        [[0.0, 0.0, 10.0], [2.0, -1.0, 8.0], [-3.0, 2.5, 12.0], [1.5 + 0.1 * 9, -0.5 + 0.05 * 9, 0.2 + 9]],
        dtype=F64,
        requires_grad=True,
    )  # the last point is on the light axis
    normals = torch.nn.functional.normalize(
        torch.tensor([[0.1, 0.0, -1.0], [0.0, 0.3, -1.0], [0.4, -0.2, -1.0], [0.0, 0.0, -1.0]], dtype=F64), dim=-1
    ).requires_grad_()

    def fn(position, direction, intensity, falloff, points, normals):
        return spot_irradiance(points, normals, SpotLight(position, direction, intensity, falloff))

    assert torch.autograd.gradcheck(fn, (position, direction, intensity, falloff, points, normals))


def test_shape_errors() -> None:
    with pytest.raises(ShapeError):
        spot_irradiance(torch.zeros(4, 2), torch.zeros(4, 3), SpotLight.create())


def test_create_and_json_round_trip() -> None:
    light = SpotLight.create((1.0, 2.0, 3.0), (0.0, 0.0, 1.0), 250.0, 1.25)
    assert torch.equal(light.intensity, torch.full((3,), 250.0))
    entry = light.to_json()
    assert entry["type"] == "spot" and entry["model"] == SPOT_MODEL == (
        "E = I * max(d.(-w),0)^mu / |p - X|^2 * max(n.w,0)"
    )
    back = SpotLight.from_json(json.loads(json.dumps(entry)))
    for name in ("position", "direction", "intensity", "falloff"):
        assert torch.equal(getattr(back, name), getattr(light, name))
    with pytest.raises(ValueError):
        SpotLight.from_json({**entry, "type": "point"})
    with pytest.raises(ValueError):
        SpotLight.from_json({**entry, "model": "something else"})
    with pytest.raises(ValueError):
        SpotLight.create(falloff=-1.0)
    batched = SpotLight(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError):
        batched.to_json()


def test_module_matches_function_and_learns() -> None:
    lights = [
        _light((2.0, 0.0, 0.0), (0.0, 0.0, 3.0), (500.0, 450.0, 400.0), 1.5),
        _light((-2.0, 0.0, 0.0), (0.1, 0.0, 1.0), (300.0, 300.0, 300.0), 0.0),
    ]
    module = SpotLights(lights).double()
    assert len(module) == 2
    points = torch.tensor([[0.5, 0.5, 10.0], [-3.0, 1.0, 15.0]], dtype=F64)
    normals = torch.nn.functional.normalize(-points, dim=-1)
    total = 0
    for light, learned in zip(lights, module()):
        E, w = spot_irradiance(points, normals, light)
        E_m, w_m = spot_irradiance(points, normals, learned)
        # falloff 0 is stored as FALLOFF_MIN: cos^1e-6 differs from 1 by ~1e-6 |log cos|.
        assert torch.allclose(E_m, E, rtol=10 * FALLOFF_MIN) and torch.allclose(w_m, w)
        total = total + E_m.sum()
    total.backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
