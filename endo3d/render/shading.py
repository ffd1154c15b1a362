"""Differentiable shading: spot lights on a metal-rough surface seen by the camera.

The camera is at the origin of the camera frame (OpenCV, mm; see
``CONVENTIONS.md``), so the view direction of a point ``X`` is
``v = normalize(-X)``. The outgoing linear radiance towards the camera is::

    L(X) = sum_k V_k(X) f(l_k, v) E_k(X) + ambient (1 - metallic) albedo

with ``f`` the BRDF of :mod:`endo3d.render.brdf`, ``E_k`` and ``l_k = w_k``
the irradiance and light direction of spot light ``k``
(:func:`~endo3d.render.lights.spot_irradiance`) and ``V_k`` in [0, 1] its
visibility (cast shadows, computed by the caller; 1 by default). The ambient
term is a constant radiance standing for the diffuse inter-reflection inside
the organ (light that bounced off other tissue): a white furnace of radiance
``ambient`` seen by the diffuse lobe, ignoring the Fresnel weight of that
lobe. It needs no geometry, so it does not darken with distance or tilt.

Normals face the camera (``n . v > 0``); points whose normal faces away get
only the ambient term. Points at the camera centre (``X = 0``, e.g. invalid
pixels with depth 0) and at a light position give finite values and gradients.
"""

from __future__ import annotations

from typing import Sequence

import torch

from endo3d.core import check_shape
from endo3d.render.brdf import Material, _lobe, _material_cf, _reflect
from endo3d.render.lights import (
    SpotLight,
    _dot,
    _from_cf,
    _inv_norm,
    _light_cf,
    _light_rank,
    _LightCF,
    _rank,
    _spot_terms,
    _to_cf,
)

__all__ = ["shade", "shade_image"]


def _shade_cf(
    points: torch.Tensor,
    normals: torch.Tensor,
    material: Material,
    lights: Sequence[_LightCF],
    ambient: torch.Tensor | None,
    visibility: Sequence[torch.Tensor] | None,
) -> torch.Tensor:
    """:func:`shade` in the channel-first layout: inputs ``(C, ...)``, output ``(3, ...)``."""
    to_view = points * -_inv_norm(points)
    lobe = _lobe(material, _dot(normals, to_view))
    radiance = lobe.base.new_zeros(()) if ambient is None else lobe.base * ambient
    for k, light in enumerate(lights):
        scale, to_light, n_dot_l = _spot_terms(points, normals, light)
        if visibility is not None:
            scale = scale * visibility[k]
        f = _reflect(lobe, normals, to_light, to_view, n_dot_l)
        radiance = torch.addcmul(radiance, f, scale * light.intensity)
    shape = torch.broadcast_shapes(radiance.shape, lobe.base.shape, (3, *points.shape[1:]), normals.shape)
    return radiance if radiance.shape == shape else radiance.expand(shape).contiguous()


