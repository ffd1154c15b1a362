"""Differentiable shading for endoscopy: spot lights, a metal-rough BRDF, the camera response.

Renderers compute linear radiance (:func:`shade`, :func:`shade_image`); the
camera response (:func:`apply_response`) turns it into displayed sRGB. Units
and frames follow ``CONVENTIONS.md`` (mm, OpenCV camera frame).
"""

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
from endo3d.render.lights import FALLOFF_MIN, INTENSITY_MIN, SPOT_MODEL, SpotLight, SpotLights, spot_irradiance
from endo3d.render.response import (
    CameraResponse,
    CameraResponseModule,
    apply_response,
    srgb_decode,
    srgb_encode,
    to_uint8,
    vignetting_map,
)
from endo3d.render.shading import shade, shade_image

__all__ = [
    "ALPHA_MIN",
    "CameraResponse",
    "CameraResponseModule",
    "FALLOFF_MIN",
    "INTENSITY_MIN",
    "Material",
    "SPOT_MODEL",
    "SpotLight",
    "SpotLights",
    "apply_response",
    "brdf",
    "fresnel_schlick",
    "ggx_ndf",
    "roughness_to_alpha",
    "shade",
    "shade_image",
    "smith_g",
    "smith_visibility",
    "spot_irradiance",
    "srgb_decode",
    "srgb_encode",
    "to_uint8",
    "vignetting_map",
]
