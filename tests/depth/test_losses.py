"""View synthesis, photometric / smoothness / supervised losses, pose and intrinsics parameterisation."""

from __future__ import annotations

import math

import torch

from endo3d.depth import losses
from endo3d.depth.network import DepthHead, depth_to_logit, logit_to_depth
from endo3d.depth.posenet import FOCAL_FLOOR, FOCAL_START, PoseNet, intrinsics_from_raw, pose_from_raw
from endo3d.geometry import Camera, axis_angle_to_matrix, reproject

H, W = 48, 64
K = torch.tensor([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]], dtype=torch.float64)


def _texture(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Smooth RGB texture of plane coordinates in mm."""
    return torch.stack([0.5 + 0.25 * torch.sin(0.35 * x) + 0.1 * torch.cos(0.2 * y),
                        0.5 + 0.3 * torch.cos(0.3 * y + 0.5 * torch.sin(0.1 * x)),
                        0.4 + 0.2 * torch.sin(0.25 * (x + y))])


def _render(T_c_from_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and z-depth seen by camera c of the tilted plane Z = 50 + 0.2 X (target-camera frame)."""
    t_from_c = torch.linalg.inv(T_c_from_t)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    rays = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)])  # camera c
    d = torch.einsum("ij,jhw->ihw", t_from_c[:3, :3], rays)
    o = t_from_c[:3, 3].view(3, 1, 1)
    s = (50 + 0.2 * o[0] - o[2]) / (d[2] - 0.2 * d[0])
    P = o + s * d
    return _texture(P[0], P[1]), s  # s is the z-depth in camera c (rays have z = 1)


def _motion(angle: float, t: tuple[float, float, float]) -> torch.Tensor:
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = axis_angle_to_matrix(torch.tensor([0.3, -1.0, 0.2], dtype=torch.float64) / math.sqrt(1.13) * angle)
    T[:3, 3] = torch.tensor(t, dtype=torch.float64)
    return T


def test_warp_reproduces_target_with_true_depth_and_pose():
    target, depth = _render(torch.eye(4, dtype=torch.float64))
    T = _motion(0.05, (2.0, -1.0, 3.0))
    source, _ = _render(T)
    warped, valid = losses.warp_source(source[None], depth[None, None], K[None], T[None])
    assert valid.float().mean() > 0.6
    err = losses.photometric_error(warped, target[None])
    assert err[valid].mean() < 0.01
    wrong = _motion(0.05, (5.0, 1.0, 3.0))  # 3.6 mm off
    warped_bad, valid_bad = losses.warp_source(source[None], depth[None, None], K[None], wrong[None])
    bad = losses.photometric_error(warped_bad, target[None])
    assert bad[valid_bad].mean() > 5 * err[valid].mean() and bad[valid_bad].mean() > 0.03


def test_warp_matches_geometry_reproject():
    _, depth = _render(torch.eye(4, dtype=torch.float64))
    T = _motion(0.1, (1.0, 2.0, -3.0))
    cam = Camera("pinhole", W, H, K.numpy())
    uv, _, valid = reproject(depth[None, None], cam, T)
    # sample an image that encodes u and v: the warp must return the projected coordinates
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    coords = torch.stack([u, v])[None]
    warped, ok = losses.warp_source(coords, depth[None, None], K[None], T[None])
    both = (ok & valid)[0, 0]
    assert both.float().mean() > 0.5
    torch.testing.assert_close(warped[0][:, both], uv[0][:, both], atol=1e-6, rtol=0)


def test_photometric_and_ssim_basics():
    x = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    assert losses.photometric_error(x, x).abs().max() < 1e-6
    assert losses.ssim_distance(x, 1 - x).mean() > 0.3
    assert losses.photometric_error(x, x, ssim_weight=0).shape == (2, 1, 16, 20)


def test_smoothness():
    img = torch.rand(1, 3, 16, 20)
    assert losses.smoothness_loss(torch.full((1, 1, 16, 20), 0.3), img) == 0
    ramp = torch.linspace(0.1, 1, 20).expand(1, 1, 16, 20)
    flat = torch.zeros(1, 3, 16, 20)
    edges = torch.zeros(1, 3, 16, 20)
    edges[..., ::2] = 1.0
    # the same disparity gradient costs less across image edges; scale-free (mean-normalised)
    assert losses.smoothness_loss(ramp, edges) < losses.smoothness_loss(ramp, flat)
    torch.testing.assert_close(losses.smoothness_loss(3 * ramp, flat), losses.smoothness_loss(ramp, flat))