def shade(
    points: torch.Tensor,
    normals: torch.Tensor,
    material: Material,
    lights: Sequence[SpotLight],
    ambient: torch.Tensor | None = None,
    *,
    visibility: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Linear radiance leaving each point towards the camera at the origin.

    ``L = sum_k V_k brdf(n, w_k, v) E_k + ambient (1 - metallic) albedo`` with
    ``v = normalize(-X)`` (module docstring) and ``V_k`` the visibility of
    light ``k`` (1 without shadows).

    Args:
        points: ``(..., 3)`` surface points ``X`` in mm, camera frame.
        normals: ``(..., 3)`` unit normals facing the camera, camera frame.
        material: :class:`~endo3d.render.brdf.Material` broadcasting with ``...``.
        lights: spot lights in the camera frame, each broadcasting with ``...``.
        ambient: ``(3,)`` or ``(..., 3)`` inter-reflection radiance, linear
            RGB; ``None`` for none.
        visibility: shadows: one ``(..., 1)`` tensor per light, 1 where the
            point sees the light, 0 where it is occluded (fractions for soft
            shadows); ``None`` for no shadows.

    Returns:
        ``(..., 3)`` linear RGB radiance (same units as ``E`` x 1/sr).

    Example:
        >>> light = SpotLight.create(intensity=100.0)
        >>> X, n = torch.tensor([[0.0, 0.0, 10.0]]), torch.tensor([[0.0, 0.0, -1.0]])
        >>> torch.allclose(shade(X, n, Material.create(1.0, specular=0.0), [light]), torch.full((1, 3), 1 / torch.pi))
        True
    """
    check_shape(points, "... 3", "points")
    check_shape(normals, "... 3", "normals")
    material.check()
    extra = []
    if ambient is not None:
        check_shape(ambient, "... 3", "ambient")
        extra.append(ambient)
    if visibility is not None:
        _check_visibility(visibility, len(lights))
        for v in visibility:
            check_shape(v, "... 1", "visibility")
        extra.extend(visibility)
    rank = max([_rank(points, normals, *material.fields(), *extra), *(_light_rank(light) for light in lights)])
    radiance = _shade_cf(
        _to_cf(points, rank),
        _to_cf(normals, rank),
        _material_cf(material, rank),
        [_light_cf(light, rank) for light in lights],
        None if ambient is None else _to_cf(ambient, rank),
        None if visibility is None else [_to_cf(v, rank) for v in visibility],
    )
    return _from_cf(radiance)


def _check_visibility(visibility: Sequence[torch.Tensor], num_lights: int) -> None:
    if len(visibility) != num_lights:
        raise ValueError(f"visibility needs one tensor per light: {len(visibility)} for {num_lights} lights")


def _image_cf(x: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    """``(B, C, H, W) -> (C, B, H, W)`` view after a shape check (sizes 1 broadcast)."""
    if x.dim() != 4 or x.shape[1] != channels:
        check_shape(x, f"B {channels} H W", name)
    return x.transpose(0, 1)


def _batch_as_image(t: torch.Tensor, vector: bool) -> torch.Tensor:
    """Leading dims ``()`` stay, ``(B,)`` become ``(B, 1, 1)`` (before the channel if ``vector``)."""
    lead = t.dim() - 1 if vector else t.dim()
    if lead > 1:
        raise ValueError(f"image lights and ambient have leading dims () or (B,), got {tuple(t.shape)}")
    return t.reshape(t.shape[0], 1, 1, *t.shape[1:]) if lead == 1 else t


def shade_image(
    points: torch.Tensor,
    normals: torch.Tensor,
    material: Material,
    lights: Sequence[SpotLight],
    ambient: torch.Tensor | None = None,
    *,
    visibility: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`shade` on channel-first images.

    Args:
        points: ``(B, 3, H, W)`` points in mm, camera frame (e.g. back-projected depth).
        normals: ``(B, 3, H, W)`` unit normals facing the camera.
        material: fields as images: albedo ``(B, 3, H, W)``, roughness,
            specular and metallic ``(B, 1, H, W)``; sizes 1 broadcast (e.g.
            ``(1, 3, 1, 1)`` for a uniform albedo).
        lights: spot lights with leading dims ``()`` (shared by the batch) or
            ``(B,)`` (one per image).
        ambient: ``(3,)`` or ``(B, 3)``; ``None`` for none.
        visibility: one ``(B, 1, H, W)`` shadow mask per light; ``None`` for
            no shadows.

    Returns:
        ``(B, 3, H, W)`` linear radiance.
    """
    if visibility is not None:
        _check_visibility(visibility, len(lights))
    material_cf = Material(
        _image_cf(material.albedo, 3, "material.albedo"),
        _image_cf(material.roughness, 1, "material.roughness"),
        _image_cf(material.specular, 1, "material.specular"),
        _image_cf(material.metallic, 1, "material.metallic"),
    )
    lights_cf = [
        _light_cf(
            SpotLight(
                _batch_as_image(light.position, True),
                _batch_as_image(light.direction, True),
                _batch_as_image(light.intensity, True),
                _batch_as_image(light.falloff, False),
            ),
            3,
        )
        for light in lights
    ]
    radiance = _shade_cf(
        _image_cf(points, 3, "points"),
        _image_cf(normals, 3, "normals"),
        material_cf,
        lights_cf,
        None if ambient is None else _to_cf(_batch_as_image(ambient, True), 3),
        None if visibility is None else [_image_cf(v, 1, "visibility") for v in visibility],
    )
    return radiance.transpose(0, 1).contiguous()
