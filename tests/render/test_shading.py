"""Shading: spot lights on a metal-rough surface seen from the camera (endo3d.render.shading)."""

from __future__ import annotations

import math

import pytest
import torch

from endo3d.core import ShapeError
from endo3d.render.brdf import Material, brdf
from endo3d.render.lights import SpotLight, spot_irradiance
from endo3d.render.shading import shade, shade_image

F64 = torch.float64


@pytest.mark.parametrize("falloff", [0.0, 1.0, 3.0])
def test_lambertian_plane_closed_form(falloff: float) -> None:
    # Plane z = d facing the camera, light at the camera centre along +z, Lambertian
    # albedo rho: the point seen at angle theta off the optical axis is at distance
    # d / cos(theta), receives I cos^mu(theta) cos(theta) / (d / cos(theta))^2 and
    # reflects rho / pi of it: L = rho I cos^(mu + 3)(theta) / (pi d^2).
    d, rho, intensity = 20.0, torch.tensor([0.8, 0.5, 0.3], dtype=F64), 400.0
    theta = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.1], dtype=F64)
    phi = torch.tensor([0.0, 1.0, 2.5, 4.0, 5.5], dtype=F64)
    points = torch.stack([d * torch.tan(theta) * torch.cos(phi), d * torch.tan(theta) * torch.sin(phi),
                          torch.full_like(theta, d)], dim=-1)
    normals = torch.tensor([0.0, 0.0, -1.0], dtype=F64).expand(5, 3)
    material = Material.create(rho.tolist(), roughness=0.3, specular=0.0, metallic=0.0, dtype=F64)
    light = SpotLight.create((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), intensity, falloff, dtype=F64)
    radiance = shade(points, normals, material, [light])
    expected = rho * intensity * torch.cos(theta).unsqueeze(-1) ** (falloff + 3) / (math.pi * d**2)
    assert torch.allclose(radiance, expected, rtol=1e-12)


def test_sum_of_lights_and_ambient() -> None:
    gen = torch.Generator().manual_seed(3)
    points = torch.randn(50, 3, generator=gen, dtype=F64) * 3 + torch.tensor([0.0, 0.0, 25.0], dtype=F64)
    normals = torch.nn.functional.normalize(-points + torch.randn(50, 3, generator=gen, dtype=F64) * 5, dim=-1)
    material = Material(
        torch.rand(50, 3, generator=gen, dtype=F64),
        torch.rand(50, 1, generator=gen, dtype=F64),
        torch.full((50, 1), 0.04, dtype=F64),
        torch.rand(50, 1, generator=gen, dtype=F64),
    )
    lights = [
        SpotLight.create((2.0, 0.0, 0.0), (0.0, 0.0, 1.0), (500.0, 450.0, 400.0), 1.5, dtype=F64),
        SpotLight.create((-2.0, 0.5, 0.0), (0.1, 0.0, 1.0), 300.0, 0.0, dtype=F64),
    ]
    ambient = torch.tensor([0.01, 0.02, 0.03], dtype=F64)
    view = torch.nn.functional.normalize(-points, dim=-1)
    expected = ambient * (1 - material.metallic) * material.albedo
    for light in lights:
        E, w = spot_irradiance(points, normals, light)
        expected = expected + brdf(normals, w, view, material) * E
    assert torch.allclose(shade(points, normals, material, lights, ambient), expected, rtol=1e-12)
    ambient_only = ambient * (1 - material.metallic) * material.albedo
    assert torch.allclose(shade(points, normals, material, [], ambient), ambient_only)
    assert shade(points, normals, material, []).abs().max() == 0


def test_shade_image_matches_shade_and_per_image_lights() -> None:
    gen = torch.Generator().manual_seed(4)
    B, H, W = 2, 5, 7
    points = torch.randn(B, 3, H, W, generator=gen) + torch.tensor([0.0, 0.0, 12.0]).view(1, 3, 1, 1)
    normals = torch.nn.functional.normalize(-points + 0.3 * torch.randn(B, 3, H, W, generator=gen), dim=1)
    albedo = torch.rand(B, 3, H, W, generator=gen)
    roughness = torch.rand(B, 1, H, W, generator=gen)
    uniform = Material(albedo, roughness, torch.full((1, 1, 1, 1), 0.04), torch.zeros(1, 1, 1, 1))
    lights = SpotLight(
        torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.5, 0.0]]),
        torch.tensor([[0.0, 0.0, 1.0], [0.1, 0.0, 1.0]]),
        torch.tensor([[200.0, 180.0, 160.0], [150.0, 150.0, 150.0]]),
        torch.tensor([1.0, 2.0]),
    )
    shared = SpotLight.create((0.0, 1.0, 0.0), (0.0, 0.0, 1.0), 100.0, 0.5)
    ambient = torch.tensor([[0.01, 0.02, 0.03], [0.0, 0.01, 0.0]])
    image = shade_image(points, normals, uniform, [lights, shared], ambient)
    assert image.shape == (B, 3, H, W) and image.is_contiguous()
    for b in range(B):
        to_last = lambda x: x[b].permute(1, 2, 0)  # noqa: E731
        material = Material(to_last(albedo), to_last(roughness), torch.full((1,), 0.04), torch.zeros(1))
        light_b = SpotLight(lights.position[b], lights.direction[b], lights.intensity[b], lights.falloff[b])
        expected = shade(to_last(points), to_last(normals), material, [light_b, shared], ambient[b])
        assert torch.allclose(image[b].permute(1, 2, 0), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ShapeError):
        shade_image(points[:, :2], normals, uniform, [shared])


