"""The masked L1 + SSIM photometric loss: reference maths on the CPU, fused kernel vs reference on a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from endo3d.kernels.ssim import (
    _blur, _gaussian_window, photometric_loss, photometric_loss_reference, ssim_map)

R = 5  # half width of the 11-tap window, px
C1, C2 = 0.01 ** 2, 0.03 ** 2


def images(c: int, h: int, w: int, mask: str, seed: int, device: str = "cpu", dtype=torch.float32):
    """A target, a render correlated with it (SSIM well inside (0, 1)) and a mask of the given kind."""
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(c, h, w, generator=g, dtype=torch.float64)
    render = 0.6 * target + 0.4 * torch.rand(c, h, w, generator=g, dtype=torch.float64)
    if mask == "random":
        m = torch.rand(1, h, w, generator=g) < 0.7
    elif mask == "disc":  # an endoscope's field of view
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        m = ((y - h / 2) ** 2 + (x - w / 2) ** 2 < (0.45 * min(h, w)) ** 2)[None]
    else:
        m = torch.full((1, h, w), mask == "all")
    return render.to(device, dtype), target.to(device, dtype), m.to(device)


def loss_and_grad(fn, render, target, mask, weight):
    render = render.detach().clone().requires_grad_()
    loss = fn(render, target, mask, weight)
    (grad,) = torch.autograd.grad(loss, render)
    return loss.detach(), grad


def half_window() -> list[float]:
    """w[e], the normalised Gaussian (sigma 1.5) at offset +-e, computed independently of the module."""
    g = [math.exp(-e * e / (2 * 1.5 ** 2)) for e in range(-R, R + 1)]
    return [g[R + e] / sum(g) for e in range(R + 1)]


def adjoint_matrix(n: int) -> torch.Tensor:
    """K[j, i] of cuda_ext/ssim.cu's adjoint_tap: the adjoint of the 1-D reflect-padded blur of length n."""
    w, k = half_window(), torch.zeros(n, n, dtype=torch.float64)
    for j in range(n):
        for i in range(max(0, j - R), min(n, j + R + 1)):
            k[j, i] = w[abs(j - i)]
            if j >= 1 and j + i <= R:
                k[j, i] += w[j + i]
            if j <= n - 2 and 2 * (n - 1) - j - i <= R:
                k[j, i] += w[2 * (n - 1) - j - i]
    return k


def kernel_algorithm(render, target, mask, weight):
    """Loss and d loss / d render by the steps of cuda_ext/ssim.cu, in the inputs' dtype.

    Forward: blurred statistics, SSIM, the derivative maps m dS/dmu_a,
    m dS/dE[a^2], m dS/dE[a t]. Backward: their adjoint blurs (adjoint_matrix
    along y and x), combined with the render and the target, plus the L1 sign.
    """
    m = mask.to(render.dtype).expand_as(render)
    a, b = torch.where(mask, render, target), target
    mu_a, mu_b, saa, sbb, sab = _blur(torch.cat([a, b, a * a, b * b, a * b]), _gaussian_window(11, 1.5, a)).split(
        a.shape[0])
    a1, a2 = 2 * mu_a * mu_b + C1, 2 * (sab - mu_a * mu_b) + C2
    b1, b2 = mu_a ** 2 + mu_b ** 2 + C1, saa - mu_a ** 2 + sbb - mu_b ** 2 + C2
    inv = 1 / (b1 * b2)
    s = a1 * a2 * inv
    d_mu, d_aa, d_ab = m * 2 * inv * (mu_b * (a2 - a1) + mu_a * s * (b1 - b2)), m * -s / b2, m * 2 * a1 * inv
    inv_count = 1 / m.sum().clamp_min(1)
    loss = ((1 - weight) * (m * (render - target).abs()).sum() + weight * (m * (1 - s)).sum()) * inv_count
    ky, kx = (adjoint_matrix(n).to(render.dtype) for n in render.shape[1:])
    adj = [ky @ d @ kx.T for d in (d_mu, d_aa, d_ab)]
    grad = m * inv_count * ((1 - weight) * torch.sign(render - target)
                            - weight * (adj[0] + 2 * render * adj[1] + target * adj[2]))
    return loss, grad


