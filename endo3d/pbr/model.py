"""The PBR image model and the light-baked baseline.

PBR (:class:`PbrModel`), per hit pixel of frame ``i``::

    material = material_from_raw(field(X_world))                   neural material field
    L        = shade(X_cam, n_cam, material, lights, ambient,       endo3d.render.shade, the
                     visibility=shadow rays)                        simulator's shading model
    rgb      = apply_response(L, exposure_i, white balance,         endo3d.render.apply_response
                              vignetting, sRGB / gamma)             (no noise)

with learnable spot lights fixed to the camera (:class:`endo3d.render.SpotLights`:
intensity, falloff, position and axis), an ambient (inter-reflection) radiance
and the camera response (:class:`Response`). The baseline
(:class:`BakedModel`) replaces the material, lights and ambient by a
radiance field ``L = radiance_from_raw(field(X_world))``: colour per point with
the light of the training views baked in; it shares the camera response.

Scale ambiguity: the image depends on ``exposure * intensity_c * albedo_c``
(and ``exposure * ambient_c * albedo_c``) for the diffuse light, so a
per-channel gauge ``albedo_c / s_c, intensity_c * s_c, ambient_c * s_c``
(and ``F0 / s``) leaves images nearly unchanged; only the specular lobe
(``intensity * F0``, with ``F0`` bounded and a Fresnel limit of 1) and the
priors tie it. Exposure is known (dataset metadata) or fixed at 1 for the
first training frame, which fixes the exposure-intensity gauge. See
:mod:`endo3d.pbr.evaluate` for how comparisons resolve the rest.
"""

from __future__ import annotations

import abc

from typing import Sequence

import numpy as np
import torch
from torch import nn

from endo3d.kernels.shading import shade_points
from endo3d.pbr.data import FrameBuffers
from endo3d.pbr.field import MaterialField, material_from_raw, radiance_from_raw
from endo3d.render.brdf import Material
from endo3d.render.lights import SpotLight, SpotLights
from endo3d.render.response import CameraResponse, apply_response, srgb_decode, vignetting_map

__all__ = ["BakedModel", "PbrModel", "Response", "scatter_images"]


