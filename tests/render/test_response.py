"""The camera response: linear radiance to displayed sRGB (endo3d.render.response)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from endo3d.core import ShapeError
from endo3d.render.response import (
    CameraResponse,
    CameraResponseModule,
    apply_response,
    srgb_decode,
    srgb_encode,
    to_uint8,
    vignetting_map,
)

F64 = torch.float64


def _K(width: int, height: int, dtype=F64) -> torch.Tensor:
    return torch.tensor([[100.0, 0.0, (width - 1) / 2], [0.0, 100.0, (height - 1) / 2], [0.0, 0.0, 1.0]], dtype=dtype)


def test_srgb_known_values_and_round_trip() -> None:
    x = torch.tensor([0.0, 0.0031308, 0.5, 1.0], dtype=F64)
    assert torch.allclose(srgb_encode(x), torch.tensor([0.0, 0.04045, 0.735357, 1.0], dtype=F64), atol=2e-6)
    assert srgb_decode(torch.tensor(0.5, dtype=F64)).item() == pytest.approx(0.214041, abs=1e-6)
    grid = torch.linspace(0, 1, 10001, dtype=F64)
    assert torch.allclose(srgb_decode(srgb_encode(grid)), grid, atol=1e-12)
    assert torch.allclose(srgb_encode(srgb_decode(grid)), grid, atol=1e-12)
    assert (srgb_encode(grid).diff() > 0).all()


def test_srgb_gradient_is_finite_at_zero() -> None:
    x = torch.zeros(3, dtype=F64, requires_grad=True)
    srgb_encode(x).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), 12.92, dtype=F64))
    y = torch.zeros(3, dtype=F64, requires_grad=True)
    srgb_decode(y).sum().backward()
    assert torch.allclose(y.grad, torch.full((3,), 1 / 12.92, dtype=F64))
    inner = torch.tensor([0.001, 0.01, 0.3, 0.9], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(srgb_encode, (inner,))
    assert torch.autograd.gradcheck(srgb_decode, (inner,))


def test_vignetting_map() -> None:
    H, W = 9, 13
    K = _K(W, H)
    v = vignetting_map(H, W, K, -0.3, 0.05)
    assert v.shape == (1, 1, H, W)
    assert v[0, 0, 4, 6].item() == 1.0  # the principal point
    # r = 1 at a corner of a centred camera (half the diagonal from the centre)
    assert v[0, 0, 0, 0].item() == pytest.approx(
        1 - 0.3 * ((6**2 + 4**2) / ((13**2 + 9**2) / 4)) + 0.05 * ((6**2 + 4**2) / ((13**2 + 9**2) / 4)) ** 2
    )
    assert (vignetting_map(H, W, K, -5.0, 0.0) >= 0).all()
    off = K.clone()
    off[0, 2], off[1, 2] = 2.0, 3.0
    assert vignetting_map(H, W, off, -0.5, 0.1)[0, 0, 3, 2].item() == 1.0


def test_apply_response_without_noise() -> None:
    B, H, W = 2, 4, 6
    radiance = torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(0), dtype=F64)
    response = CameraResponse(exposure=1.5, white_balance=(1.0, 0.8, 1.2), gamma="srgb")
    out = apply_response(radiance, response, _K(W, H))
    linear = (radiance * 1.5 * torch.tensor([1.0, 0.8, 1.2], dtype=F64).view(1, 3, 1, 1)).clamp(0, 1)
    assert torch.allclose(out, srgb_encode(linear))
    assert out.max() <= 1 and out.min() >= 0
    assert torch.equal(apply_response(radiance, response, _K(W, H).numpy()), out)
    # a numeric gamma, and one exposure per image
    per_image = CameraResponse(exposure=torch.tensor([0.5, 2.0], dtype=F64), gamma=2.2)
    out = apply_response(radiance, per_image, _K(W, H))
    scale = torch.tensor([0.5, 2.0], dtype=F64).view(2, 1, 1, 1)
    assert torch.allclose(out, (radiance * scale).clamp(0, 1) ** (1 / 2.2))


def test_saturation_and_vignetting_applied() -> None:
    H, W = 5, 5
    flat = torch.full((1, 3, H, W), 0.25)
    out = apply_response(flat, CameraResponse(vignetting=(-0.5, 0.0), gamma=1.0), _K(W, H, torch.float32))
    assert out[0, :, 2, 2].tolist() == pytest.approx([0.25] * 3)
    assert (out[0, :, 0, 0] < 0.25).all()
    bright = apply_response(flat * 100, CameraResponse(), _K(W, H))
    assert (bright == 1).all() and bright.dtype == torch.float32


def test_noise_statistics() -> None:
    # Flat linear signal x: the noisy output has mean x and variance a x + b.
    x, a, b = 0.3, 0.01, 1e-4
    flat = torch.full((1, 3, 512, 512), x, dtype=F64)
    response = CameraResponse(noise_shot=a, noise_read=b, gamma=1.0)
    out = apply_response(flat, response, _K(512, 512), generator=torch.Generator().manual_seed(0))
    assert out.mean().item() == pytest.approx(x, abs=1e-3)
    assert out.var().item() == pytest.approx(a * x + b, rel=0.05)
    same = apply_response(flat, response, _K(512, 512), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    assert torch.equal(apply_response(flat, response, _K(512, 512), noise=False), flat)


def test_gradcheck_apply_response() -> None:
    H, W = 3, 4
    radiance = (0.1 + 0.5 * torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(1), dtype=F64))
    K = _K(W, H)

    def fn(radiance, exposure, white_balance, k1, k2, gamma):
        response = CameraResponse(exposure, white_balance, (k1, k2), gamma=gamma)
        return apply_response(radiance, response, K, noise=False)

    leaf = lambda v: torch.tensor(v, dtype=F64, requires_grad=True)  # noqa: E731
    inputs = (radiance.requires_grad_(), leaf([1.1, 0.9]), leaf([1.0, 0.9, 1.1]), leaf(-0.2), leaf(0.05), leaf(2.2))
    assert torch.autograd.gradcheck(fn, inputs)

    def srgb(radiance, exposure, white_balance, k1, k2):
        return apply_response(radiance, CameraResponse(exposure, white_balance, (k1, k2)), K, noise=False)

    assert torch.autograd.gradcheck(srgb, inputs[:5])


def test_to_uint8_rounds_half_up() -> None:
    values = torch.tensor([0.0, 0.5, 1.0, 1.5 / 255, 2.49 / 255, -0.2, 1.3])
    image = values.view(1, 1, 1, -1).expand(1, 3, 1, -1)
    out = to_uint8(image)
    assert out.shape == (1, 1, 7, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 128, 255, 2, 2, 0, 255]
    with pytest.raises(ShapeError):
        to_uint8(torch.zeros(1, 4, 2, 2))


def test_json_round_trip() -> None:
    response = CameraResponse(1.7, (1.0, 0.9, 1.1), (-0.2, 0.03), 0.01, 1e-4, 2.2)
    back = CameraResponse.from_json(json.loads(json.dumps(response.to_json())))
    assert back.to_json() == response.to_json()
    assert CameraResponse.from_json(CameraResponse().to_json()).gamma == "srgb"
    with pytest.raises(ValueError):
        CameraResponse(gamma="linear")
    with pytest.raises(ValueError):
        CameraResponse(noise_shot=-1.0)


@pytest.mark.parametrize("gamma", ["srgb", 2.0])
def test_module_matches_function(gamma) -> None:
    response = CameraResponse(
        exposure=torch.tensor([1.2, 0.8]), white_balance=(1.1, 1.0, 0.9), vignetting=(-0.3, 0.05), gamma=gamma
    )
    module = CameraResponseModule(response).double()
    radiance = 0.6 * torch.rand(2, 3, 6, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    K = _K(8, 6)
    expected = apply_response(radiance, response, K, noise=False)
    out = module(radiance, K, noise=False)
    assert torch.allclose(out, expected, atol=1e-7)
    out.sum().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    learned = module.to_response().to_json()
    for key, value in response.to_json().items():
        assert learned[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-6)), key