# --- CPU: the reference and the kernel's maths ---------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("mask", ["random", "all", "none"])
def test_dispatch_on_cpu_is_the_reference_bitwise(mask, weight):
    render, target, m = images(3, 13, 17, mask, seed=1)
    loss, grad = loss_and_grad(photometric_loss, render, target, m, weight)
    ref_loss, ref_grad = loss_and_grad(photometric_loss_reference, render, target, m, weight)
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)


@pytest.mark.parametrize("border", ["reflect", "zeros"])
def test_reference_ssim_matches_a_brute_force_window(border):
    a, b, _ = images(2, 7, 9, "all", seed=2, dtype=torch.float64)
    w = half_window()
    c, h, wd = a.shape
    brute = torch.empty_like(a)
    refl = lambda j, n: -j if j < 0 else (2 * (n - 1) - j if j > n - 1 else j)  # noqa: E731
    inside = lambda j, n: 0 <= j < n  # noqa: E731
    for y in range(h):
        for x in range(wd):
            if border == "reflect":
                taps = [(w[abs(dy)] * w[abs(dx)], refl(y + dy, h), refl(x + dx, wd))
                        for dy in range(-R, R + 1) for dx in range(-R, R + 1)]
            else:  # outside pixels are 0, so they drop out of every local sum
                taps = [(w[abs(dy)] * w[abs(dx)], y + dy, x + dx) for dy in range(-R, R + 1)
                        for dx in range(-R, R + 1) if inside(y + dy, h) and inside(x + dx, wd)]
            for k in range(c):
                mean = lambda f: sum(g * f(k, yy, xx) for g, yy, xx in taps)  # noqa: E731
                mu_a, mu_b = mean(lambda k, i, j: a[k, i, j]), mean(lambda k, i, j: b[k, i, j])
                var_a = mean(lambda k, i, j: a[k, i, j] ** 2) - mu_a ** 2
                var_b = mean(lambda k, i, j: b[k, i, j] ** 2) - mu_b ** 2
                cov = mean(lambda k, i, j: a[k, i, j] * b[k, i, j]) - mu_a * mu_b
                brute[k, y, x] = ((2 * mu_a * mu_b + C1) * (2 * cov + C2)
                                  / ((mu_a ** 2 + mu_b ** 2 + C1) * (var_a + var_b + C2)))
    assert torch.allclose(ssim_map(a, b, border=border), brute, rtol=0, atol=1e-12)


def test_ssim_of_identical_images_is_one():
    a, _, _ = images(3, 12, 10, "all", seed=3)
    assert torch.allclose(ssim_map(a, a), torch.ones_like(a), atol=1e-6)


@pytest.mark.parametrize("n", range(6, 22))
def test_adjoint_taps_are_the_transpose_of_the_reflect_padded_blur(n):
    # columns of the forward blur: blur of the unit impulses along x (H = 6 rows, the impulse in all of them)
    eye = torch.eye(n, dtype=torch.float64)[:, None, :].expand(n, 6, n).contiguous()
    forward = _blur(eye, _gaussian_window(11, 1.5, eye))[:, 0, :]  # forward[j, i] = d y[i] / d x[j]
    assert torch.allclose(adjoint_matrix(n), forward, rtol=0, atol=1e-15)


