"""Depth Anything network (endo3d.depth.dinov2, dpt, model) against a functional reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from endo3d.core import ShapeError
from endo3d.depth.dinov2 import interpolate_pos_embed
from endo3d.depth.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DepthAnything,
    DepthAnythingConfig,
    lower_bound_size,
    predict_inverse_depth,
    preprocess,
)

# ---------------------------------------------------------------------------
# Functional reference, written from the published architecture (DINOv2 ViT/14
# + DPT head of Depth Anything), reading the raw official state dict.
# ---------------------------------------------------------------------------


def _ref_pos_embed(pos: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """DINOv2: unchanged for the stored square grid, else bicubic with scale ((g + 0.1) / 37)."""
    n = pos.shape[1] - 1
    s = int(math.isqrt(n))
    if gh * gw == n and gh == gw:
        return pos
    grid = pos[:, 1:].reshape(1, s, s, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / s, (gw + 0.1) / s), mode="bicubic", align_corners=False)
    assert grid.shape[-2:] == (gh, gw)
    return torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)


def _ref_encoder(sd, x, heads, taps):
    p = "pretrained."
    t = F.conv2d(x, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=14)
    B, C, gh, gw = t.shape
    t = torch.cat([sd[p + "cls_token"].expand(B, 1, C), t.flatten(2).transpose(1, 2)], dim=1)
    t = t + _ref_pos_embed(sd[p + "pos_embed"], gh, gw)
    outs = []
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith(p + "blocks."))
    for i in range(depth):
        q = f"{p}blocks.{i}."
        y = F.layer_norm(t, (C,), sd[q + "norm1.weight"], sd[q + "norm1.bias"], 1e-6)
        qkv = (y @ sd[q + "attn.qkv.weight"].T + sd[q + "attn.qkv.bias"]).reshape(B, -1, 3, heads, C // heads)
        qh, kh, vh = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # (B, heads, N, d)
        att = torch.softmax((qh * (C // heads) ** -0.5) @ kh.transpose(-1, -2), dim=-1)
        y = (att @ vh).transpose(1, 2).reshape(B, -1, C)
        t = t + sd[q + "ls1.gamma"] * (y @ sd[q + "attn.proj.weight"].T + sd[q + "attn.proj.bias"])
        y = F.layer_norm(t, (C,), sd[q + "norm2.weight"], sd[q + "norm2.bias"], 1e-6)
        y = F.gelu(y @ sd[q + "mlp.fc1.weight"].T + sd[q + "mlp.fc1.bias"])
        t = t + sd[q + "ls2.gamma"] * (y @ sd[q + "mlp.fc2.weight"].T + sd[q + "mlp.fc2.bias"])
        if i in taps:
            n = F.layer_norm(t, (C,), sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-6)
            outs.append(n[:, 1:].transpose(1, 2).reshape(B, C, gh, gw))
    return outs, (gh, gw)


def _ref_rcu(sd, pre, x):
    y = F.conv2d(F.relu(x), sd[pre + "conv1.weight"], sd[pre + "conv1.bias"], padding=1)
    y = F.conv2d(F.relu(y), sd[pre + "conv2.weight"], sd[pre + "conv2.bias"], padding=1)
    return x + y


def _ref_fusion(sd, k, x, skip=None, size=None):
    pre = f"depth_head.scratch.refinenet{k}."
    if skip is not None:
        x = x + _ref_rcu(sd, pre + "resConfUnit1.", skip)
    x = _ref_rcu(sd, pre + "resConfUnit2.", x)
    if size is None:
        size = (2 * x.shape[-2], 2 * x.shape[-1])
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
    return F.conv2d(x, sd[pre + "out_conv.weight"], sd[pre + "out_conv.bias"])


def reference_depth(sd, x, heads, taps):
    """Relative inverse depth ``(B, 1, H, W)`` from raw official tensors."""
    maps, (gh, gw) = _ref_encoder(sd, x, heads, taps)
    h = "depth_head."
    layers = []
    for k, m in enumerate(maps):
        y = F.conv2d(m, sd[f"{h}projects.{k}.weight"], sd[f"{h}projects.{k}.bias"])
        if k == 0:
            y = F.conv_transpose2d(y, sd[h + "resize_layers.0.weight"], sd[h + "resize_layers.0.bias"], stride=4)
        elif k == 1:
            y = F.conv_transpose2d(y, sd[h + "resize_layers.1.weight"], sd[h + "resize_layers.1.bias"], stride=2)
        elif k == 3:
            y = F.conv2d(y, sd[h + "resize_layers.3.weight"], sd[h + "resize_layers.3.bias"], stride=2, padding=1)
        layers.append(F.conv2d(y, sd[f"{h}scratch.layer{k + 1}_rn.weight"], padding=1))
    p4 = _ref_fusion(sd, 4, layers[3], size=layers[2].shape[-2:])
    p3 = _ref_fusion(sd, 3, p4, layers[2], size=layers[1].shape[-2:])
    p2 = _ref_fusion(sd, 2, p3, layers[1], size=layers[0].shape[-2:])
    p1 = _ref_fusion(sd, 1, p2, layers[0])
    y = F.conv2d(p1, sd[h + "scratch.output_conv1.weight"], sd[h + "scratch.output_conv1.bias"], padding=1)
    y = F.interpolate(y, size=(14 * gh, 14 * gw), mode="bilinear", align_corners=True)
    y = F.relu(F.conv2d(y, sd[h + "scratch.output_conv2.0.weight"], sd[h + "scratch.output_conv2.0.bias"], padding=1))
    return F.relu(F.conv2d(y, sd[h + "scratch.output_conv2.2.weight"], sd[h + "scratch.output_conv2.2.bias"]))


# ---------------------------------------------------------------------------


def test_official_keys_are_exactly_ours(vits_state) -> None:
    model = DepthAnything(DepthAnythingConfig("vits"))
    ours = model.state_dict()
    assert sorted(ours) == sorted(vits_state)
    for k, v in ours.items():
        assert v.shape == vits_state[k].shape, k
    result = model.load_state_dict(vits_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("version", [2, 1])
def test_forward_matches_reference(vits_state, version: int) -> None:
    torch.manual_seed(0)
    model = DepthAnything(DepthAnythingConfig("vits", version=version)).eval()
    model.load_state_dict(vits_state)
    taps = (2, 5, 8, 11) if version == 2 else (8, 9, 10, 11)
    assert model.config.taps == taps
    x = torch.randn(2, 3, 70, 98)
    with torch.no_grad():
        ours = model(x)
        ref = reference_depth(vits_state, x, heads=6, taps=taps)
        feats = model.forward_features(x)
        ref_maps, grid = _ref_encoder(vits_state, x, 6, taps)
    assert ours.shape == (2, 1, 70, 98)
    assert feats.grid == grid == (5, 7)
    for a, b in zip(feats.maps(), ref_maps):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert (ref > 0).float().mean() > 0.2  # the check is not on an all-zero output
    torch.testing.assert_close(ours, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)


def test_versions_differ_only_in_taps(vits_state) -> None:
    x = torch.randn(1, 3, 42, 56)
    outs = []
    for version in (1, 2):
        model = DepthAnything(DepthAnythingConfig("vits", version=version)).eval()
        model.load_state_dict(vits_state)
        with torch.no_grad():
            outs.append(model(x))
    assert not torch.allclose(outs[0], outs[1])


def test_dpt_fuse_scales(vits_model) -> None:
    with torch.no_grad():
        feats = vits_model.forward_features(torch.randn(1, 3, 70, 98))
        fused = vits_model.depth_head.fuse(feats)
    assert [tuple(f.shape[-2:]) for f in fused] == [(40, 56), (20, 28), (10, 14), (5, 7)]
    assert all(f.shape[1] == 64 for f in fused)


def _bicubic_weights(t: float, a: float = -0.75) -> list[float]:
    def k(d: float) -> float:
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        if d < 2:
            return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
        return 0.0

    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


def _naive_resample(grid: torch.Tensor, out_h: int, out_w: int, scale_h: float, scale_w: float) -> torch.Tensor:
    """Separable Keys bicubic, source = (dst + 0.5) / scale - 0.5, clamped borders (float64)."""
    c, h, w = grid.shape

    def matrix(n_out: int, n_in: int, scale: float) -> torch.Tensor:
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        for i in range(n_out):
            src = (i + 0.5) / scale - 0.5
            i0 = math.floor(src)
            for j, wt in zip(range(i0 - 1, i0 + 3), _bicubic_weights(src - i0)):
                m[i, min(max(j, 0), n_in - 1)] += wt
        return m

    mh, mw = matrix(out_h, h, scale_h), matrix(out_w, w, scale_w)
    return torch.einsum("ih,chw,jw->cij", mh, grid.double(), mw)


def test_pos_embed_interpolation_non_square(vits_state) -> None:
    pos = vits_state["pretrained.pos_embed"]
    gh, gw = 5, 7
    out = interpolate_pos_embed(pos, (gh, gw))
    assert out.shape == (1, 1 + gh * gw, 384)
    assert torch.equal(out[:, 0], pos[:, 0])
    stored = pos[0, 1:].reshape(37, 37, 384).permute(2, 0, 1)
    # DINOv2 samples with its scale factor (g + 0.1) / 37, not with 37 / g.
    expected = _naive_resample(stored, gh, gw, (gh + 0.1) / 37, (gw + 0.1) / 37)
    got = out[0, 1:].reshape(gh, gw, 384).permute(2, 0, 1).double()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    by_size = _naive_resample(stored, gh, gw, gh / 37, gw / 37)
    assert (got - by_size).abs().max() > 1e-3  # the offset detail matters


def test_pos_embed_unchanged_on_the_stored_grid(vits_state) -> None:
    pos = vits_state["pretrained.pos_embed"]
    assert interpolate_pos_embed(pos, (37, 37)) is pos
    assert interpolate_pos_embed(pos, (36, 38)).shape == (1, 1 + 36 * 38, 384)


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((256, 320), (518, 644)),
        ((480, 640), (518, 686)),
        ((1080, 1350), (518, 644)),
        ((600, 600), (518, 518)),
        ((100, 1000), (518, 5180)),
        ((518, 539), (518, 532)),  # 539 / 14 = 38.5 rounds half to even (np.round), to 38
        ((518, 525), (518, 532)),  # 37.5 -> 38
        ((700, 400), (910, 518)),
    ],
)
def test_lower_bound_size(hw, expected) -> None:
    out = lower_bound_size(*hw)
    assert out == expected
    assert all(s % 14 == 0 and s >= 518 for s in out)


def test_preprocess_size_and_normalisation() -> None:
    images = torch.full((2, 3, 64, 80), 0.5)
    out = preprocess(images, size=56)
    assert out.shape == (2, 3, 56, 70)  # 80 * 56 / 64 = 70
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ((0.5 - mean) / std).expand_as(out))
    assert preprocess(torch.rand(1, 3, 56, 70), size=56).shape == (1, 3, 56, 70)


def test_predict_inverse_depth_at_input_size(vits_model) -> None:
    images = torch.rand(2, 3, 30, 40)
    out = predict_inverse_depth(vits_model, images, size=28)  # works at 28 x 42, back to 30 x 40
    assert out.shape == (2, 1, 30, 40)
    assert (out >= 0).all()
    net = vits_model(preprocess(images, size=28))
    torch.testing.assert_close(out[..., 0, 0], net[..., 0, 0])  # align_corners: corners kept


def test_bad_inputs(vits_model) -> None:
    with pytest.raises(ValueError, match="multiples of 14"):
        vits_model(torch.zeros(1, 3, 70, 99))
    with pytest.raises(ShapeError):
        vits_model(torch.zeros(1, 4, 70, 98))
    with pytest.raises(ValueError, match="encoder"):
        DepthAnythingConfig("vitg")  # type: ignore[arg-type]


@pytest.mark.parametrize("encoder, millions", [("vits", 24.8), ("vitb", 97.5), ("vitl", 335.3)])
def test_parameter_counts(encoder: str, millions: float) -> None:
    with torch.device("meta"):
        model = DepthAnything(DepthAnythingConfig(encoder))  # type: ignore[arg-type]
    total = sum(p.numel() for p in model.parameters())
    assert abs(total / 1e6 - millions) < 0.05