def test_dtypes_and_shapes() -> None:
    for dtype in (torch.float32, F64):
        points = torch.tensor([[[0.0, 0.0, 10.0]] * 4] * 2, dtype=dtype)
        normals = torch.tensor([0.0, 0.0, -1.0], dtype=dtype).expand(2, 4, 3)
        material = Material.create(0.5, dtype=dtype)
        out = shade(points, normals, material, [SpotLight.create(dtype=dtype)])
        assert out.shape == (2, 4, 3) and out.dtype == dtype and out.is_contiguous()
    with pytest.raises(ShapeError):
        shade(torch.zeros(4, 3), torch.zeros(4, 3), material, [], torch.zeros(2))


def test_back_facing_and_invalid_points() -> None:
    # A normal facing away from the camera gets only the ambient term; a point at the
    # camera centre (depth 0) gives finite values and gradients.
    material = Material.create(0.6, roughness=0.4, dtype=F64)
    ambient = torch.tensor([0.1, 0.1, 0.1], dtype=F64)
    points = torch.tensor([[0.0, 0.0, 10.0], [0.0, 0.0, 0.0]], dtype=F64, requires_grad=True)
    normals = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]], dtype=F64, requires_grad=True)
    light = SpotLight.create((1.0, 0.0, 0.0), dtype=F64)
    out = shade(points, normals, material, [light], ambient)
    assert torch.allclose(out[0], ambient * 0.6)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(points.grad).all() and torch.isfinite(normals.grad).all()


def _gradcheck_inputs(points, normals):
    def leaf(values):
        return torch.tensor(values, dtype=F64, requires_grad=True)

    return (
        leaf(points),
        leaf(normals),
        leaf([[0.7, 0.4, 0.3], [0.6, 0.5, 0.4], [0.9, 0.3, 0.2]]),  # albedo
        leaf([[0.5], [0.3], [0.8]]),  # roughness
        leaf([[0.04], [0.03], [0.05]]),  # specular
        leaf([[0.1], [0.0], [0.6]]),  # metallic
        leaf([1.0, -0.5, 0.3]),  # light position
        leaf([0.05, 0.1, 1.0]),  # light direction
        leaf([300.0, 250.0, 200.0]),  # light intensity
        leaf(1.3),  # light falloff
        leaf([0.02, 0.03, 0.01]),  # ambient
    )


def _shade_fn(points, normals, albedo, roughness, specular, metallic, position, direction, intensity, falloff, ambient):
    second = SpotLight(-position, direction, 0.5 * intensity, 0.5 * falloff)
    return shade(
        points,
        normals,
        Material(albedo, roughness, specular, metallic),
        [SpotLight(position, direction, intensity, falloff), second],
        ambient,
    )


def test_gradcheck_shade() -> None:
    normals = torch.nn.functional.normalize(
        torch.tensor([[0.2, 0.1, -1.0], [-0.3, 0.2, -1.0], [0.1, -0.4, -1.0]], dtype=F64), dim=-1
    )
    inputs = _gradcheck_inputs([[1.0, 2.0, 15.0], [-4.0, 1.0, 12.0], [3.0, -2.0, 20.0]], normals.tolist())
    assert torch.autograd.gradcheck(_shade_fn, inputs)