class Response(nn.Module):
    """The camera response with one exposure per frame of the sequence.

    Parameters: ``log_exposure (N,)`` (learned, or fixed at known values),
    ``vignetting (2,)`` (learned or fixed). White balance and the gamma curve
    are fixed (known from the dataset's ``sensor``, else 1 and sRGB): a white
    balance error is absorbed by the light colour.

    Args:
        log_exposure: ``(N,)`` start values.
        learn_exposure: fit the exposures; the frame ``anchor`` stays fixed
            (it sets the exposure-intensity gauge).
        vignetting: ``(k1, k2)`` start values.
        learn_vignetting: fit them.
        white_balance: ``(3,)`` gains.
        gamma: ``"srgb"`` or an exponent.
    """

    def __init__(self, log_exposure: torch.Tensor, *, learn_exposure: bool, anchor: int = 0,
                 vignetting: Sequence[float] = (0.0, 0.0), learn_vignetting: bool = False,
                 white_balance: Sequence[float] = (1.0, 1.0, 1.0), gamma: str | float = "srgb") -> None:
        super().__init__()
        self.log_exposure = nn.Parameter(torch.as_tensor(log_exposure, dtype=torch.float32).clone(),
                                         requires_grad=learn_exposure)
        keep = torch.ones_like(self.log_exposure)
        keep[anchor] = 0.0
        self.register_buffer("exposure_grad_mask", keep)
        if learn_exposure:
            self.log_exposure.register_hook(lambda g: g * self.exposure_grad_mask)
        self.vignetting = nn.Parameter(torch.tensor([float(v) for v in vignetting]), requires_grad=learn_vignetting)
        self.register_buffer("white_balance", torch.tensor([float(v) for v in white_balance]))
        self.gamma = gamma

    def settings(self, indices: Sequence[int]) -> CameraResponse:
        """The :class:`CameraResponse` of frames ``indices`` (exposure ``(B,)``), noise off."""
        exposure = self.log_exposure[torch.as_tensor(list(indices), dtype=torch.long)].exp()
        return CameraResponse(exposure=exposure, white_balance=self.white_balance,
                              vignetting=(self.vignetting[0], self.vignetting[1]), gamma=self.gamma)

    def forward(self, radiance: torch.Tensor, indices: Sequence[int], K: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` linear radiance of frames ``indices`` -> displayed image in [0, 1]."""
        return apply_response(radiance, self.settings(indices), K, noise=False)

    def linear_gain(self, index: int, pixels: torch.Tensor, height: int, width: int, K: torch.Tensor) -> torch.Tensor:
        """``(n, 3)`` factor from radiance to linear signal at ``pixels`` of frame ``index`` (before clamping)."""
        vignette = vignetting_map(height, width, K, self.vignetting[0], self.vignetting[1]).reshape(-1)[pixels]
        return self.log_exposure[index].exp() * vignette[:, None] * self.white_balance[None, :]

    @torch.no_grad()
    def interpolate_exposures(self, known: Sequence[int]) -> None:
        """Set the exposure of every frame not in ``known`` by linear interpolation of log exposure
        over frame numbers (held-out frames never see training data)."""
        known = sorted(known)
        n = len(self.log_exposure)
        values = self.log_exposure.detach().cpu().numpy()
        filled = np.interp(np.arange(n), known, values[known])
        self.log_exposure.copy_(torch.from_numpy(filled).to(self.log_exposure))


def scatter_images(values: Sequence[torch.Tensor], frames: Sequence[FrameBuffers], height: int,
                   width: int) -> torch.Tensor:
    """Per-frame ``(n, 3)`` values at the hit pixels -> ``(B, 3, H, W)`` images, zero elsewhere."""
    images = []
    for v, f in zip(values, frames):
        flat = v.new_zeros((height * width, 3)).index_copy(0, f.pixels, v)
        images.append(flat.T.reshape(3, height, width))
    return torch.stack(images)


class _ImageModel(nn.Module, abc.ABC):
    """Shared rendering: per-frame radiance at hit pixels, then the camera response."""

    response: Response

    field: MaterialField

    @abc.abstractmethod
    def radiance(self, frame: FrameBuffers, raw: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, 3)`` linear radiance at the frame's hit pixels; ``raw`` = ``field(points_world)`` if given."""

    def render(self, frames: Sequence[FrameBuffers], height: int, width: int, K: torch.Tensor,
               raw: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` displayed images in [0, 1] of ``frames`` (black where no surface is hit).

        ``raw``: the field's outputs per frame, when the caller already has them.
        """
        raws = [None] * len(frames) if raw is None else raw
        radiance = scatter_images([self.radiance(f, r) for f, r in zip(frames, raws)], frames, height, width)
        return self.response(radiance, [f.index for f in frames], K)


class PbrModel(_ImageModel):
    """Material field + camera-attached spot lights + ambient + camera response (module docstring).

    Args:
        field: a :class:`MaterialField` with 6 outputs.
        lights: the start lights (camera frame).
        ambient: ``(3,)`` start ambient radiance, > 0.
        response: the camera response.
        metallic: let the field use the metallic channel (tissue: off).
        learn_light_pose: fit light positions and axes too.
    """

    kind = "pbr"

    def __init__(self, field: MaterialField, lights: Sequence[SpotLight], ambient: torch.Tensor,
                 response: Response, *, metallic: bool = False, learn_light_pose: bool = True) -> None:
        super().__init__()
        if field.outputs != 6:
            raise ValueError(f"the PBR material field needs 6 outputs, got {field.outputs}")
        self.field = field
        self.lights = SpotLights(lights)
        self.lights.position.requires_grad_(learn_light_pose)
        self.lights.direction.requires_grad_(learn_light_pose)
        self.log_ambient = nn.Parameter(torch.as_tensor(ambient, dtype=torch.float32).clamp_min(1e-12).log())
        self.response = response
        self.metallic = metallic

    def material(self, points_world: torch.Tensor) -> Material:
        """The material at ``(n, 3)`` world points."""
        return material_from_raw(self.field(points_world), self.metallic)

    def radiance(self, frame: FrameBuffers, raw: torch.Tensor | None = None, *,
                 material: Material | None = None) -> torch.Tensor:
        """``(n, 3)`` linear radiance towards the camera at the frame's hit pixels.

        ``material`` (per point) replaces the field's, e.g. the true one in tests.
        """
        if material is None:
            material = material_from_raw(self.field(frame.points_world) if raw is None else raw, self.metallic)
        lights = self.lights()
        visibility = None
        if frame.visibility is not None:
            visibility = [frame.visibility[:, k:k + 1] for k in range(len(lights))]
        return shade_points(frame.points_cam, frame.normals_cam, material, lights, self.log_ambient.exp(),
                            visibility=visibility)

    @torch.no_grad()
    def scale_light(self, gain: torch.Tensor) -> None:
        """Multiply intensities and ambient by ``gain`` ``(3,)`` (used to start at the right brightness)."""
        self.lights.log_intensity.add_(gain.log())
        self.log_ambient.add_(gain.log())

    def fitted_lights(self) -> list[SpotLight]:
        """The lights as plain (detached) :class:`SpotLight`."""
        return [SpotLight(l.position.detach(), l.direction.detach(), l.intensity.detach(), l.falloff.detach())
                for l in self.lights()]


class BakedModel(_ImageModel):
    """The light-baked baseline: a radiance field per point, the same camera response, no light model."""

    kind = "baked"

    def __init__(self, field: MaterialField, response: Response) -> None:
        super().__init__()
        if field.outputs != 3:
            raise ValueError(f"the baked radiance field needs 3 outputs, got {field.outputs}")
        self.field = field
        self.response = response
        self.register_buffer("scale", torch.ones(3))

    def radiance(self, frame: FrameBuffers, raw: torch.Tensor | None = None) -> torch.Tensor:
        return radiance_from_raw(self.field(frame.points_world) if raw is None else raw, self.scale)

    @torch.no_grad()
    def scale_light(self, gain: torch.Tensor) -> None:
        self.scale.mul_(gain)


def linearize(image: torch.Tensor, gamma: str | float) -> torch.Tensor:
    """Displayed values -> linear signal: the inverse of the gamma curve (sRGB or ``y^gamma``)."""
    return srgb_decode(image) if isinstance(gamma, str) else image.clamp_min(0) ** float(gamma)


def brightness_gain(model: _ImageModel, frames: Sequence[FrameBuffers], height: int, width: int,
                    K: torch.Tensor, saturation: float = 0.98) -> torch.Tensor:
    """``(3,)`` factor that brings the model's mean linear signal to the targets' (non-saturated tissue pixels)."""
    predicted, observed = torch.zeros(3), torch.zeros(3)
    with torch.no_grad():
        for f in frames:
            keep = (f.weight > 0) & (f.target.amax(dim=1) < saturation)
            if not bool(keep.any()):
                continue
            gain = model.response.linear_gain(f.index, f.pixels[keep], height, width, K)
            predicted += (model.radiance(f)[keep] * gain).sum(dim=0)
            observed += linearize(f.target[keep], model.response.gamma).sum(dim=0)
    return (observed / predicted.clamp_min(1e-12)).clamp(1e-6, 1e6)