def test_view_synthesis_loss_automask_and_masks():
    target, depth = _render(torch.eye(4, dtype=torch.float64))
    tgt, d = target[None].float(), depth[None, None].float()
    eye = torch.eye(4)[None]
    Kf = K[None].float()
    # static scene (sources equal the target): every pixel is auto-masked
    terms = losses.view_synthesis_loss([d], tgt, [tgt, tgt], [eye, eye], [Kf, Kf])
    assert terms.used == 0
    # moving camera, true motion: small loss on used pixels
    T = _motion(0.05, (2.0, -1.0, 3.0))
    src = _render(T)[0][None].float()
    good = losses.view_synthesis_loss([d], tgt, [src], [T[None].float()], [Kf], automask=False)
    bad = losses.view_synthesis_loss([d], tgt, [src], [_motion(0.05, (6.0, 2.0, 3.0))[None].float()], [Kf],
                                     automask=False)
    assert good.photometric < 0.02 < bad.photometric
    # brightness correction (a, b) undoes a global gain on the source
    dim = losses.view_synthesis_loss([d], tgt, [0.8 * src], [T[None].float()], [Kf], automask=False,
                                     brightness=[torch.tensor([[1.25, 0.0]])])
    assert dim.photometric < good.photometric + 1e-3
    # an all-invalid target mask uses nothing
    none = losses.view_synthesis_loss([d], tgt, [src], [T[None].float()], [Kf], automask=False,
                                      target_valid=torch.zeros(1, 1, H, W, dtype=torch.bool))
    assert none.used == 0 and none.photometric == 0


def test_specular_mask():
    img = torch.full((1, 3, 4, 4), 0.5)
    img[..., 0, 0] = 0.99
    m = losses.specular_mask(img, 0.98)
    assert not m[0, 0, 0, 0] and m.sum() == 15


def test_supervised_losses():
    g = torch.Generator().manual_seed(0)
    gt = 20 + 80 * torch.rand(2, 1, 12, 16, generator=g)
    valid = torch.ones_like(gt, dtype=torch.bool)
    valid[..., 0, :] = False
    pred_disp = 3.0 / gt + 0.01  # scale and shift of the true disparity
    assert losses.ssi_loss(pred_disp, gt, valid) < 1e-5
    assert losses.ssi_loss(torch.rand(2, 1, 12, 16, generator=g), gt, valid) > 0.3
    assert losses.silog_loss(2 * gt, gt, valid, variance_focus=1.0) < 1e-3
    assert losses.silog_loss(2 * gt, gt, valid) > 0.2  # lambda 0.85 keeps some of the scale
    assert losses.l1_log_loss(gt, gt, valid) == 0
    torch.testing.assert_close(losses.l1_log_loss(2 * gt, gt, valid), torch.tensor(math.log(2)))


def test_log_depth_mapping():
    z = torch.tensor([-1e3, 1e3, 0.0, 1.3], requires_grad=True)
    depth = logit_to_depth(z, 1.0, 300.0)
    torch.testing.assert_close(depth[:3].detach(), torch.tensor([1.0, 300.0, math.sqrt(300.0)]))  # z = 0: geometric centre
    torch.testing.assert_close(depth_to_logit(depth[2:].detach(), 1.0, 300.0), z[2:].detach())
    torch.log(depth[2]).backward()
    torch.testing.assert_close(z.grad[2], torch.tensor(math.log(300.0) / 4))  # the steepest point of the sigmoid