def test_gradcheck_shade_normal_incidence_on_axis() -> None:
    # Light at the camera centre, points on the optical axis and the light axis, normals
    # facing the camera: n.l = n.v = n.h = 1 and d.(-w) = 1. The third point has roughness
    # 0 (alpha at its floor, D ~ 3e5 / sr at the peak).
    inputs = list(_gradcheck_inputs([[0.0, 0.0, 10.0], [0.0, 0.0, 14.0], [0.0, 0.0, 20.0]], [[0.0, 0.0, -1.0]] * 3))
    inputs[3] = torch.tensor([[0.5], [0.3], [0.0]], dtype=F64, requires_grad=True)
    inputs[6] = torch.zeros(3, dtype=F64, requires_grad=True)
    inputs[7] = torch.tensor([0.0, 0.0, 1.0], dtype=F64, requires_grad=True)

    def on_axis(*args):
        args = list(args)
        return shade(args[0], args[1], Material(*args[2:6]), [SpotLight(*args[6:10])], args[10])

    assert torch.autograd.gradcheck(on_axis, tuple(inputs))


def test_grazing_light_has_finite_gradients() -> None:
    # The light direction lies in the tangent plane (n.l = 0) and the view is oblique.
    points = torch.tensor([[0.0, 0.0, 10.0]], dtype=F64, requires_grad=True)
    normals = torch.tensor([[-1.0, 0.0, 0.0]], dtype=F64, requires_grad=True)
    material = Material(*(t.requires_grad_() for t in Material.create(0.5, 0.0, 0.04, 0.0, dtype=F64).fields()))
    light = SpotLight.create((0.0, 5.0, 10.0), (0.0, 1.0, 0.0), 100.0, 1.0, dtype=F64)
    shade(points, normals, material, [light]).sum().backward()
    for t in (points, normals, *material.fields()):
        assert torch.isfinite(t.grad).all()


def test_float32_matches_float64_at_sharp_highlights() -> None:
    # Near the specular peak of a smooth surface 1 - (n.h)^2 is tiny; float32 must keep it.
    gen = torch.Generator().manual_seed(5)
    points = torch.randn(20000, 3, generator=gen, dtype=F64) * 4
    points[:, 2] = points[:, 2].abs() + 3
    normals = torch.nn.functional.normalize(-points + torch.randn(20000, 3, generator=gen, dtype=F64), dim=-1)
    lights = [SpotLight.create((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), 300.0, 1.0, dtype=F64),
              SpotLight.create((0.5, 0.0, 0.0), (0.0, 0.0, 1.0), 200.0, 0.0, dtype=F64)]
    for roughness in (0.0, 0.05, 0.5):
        material = Material.create((0.8, 0.5, 0.4), roughness, 0.04, 0.3, dtype=F64)
        reference = shade(points, normals, material, lights)
        single = shade(
            points.float(),
            normals.float(),
            Material(*(field.float() for field in material.fields())),
            [SpotLight(light.position.float(), light.direction.float(), light.intensity.float(),
                       light.falloff.float()) for light in lights],
        )
        assert single.dtype == torch.float32
        assert torch.allclose(single.double(), reference, rtol=2e-3, atol=1e-6)


def test_visibility_scales_each_light() -> None:
    gen = torch.Generator().manual_seed(6)
    points = torch.randn(30, 3, generator=gen, dtype=F64) + torch.tensor([0.0, 0.0, 15.0], dtype=F64)
    normals = torch.nn.functional.normalize(-points, dim=-1)
    material = Material.create((0.7, 0.4, 0.3), 0.4, 0.04, 0.0, dtype=F64)
    first = SpotLight.create((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), 200.0, 1.0, dtype=F64)
    second = SpotLight.create((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0), 100.0, 0.5, dtype=F64)
    ambient = torch.tensor([0.01, 0.01, 0.01], dtype=F64)
    lit, dark = torch.ones(30, 1, dtype=F64), torch.zeros(30, 1, dtype=F64)
    only_first = shade(points, normals, material, [first], ambient)
    both = shade(points, normals, material, [first, second], ambient)

    def shadowed(visibility):
        return shade(points, normals, material, [first, second], ambient, visibility=visibility)

    assert torch.allclose(shadowed([lit, dark]), only_first)
    assert torch.allclose(shadowed([lit, lit]), both)
    assert torch.allclose(shadowed([lit, 0.5 * lit]), (only_first + both) / 2)
    with pytest.raises(ValueError):
        shade(points, normals, material, [first, second], visibility=[lit])

    # the image form takes (B, 1, H, W) masks
    image = lambda x: x.T.reshape(1, -1, 5, 6)  # noqa: E731
    uniform = Material(*(f.view(1, -1, 1, 1) for f in material.fields()))
    out = shade_image(image(points), image(normals), uniform, [first, second], ambient,
                      visibility=[image(lit), image(dark)])
    assert torch.allclose(out, image(only_first))

    vis = (0.3 + 0.4 * torch.rand(30, 1, generator=gen, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: shade(points, normals, material, [first], visibility=[v]), (vis,))
