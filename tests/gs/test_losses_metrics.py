"""Losses and metrics against hand-computed values."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from endo3d.gs.losses import (
    inverse_depth_l1, masked_mean, pearson_depth_loss, photometric_loss, ssim_map, total_variation)
from endo3d.gs.metrics import PSNR_CAP_DB, image_metrics, psnr


def test_masked_mean_ignores_masked_pixels():
    x = torch.tensor([[[1.0, 100.0], [3.0, 100.0]]])
    mask = torch.tensor([[[True, False], [True, False]]])
    assert masked_mean(x, mask) == 2.0
    assert masked_mean(x, torch.zeros_like(mask)) == 0.0


def test_photometric_loss_zero_for_equal_images_whatever_the_masked_pixels():
    torch.manual_seed(0)
    target = torch.rand(3, 24, 32)
    render = target.clone()
    mask = torch.ones(1, 24, 32, dtype=torch.bool)
    mask[:, :, :10] = False
    render[:, :, :10] = 0.0  # garbage under the mask
    assert float(photometric_loss(render, target, mask, 0.2)) < 1e-6
    render[:, :, 20] += 0.1
    assert float(photometric_loss(render, target, mask, 0.0)) > 0


def test_inverse_depth_l1_value_and_scale_invariance():
    target = torch.full((1, 4, 4), 100.0)
    depth = torch.full((1, 4, 4), 50.0)
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    # m = 100: |100/50 - 100/100| = 1
    assert abs(float(inverse_depth_l1(depth, target, mask)) - 1.0) < 1e-6
    # the same in metres
    assert abs(float(inverse_depth_l1(depth / 1000, target / 1000, mask)) - 1.0) < 1e-5
    # invalid target pixels do not count
    target[0, 0, 0] = 0
    depth[0, 0, 0] = 1e-3
    assert abs(float(inverse_depth_l1(depth, target, mask)) - 1.0) < 1e-6


def test_pearson_is_affine_invariant():
    torch.manual_seed(1)
    depth = torch.rand(1, 8, 8) * 50 + 50
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    target = 3 * (1 / depth) + 0.2
    assert float(pearson_depth_loss(depth, target, mask)) < 1e-5
    assert float(pearson_depth_loss(depth, torch.rand(1, 8, 8) + 0.1, mask)) > 0.3


def test_total_variation():
    x = torch.zeros(1, 3, 3)
    x[0, :, 2] = 1.0  # one vertical edge: 3 horizontal steps of 1 among 6 horizontal + 6 vertical pairs
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    assert abs(float(total_variation(x, mask)) - 3 / 12) < 1e-6


def test_psnr_protocols():
    target = torch.zeros(3, 10, 10)
    render = torch.zeros(3, 10, 10)
    render[:, :, :5] = 0.1  # error 0.1 on the left half
    mask = torch.ones(1, 10, 10, dtype=torch.bool)
    mask[:, :, 5:] = False  # the right half is instrument
    render[:, :, 5:] = 0.9  # ignored
    m = image_metrics(render, target, mask)
    assert abs(m.psnr_tissue - 20.0) < 1e-4  # mse 0.01 over tissue
    assert abs(m.psnr - (20.0 + 10 * math.log10(2))) < 1e-4  # the same error diluted over twice the pixels
    assert m.lpips is None and m.depth_rmse_mm is None
    assert psnr(0.0) == PSNR_CAP_DB and psnr(1e-12) == PSNR_CAP_DB and psnr(1e-9) == pytest.approx(90.0)


def test_depth_rmse_over_valid_tissue():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, :2, :2] = True
    target = torch.zeros(1, 8, 8)
    target[0, :2, :2] = torch.tensor([[10.0, 10.0], [0.0, 10.0]])
    depth = torch.full((1, 8, 8), 50.0)
    depth[0, :2, :2] = torch.tensor([[13.0, 14.0], [99.0, 10.0]])
    m = image_metrics(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), mask, depth=depth, target_depth=target)
    assert abs(m.depth_rmse_mm - math.sqrt((9 + 16 + 0) / 3)) < 1e-5


def test_ssim_matches_kornia():
    import kornia

    torch.manual_seed(2)
    a, b = torch.rand(3, 20, 24), torch.rand(3, 20, 24)
    b = 0.7 * a + 0.3 * b
    ours = ssim_map(a, b)
    ref = kornia.metrics.ssim(a[None], b[None], 11, max_val=1.0, padding="same")[0]
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(ssim_map(a, a), torch.ones_like(a), atol=1e-6)


def test_metric_ssim_pads_with_zeros_as_the_anchors_evaluation():
    """3DGS's ``ssim`` (EndoGaussian's and Deform3DGS's metric): the same window as a dense conv2d with
    ``padding = 5``, i.e. zero borders."""
    torch.manual_seed(3)
    a, b = torch.rand(3, 20, 24), torch.rand(3, 20, 24)
    b = 0.7 * a + 0.3 * b
    g = torch.exp(-(torch.arange(11.0) - 5) ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)
    blur = lambda x: F.conv2d(x[None], window, padding=5, groups=3)[0]  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ref = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    mask = torch.ones(1, 20, 24, dtype=torch.bool)
    assert image_metrics(a, b, mask).ssim == pytest.approx(float(ref.mean()), abs=1e-6)
    assert image_metrics(a, b, mask).ssim != pytest.approx(float(ssim_map(a, b).mean()), abs=1e-4)  # not reflected


def test_psnr_of_identical_images_is_capped_and_stays_json():
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    m = image_metrics(torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), 0.5), mask)
    assert m.psnr == m.psnr_tissue == PSNR_CAP_DB
    json.dumps(dataclasses.asdict(m), allow_nan=False)