def test_depth_head_starts_flat_centred_and_unsaturated():
    head = DepthHead(16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 6, 8, generator=g)
    for scale in (0.01, 1.0, 100.0):  # feature magnitude of a random-init vs a trained decoder: same start
        z = head(scale * x)
        assert torch.equal(z, torch.zeros_like(z))
    # the supervised gradient at init reaches the head and is far from a saturated sigmoid's (measured
    # failure before the change: logits below -70, gradients ~1e-30)
    gt = torch.full((2, 1, 6, 8), 90.0)
    loss = losses.silog_loss(logit_to_depth(head(100.0 * x), 1.0, 300.0), gt, torch.ones_like(gt, dtype=torch.bool))
    loss.backward()
    assert head.conv2.bias.grad.abs() > 0.1 and head.conv2.weight.grad.abs().sum() > 0.1
    # one head step moves the logits by a bounded amount whatever the input scale (LayerNorm first)
    with torch.no_grad():
        head.conv2.weight.fill_(0.01)
        assert head(100.0 * x).abs().max() < 1.0
        torch.testing.assert_close(head(100.0 * x), head(x), atol=1e-4, rtol=1e-4)


def test_intrinsics_parameterisation():
    z = torch.zeros(1, 2)
    Kz = intrinsics_from_raw(z, z, 48, 64)[0]
    f0 = math.log(2) + FOCAL_FLOOR
    torch.testing.assert_close(Kz[0, 0], torch.tensor(f0 * 64))
    torch.testing.assert_close(Kz[1, 1], torch.tensor(f0 * 48))
    torch.testing.assert_close(Kz[:2, 2], torch.tensor([31.5, 23.5]))  # exact image centre (OpenCV)
    assert Kz[2, 2] == 1 and Kz[0, 1] == 0
    big = intrinsics_from_raw(torch.full((1, 2), -50.0), torch.full((1, 2), 0.5), 48, 64)[0]
    torch.testing.assert_close(big[0, 0], torch.tensor(FOCAL_FLOOR * 64), atol=1e-4, rtol=0)  # floor
    torch.testing.assert_close(big[0, 2], torch.tensor(63.5))  # z_c = 0.5: right edge
    net = PoseNet(width=8)
    x = torch.rand(2, 3, 32, 40)
    out = net(x, x)
    # square pixels at the start: fx = fy = FOCAL_START * W, principal point at the centre
    torch.testing.assert_close(out.K[:, 0, 0], torch.full((2,), FOCAL_START * 40), atol=0.05, rtol=0)
    torch.testing.assert_close(out.K[:, 1, 1], torch.full((2,), FOCAL_START * 40), atol=0.05, rtol=0)
    torch.testing.assert_close(out.K[:, :2, 2], torch.tensor([19.5, 15.5]).expand(2, 2), atol=0.05, rtol=0)
    assert out.T.shape == (2, 4, 4) and out.brightness.shape == (2, 2)
    # the shared focal bias moves f at full scale, the per-pair part is damped
    assert net.focal_parameters() == [net.focal.bias] and net.focal.bias.shape == (1,)
    with torch.no_grad():
        net.focal.bias.add_(0.1)
    K = net(x, x).K
    slope = torch.sigmoid(torch.log(torch.expm1(torch.tensor(FOCAL_START - FOCAL_FLOOR))))  # softplus' at the start
    torch.testing.assert_close(K[:, 0, 0], torch.full((2,), (FOCAL_START + 0.1 * slope.item()) * 40), atol=0.05, rtol=0)
    torch.testing.assert_close(K[:, 1, 1], K[:, 0, 0])  # square pixels stay square
    assert PoseNet(width=8, learn_intrinsics=False).focal_parameters() == []
    assert PoseNet(width=8, learn_intrinsics=False)(x, x).K is None
    # EndoDAC's separate fx, fy: the same square start, then each axis moves on its own
    free = PoseNet(width=8, square_pixels=False)
    torch.testing.assert_close(free(x, x).K, out.K, atol=0.05, rtol=0)
    with torch.no_grad():
        free.focal.bias[1] += 0.5
    K = free(x, x).K
    assert abs(K[0, 0, 0] - FOCAL_START * 40) < 0.05 and K[0, 1, 1] > FOCAL_START * 40 + 5


def test_pose_from_raw():
    T = pose_from_raw(torch.zeros(2, 6), 0.1)
    torch.testing.assert_close(T, torch.eye(4).expand(2, 4, 4))
    raw = torch.tensor([[0.0, 0.0, 100.0, 10.0, 0.0, -20.0]])
    T = pose_from_raw(raw, 0.1)
    torch.testing.assert_close(T[0, :3, 3], torch.tensor([1.0, 0.0, -2.0]))
    torch.testing.assert_close(T[0, 0, 1], torch.tensor(-math.sin(1.0)))  # 1 rad about z
