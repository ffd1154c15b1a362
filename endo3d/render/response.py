"""The camera: linear radiance to displayed sRGB.

Renderers produce linear radiance (``CONVENTIONS.md``); this module models
what the endoscope camera does to it before an 8-bit sRGB image is stored::

    x = radiance * exposure * white_balance * v(r)        linear sensor signal
    x = x + sqrt(max(a x + b, 0)) * eps,  eps ~ N(0, 1)    Poisson-Gaussian noise
    x = clamp(x, 0, 1)                                     saturation
    y = srgb_encode(x)  or  x^(1 / gamma)                  display encoding

with the radial vignetting ``v(r) = max(1 + k1 r^2 + k2 r^4, 0)``, where
``r`` is the distance of the pixel centre from the principal point divided
by half the image diagonal (``r = 1`` at a corner for a centred principal
point). The noise variance ``a x + b`` is in normalised signal units (a
signal of 1 saturates), so ``a`` is the shot-noise gain and ``b`` the read
noise variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from endo3d.core import check_shape

# The safe power of the falloff model serves the gamma encoding too.
from endo3d.render.lights import _positive_pow

__all__ = [
    "CameraResponse",
    "CameraResponseModule",
    "apply_response",
    "srgb_decode",
    "srgb_encode",
    "to_uint8",
    "vignetting_map",
]

#: IEC 61966-2-1: linear values up to this are encoded as ``12.92 x``.
SRGB_LINEAR_MAX = 0.0031308
#: ... and encoded values up to this are decoded as ``y / 12.92``.
SRGB_ENCODED_MAX = 0.04045


def srgb_encode(x: torch.Tensor) -> torch.Tensor:
    """Linear to sRGB (IEC 61966-2-1), elementwise.

    ``12.92 x`` for ``x <= 0.0031308``, else ``1.055 x^(1/2.4) - 0.055``
    (evaluated as ``p + 0.055 (p - 1)``, ``p = x^(1/2.4)``, so 1 maps to 1
    exactly). Differentiable everywhere with finite gradients (12.92 at 0).

    Example:
        >>> srgb_encode(torch.tensor([0.0, 0.5, 1.0]))
        tensor([0.0000, 0.7354, 1.0000])
    """
    power = x.clamp_min(SRGB_LINEAR_MAX).pow(1 / 2.4)
    return torch.where(x <= SRGB_LINEAR_MAX, 12.92 * x, torch.add(power, power - 1, alpha=0.055))


def srgb_decode(y: torch.Tensor) -> torch.Tensor:
    """sRGB to linear, the inverse of :func:`srgb_encode`.

    ``y / 12.92`` for ``y <= 0.04045``, else ``((y + 0.055) / 1.055)^2.4``.
    """
    power = ((y.clamp_min(SRGB_ENCODED_MAX) + 0.055) / 1.055).pow(2.4)
    return torch.where(y <= SRGB_ENCODED_MAX, y / 12.92, power)


def _to_float(value: float | torch.Tensor) -> float | list[float]:
    """A number, or a list of numbers for a tensor with dims."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return float(value) if value.dim() == 0 else [float(v) for v in value.reshape(-1)]
    return float(value)


def _as_list(values: Sequence[float] | torch.Tensor) -> list[float]:
    """Plain floats from a sequence or a 1-dim tensor."""
    return [float(v) for v in (values.detach().cpu() if isinstance(values, torch.Tensor) else values)]