@pytest.mark.parametrize("size", [(6, 6), (7, 9), (13, 8), (20, 24)])
@pytest.mark.parametrize("weight", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("mask", ["random", "disc", "all", "none"])
def test_kernel_algorithm_matches_autograd_of_the_reference(size, weight, mask):
    render, target, m = images(3, *size, mask, seed=4, dtype=torch.float64)
    ref_loss, ref_grad = loss_and_grad(photometric_loss_reference, render, target, m, weight)
    loss, grad = kernel_algorithm(render, target, m, weight)
    assert torch.allclose(loss, ref_loss, rtol=1e-12, atol=1e-15)
    assert torch.allclose(grad, ref_grad, rtol=0, atol=1e-14)


def test_empty_mask_gives_zero_loss_and_gradient():
    render, target, m = images(3, 9, 11, "none", seed=5)
    loss, grad = loss_and_grad(photometric_loss, render, target, m, 0.2)
    assert float(loss) == 0.0 and not grad.any()


# --- GPU: the fused kernel against the float64 reference -----------------------------------------------------

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def assert_matches_reference(render, target, mask, weight):
    loss, grad = loss_and_grad(photometric_loss, render, target, mask, weight)
    ref_loss, ref_grad = loss_and_grad(photometric_loss_reference, render.double(), target.double(), mask, weight)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss)) + 1e-7, (float(loss), float(ref_loss))
    err = float((grad.double() - ref_grad).norm())
    assert err <= 1e-4 * float(ref_grad.norm()) + 1e-12, (err, float(ref_grad.norm()))


@pytest.mark.parametrize("size", [(6, 6), (7, 9), (6, 40), (17, 33), (16, 32), (33, 65), (128, 160), (512, 640)])
@pytest.mark.parametrize("weight", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("mask", ["random", "disc", "all", "none"])
@pytest.mark.cuda
@requires_cuda
def test_fused_matches_reference(kernels, size, weight, mask):
    seed = 1000 * size[0] + size[1] + int(10 * weight)
    assert_matches_reference(*images(3, *size, mask, seed=seed, device="cuda"), weight)


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.cuda
@requires_cuda
def test_fused_any_channel_count(kernels, channels):
    assert_matches_reference(*images(channels, 37, 50, "random", seed=channels, device="cuda"), 0.2)


@pytest.mark.cuda
@requires_cuda
def test_fused_is_deterministic_and_skips_derivative_maps_without_grad(kernels):
    render, target, mask = images(3, 100, 90, "disc", seed=6, device="cuda")
    first = loss_and_grad(photometric_loss, render, target, mask, 0.2)
    second = loss_and_grad(photometric_loss, render, target, mask, 0.2)
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    with torch.no_grad():
        assert torch.equal(photometric_loss(render, target, mask, 0.2), first[0])
    _, _, dmaps = kernels.ssim_l1_forward(render, target, mask, 0.2, False)
    assert dmaps.numel() == 0


@pytest.mark.cuda
@requires_cuda
def test_fused_non_contiguous_inputs(kernels):
    render, target, mask = images(3, 40, 30, "random", seed=7, device="cuda")
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (render, target, mask)]  # same values
    assert not any(x.is_contiguous() for x in strided)
    loss, grad = loss_and_grad(photometric_loss, *strided, 0.2)
    ref_loss, ref_grad = loss_and_grad(photometric_loss, render, target, mask, 0.2)
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)


@pytest.mark.cuda
@requires_cuda
def test_fused_small_and_empty_images(kernels):
    render, target, mask = images(3, 5, 8, "random", seed=8, device="cuda")
    with pytest.raises(RuntimeError, match="[Pp]adding size"):  # the reference's F.pad(mode="reflect")
        photometric_loss(render, target, mask, 0.2)
    assert_matches_reference(render, target, mask, 0.0)  # no SSIM, no border: any size
    for shape in [(3, 0, 0), (0, 8, 8)]:
        empty = torch.zeros(shape, device="cuda")
        full = torch.ones(1, *shape[1:], dtype=torch.bool, device="cuda")
        loss, grad = loss_and_grad(photometric_loss, empty, empty, full, 0.2)
        assert float(loss) == 0.0 and grad.shape == shape


@pytest.mark.cuda
@requires_cuda
def test_fused_leaves_a_target_that_requires_grad_to_the_reference(kernels):
    render, target, mask = images(3, 20, 20, "random", seed=9, device="cuda")
    target.requires_grad_()
    photometric_loss(render, target, mask, 0.2).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0