@dataclass(frozen=True, eq=False)
class CameraResponse:
    """Settings of the camera response (module docstring).

    Tensor values (e.g. from :class:`CameraResponseModule`) are allowed
    where noted and keep their gradients.

    Attributes:
        exposure: overall gain, > 0; a float or a tensor ``()`` or ``(B,)``
            (one per image).
        white_balance: ``(3,)`` per-channel gains, > 0.
        vignetting: ``(k1, k2)`` of ``v(r) = max(1 + k1 r^2 + k2 r^4, 0)``;
            ``(0, 0)`` for none. Floats or 0-dim tensors.
        noise_shot: ``a`` >= 0 of the noise variance ``a x + b``.
        noise_read: ``b`` >= 0 of the noise variance ``a x + b``.
        gamma: ``"srgb"`` for the sRGB curve, or an exponent > 0 (float or
            0-dim tensor) for ``x^(1 / gamma)``.
    """

    exposure: float | torch.Tensor = 1.0
    white_balance: Sequence[float] | torch.Tensor = (1.0, 1.0, 1.0)
    vignetting: tuple[float | torch.Tensor, float | torch.Tensor] = (0.0, 0.0)
    noise_shot: float = 0.0
    noise_read: float = 0.0
    gamma: str | float | torch.Tensor = "srgb"

    def __post_init__(self) -> None:
        if isinstance(self.gamma, str) and self.gamma != "srgb":
            raise ValueError(f"gamma must be 'srgb' or a number, got {self.gamma!r}")
        if self.noise_shot < 0 or self.noise_read < 0:
            raise ValueError(f"noise parameters must be >= 0, got {self.noise_shot}, {self.noise_read}")
        if len(self.white_balance) != 3 or len(self.vignetting) != 2:
            raise ValueError("white_balance needs 3 values and vignetting 2")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (tensors become numbers or lists).

        Example:
            >>> CameraResponse(exposure=2.0).to_json()["exposure"]
            2.0
        """
        return {
            "exposure": _to_float(self.exposure),
            "white_balance": _as_list(self.white_balance),
            "vignetting": [_to_float(k) for k in self.vignetting],
            "noise_shot": float(self.noise_shot),
            "noise_read": float(self.noise_read),
            "gamma": self.gamma if isinstance(self.gamma, str) else _to_float(self.gamma),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "CameraResponse":
        """Read what :meth:`to_json` wrote; missing keys take the defaults."""
        exposure = d.get("exposure", 1.0)
        gamma = d.get("gamma", "srgb")
        k1, k2 = d.get("vignetting", (0.0, 0.0))
        return cls(
            exposure=torch.tensor(exposure) if isinstance(exposure, list) else float(exposure),
            white_balance=tuple(float(v) for v in d.get("white_balance", (1.0, 1.0, 1.0))),
            vignetting=(float(k1), float(k2)),
            noise_shot=float(d.get("noise_shot", 0.0)),
            noise_read=float(d.get("noise_read", 0.0)),
            gamma=gamma if isinstance(gamma, str) else float(gamma),
        )


def vignetting_map(
    height: int, width: int, K: torch.Tensor, k1: float | torch.Tensor, k2: float | torch.Tensor
) -> torch.Tensor:
    """Radial vignetting ``v(r) = max(1 + k1 r^2 + k2 r^4, 0)`` at every pixel centre.

    ``r^2 = ((u - cx)^2 + (v - cy)^2) / ((W^2 + H^2) / 4)`` with the pixel
    centre ``(u, v)`` in OpenCV pixel coordinates and ``(cx, cy)`` from ``K``.

    Args:
        height, width: image size in pixels.
        K: ``(3, 3)`` intrinsics in pixels; its dtype and device are used.
        k1, k2: coefficients, floats or 0-dim tensors.

    Returns:
        ``(1, 1, H, W)``, 1 at the principal point.
    """
    check_shape(K, "3 3", "K")
    u = torch.arange(width, dtype=K.dtype, device=K.device) - K[0, 2]
    v = torch.arange(height, dtype=K.dtype, device=K.device) - K[1, 2]
    r2 = (u.square() + v.square().unsqueeze(-1)) / ((width**2 + height**2) / 4)
    return (1 + k1 * r2 + k2 * r2.square()).clamp_min(0).reshape(1, 1, height, width)


def _encode(x: torch.Tensor, gamma: str | float | torch.Tensor) -> torch.Tensor:
    if isinstance(gamma, str):
        return srgb_encode(x)
    return _positive_pow(x, 1 / torch.as_tensor(gamma, dtype=x.dtype, device=x.device))


def apply_response(
    radiance: torch.Tensor,
    response: CameraResponse,
    K: torch.Tensor | np.ndarray,
    *,
    generator: torch.Generator | None = None,
    noise: bool = True,
) -> torch.Tensor:
    """Linear radiance to the displayed image in [0, 1] (module docstring).

    Args:
        radiance: ``(B, 3, H, W)`` linear radiance, >= 0.
        response: the camera settings.
        K: ``(3, 3)`` intrinsics in pixels (for the vignetting centre); a
            tensor or an array such as ``Camera.K``.
        generator: source of the noise ``eps``, on ``radiance``'s device;
            ``None`` for torch's global one.
        noise: add the Poisson-Gaussian noise (skipped anyway when
            ``a = b = 0``).

    Returns:
        ``(B, 3, H, W)`` encoded image in [0, 1] (sRGB or ``x^(1/gamma)``).
    """
    check_shape(radiance, "B 3 H W", "radiance")
    batch, _, height, width = radiance.shape
    like = {"dtype": radiance.dtype, "device": radiance.device}
    exposure = torch.as_tensor(response.exposure, **like)
    if exposure.dim() == 1:
        check_shape(exposure, str(batch), "response.exposure")
        exposure = exposure.reshape(batch, 1, 1, 1)
    white_balance = torch.as_tensor(response.white_balance, **like).reshape(1, 3, 1, 1)
    k1, k2 = response.vignetting
    vignetting = vignetting_map(height, width, torch.as_tensor(K, **like), k1, k2)
    x = radiance * (exposure * white_balance) * vignetting
    if noise and (response.noise_shot > 0 or response.noise_read > 0):
        variance = response.noise_shot * x + response.noise_read
        std = torch.where(variance > 0, variance.clamp_min(1e-30).sqrt(), 0.0)
        eps = torch.randn(x.shape, generator=generator, **like)
        x = torch.addcmul(x, std, eps)
    return _encode(x.clamp(0, 1), response.gamma)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in [0, 1] to ``(B, H, W, 3)`` uint8, rounding halves up.

    ``value = floor(255 x + 0.5)`` after clamping ``x`` to [0, 1].

    Example:
        >>> to_uint8(torch.full((1, 3, 1, 1), 0.5))[0, 0, 0]
        array([128, 128, 128], dtype=uint8)
    """
    check_shape(image, "B 3 H W", "image")
    scaled = torch.floor(image.detach().to(torch.float64).clamp(0, 1) * 255 + 0.5)
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class CameraResponseModule(nn.Module):
    """A :class:`CameraResponse` with learnable parameters.

    Parameters:

    - ``log_exposure ()`` or ``(B,)``: ``exposure = exp(log_exposure)``.
    - ``log_white_balance (3,)``: ``white_balance = exp(log_white_balance)``.
    - ``vignetting (2,)``: ``(k1, k2)`` as is.
    - ``log_gamma ()``: ``gamma = exp(log_gamma)``, only when the response
      has a numeric gamma; an ``"srgb"`` response keeps the fixed sRGB curve.

    The noise settings are fixed (kept as plain floats).

    Example:
        >>> module = CameraResponseModule(CameraResponse(exposure=2.0, gamma=2.2))
        >>> sorted(name for name, _ in module.named_parameters())
        ['log_exposure', 'log_gamma', 'log_white_balance', 'vignetting']
    """

    def __init__(self, response: CameraResponse) -> None:
        super().__init__()
        exposure = torch.as_tensor(response.exposure, dtype=torch.get_default_dtype()).detach()
        white_balance = torch.tensor(_as_list(response.white_balance))
        if (exposure <= 0).any() or (white_balance <= 0).any():
            raise ValueError("exposure and white balance must be > 0")
        self.log_exposure = nn.Parameter(exposure.log())
        self.log_white_balance = nn.Parameter(white_balance.log())
        self.vignetting = nn.Parameter(torch.tensor([float(k) for k in response.vignetting]))
        self.log_gamma = None if isinstance(response.gamma, str) else nn.Parameter(
            torch.tensor(math.log(float(response.gamma)))
        )
        self.noise_shot = float(response.noise_shot)
        self.noise_read = float(response.noise_read)

    def to_response(self) -> CameraResponse:
        """The current settings (tensors that carry gradients to the parameters)."""
        return CameraResponse(
            exposure=self.log_exposure.exp(),
            white_balance=self.log_white_balance.exp(),
            vignetting=(self.vignetting[0], self.vignetting[1]),
            noise_shot=self.noise_shot,
            noise_read=self.noise_read,
            gamma="srgb" if self.log_gamma is None else self.log_gamma.exp(),
        )

    def forward(
        self,
        radiance: torch.Tensor,
        K: torch.Tensor | np.ndarray,
        *,
        generator: torch.Generator | None = None,
        noise: bool = True,
    ) -> torch.Tensor:
        """:func:`apply_response` with the current settings; ``(B, 3, H, W)`` in [0, 1]."""
        return apply_response(radiance, self.to_response(), K, generator=generator, noise=noise)
