"""LoRA / DV-LoRA / gated adapters and convolutional necks (endo3d.depth.adapters)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from endo3d.core import InputError
from endo3d.depth.adapters import (
    ConvNeck,
    DVLoRALinear,
    GatedLoRALinear,
    LoRAConfig,
    LoRALinear,
    NeckConfig,
    freeze_backbone,
    inject_adapters,
    inject_necks,
    load_adapters,
    merge_adapters,
    save_adapters,
    trainable_parameter_report,
)
from endo3d.depth.model import DepthAnything, DepthAnythingConfig

KINDS = ["lora", "dvlora", "gated"]


@pytest.fixture
def base(vits_model) -> DepthAnything:
    """A private copy of the random-weight ViT-S model."""
    return copy.deepcopy(vits_model)


def _meta_model() -> DepthAnything:
    """A ViT-S model without storage, for tests that never run it."""
    with torch.device("meta"):
        return DepthAnything(DepthAnythingConfig("vits"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 28, 42, generator=torch.Generator().manual_seed(1))


def _randomise_adapters(model: nn.Module, seed: int = 0) -> None:
    """Give every adapter parameter a non-trivial value (B and the last neck norm start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name or ".necks." in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g) + (0.5 if name.endswith("lora_gate") else 0.0))


@pytest.mark.parametrize("kind", KINDS)
def test_layer_formulas(kind: str) -> None:
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    x = torch.randn(5, 8)
    expected_base = base(x)
    layer = {"lora": LoRALinear, "dvlora": DVLoRALinear, "gated": GatedLoRALinear}[kind](base, rank=3, scale=2.0)
    assert layer.weight is base.weight and layer.bias is base.bias
    torch.testing.assert_close(layer(x), expected_base, rtol=0, atol=0)  # B = 0
    bound = 1 / 8**0.5  # Kaiming uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > 0.3 * bound
    with torch.no_grad():
        layer.lora_B.normal_()
    A, B, s = layer.lora_A, layer.lora_B, 2.0
    if kind == "lora":
        delta = B @ A
    else:
        assert layer.lora_u.shape == (3,) and layer.lora_v.shape == (6,)
        assert layer.lora_u.abs().max() <= 1 and layer.lora_v.abs().max() <= 1
        delta = torch.diag(layer.lora_v) @ B @ torch.diag(layer.lora_u) @ A
        if kind == "gated":
            assert layer.lora_gate.item() == 0.0
            delta = delta * 0.5
    torch.testing.assert_close(layer(x), expected_base + s * x @ delta.T)
    torch.testing.assert_close(layer.merged()(x), layer(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_init_keeps_the_base_output(base, images, kind: str) -> None:
    with torch.no_grad():
        before = base(images)
    names = inject_adapters(base, LoRAConfig(kind, rank=4))
    assert len(names) == 24 and names[0] == "pretrained.blocks.0.mlp.fc1"
    assert inject_necks(base) == [f"pretrained.necks.{i}" for i in (2, 5, 8, 11)]
    with torch.no_grad():
        after = base(images)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_conv_neck_identity_and_cls_passthrough() -> None:
    neck = ConvNeck(384)
    assert neck.conv1.out_channels == 48 and neck.conv2.kernel_size == (3, 3)
    assert all(m.bias is None for m in (neck.conv1, neck.conv2, neck.conv3))
    tokens = torch.randn(2, 1 + 3 * 4, 384)
    assert torch.equal(neck(tokens, (3, 4)), tokens)
    with torch.no_grad():
        neck.norm3.weight.fill_(1.0)
    out = neck(tokens, (3, 4))
    assert torch.equal(out[:, 0], tokens[:, 0]) and not torch.allclose(out[:, 1:], tokens[:, 1:])


def test_one_step_changes_only_adapters(base, images) -> None:
    inject_adapters(base, LoRAConfig("dvlora", rank=4))
    inject_necks(base)
    trainable = freeze_backbone(base)
    assert all(".lora_" in n or ".necks." in n for n in trainable)
    snapshot = {n: p.detach().clone() for n, p in base.named_parameters()}
    optimiser = torch.optim.Adam([p for p in base.parameters() if p.requires_grad], lr=1e-2)
    base.train()
    loss = base(images).mean()
    loss.backward()
    optimiser.step()
    changed = {n for n, p in base.named_parameters() if not torch.equal(p, snapshot[n])}
    assert changed and changed <= set(trainable)
    assert any(n.endswith("lora_B") for n in changed) and any(".necks." in n for n in changed)
    for n, p in base.named_parameters():
        if n not in trainable:
            assert p.grad is None or not p.grad.any(), n


def test_trainable_share_endodac_like(base) -> None:
    inject_adapters(base, LoRAConfig("dvlora", rank=4))
    inject_necks(base)
    freeze_backbone(base)
    report = trainable_parameter_report(base)
    C, H, r = 384, 1536, 4
    lora = 12 * ((r * C + H * r + r + H) + (r * H + C * r + r + C))
    neck = 4 * (C * C // 8 + 9 * (C // 8) ** 2 + C // 8 * C + 2 * 2 * (C // 8) + 2 * C)
    assert report.trainable == lora + neck == 441_696
    assert report.total == 24_785_089 + lora + neck
    assert report.share < 0.10
    trainable, total, share = report
    assert share == pytest.approx(trainable / total)
    freeze_backbone(base, train_head=True)
    with_head = trainable_parameter_report(base)
    assert with_head.trainable == lora + neck + sum(p.numel() for p in base.depth_head.parameters())


def test_freeze_stages() -> None:
    model = _meta_model()
    inject_adapters(model, LoRAConfig("gated", rank=2, blocks=(0, 1)))
    warmup = freeze_backbone(model, lora_parts="matrices")
    assert any(n.endswith("lora_A") for n in warmup) and not any(n.endswith(("lora_u", "lora_v")) for n in warmup)
    assert any(n.endswith("lora_gate") for n in warmup)
    later = freeze_backbone(model, lora_parts="vectors")
    assert any(n.endswith("lora_v") for n in later) and not any(n.endswith(("lora_A", "lora_B")) for n in later)
    with pytest.raises(ValueError, match="nothing to train"):
        freeze_backbone(_meta_model())


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(tmp_path, vits_model, base, images, kind: str) -> None:
    config = LoRAConfig(kind, rank=4)
    inject_adapters(base, config)
    inject_necks(base)
    _randomise_adapters(base)
    include_head = kind == "gated"  # a trained head travels with the adapters when asked
    if include_head:
        with torch.no_grad():
            base.depth_head.scratch.output_conv2[2].bias.add_(0.25)
    with torch.no_grad():
        expected = base(images)
    path = save_adapters(base, tmp_path / "adapters.safetensors", include_head=include_head)
    limit = 3_000_000 + (12_000_000 if include_head else 0)
    assert path.stat().st_size < limit  # adapters (and head) only: the base is ~100 MB
    fresh = copy.deepcopy(vits_model)
    loaded = load_adapters(fresh, path)  # injects from the file's configuration
    assert fresh.pretrained.lora_config == config and fresh.pretrained.neck_config == NeckConfig()
    assert all(n.startswith("pretrained.") or (include_head and n.startswith("depth_head.")) for n in loaded)
    assert any(n.startswith("depth_head.") for n in loaded) == include_head
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), expected, rtol=0, atol=0)
    load_adapters(fresh, path)  # same configuration already present: fine


def test_load_adapters_mismatches(tmp_path, base) -> None:
    inject_adapters(base, LoRAConfig("dvlora", rank=4))
    path = save_adapters(base, tmp_path / "a.safetensors")
    other = _meta_model()
    inject_adapters(other, LoRAConfig("dvlora", rank=8))
    with pytest.raises(InputError, match="LoRA configuration differs"):
        load_adapters(other, path)
    with torch.device("meta"):
        bigger = DepthAnything(DepthAnythingConfig("vitb"))
    with pytest.raises(InputError, match="width-384"):
        load_adapters(bigger, path)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(InputError, match="not an endo3d adapter file"):
        load_adapters(_meta_model(), plain)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"nonsense")
    with pytest.raises(InputError, match="cannot read"):
        load_adapters(_meta_model(), broken)


@pytest.mark.parametrize("kind", KINDS)
def test_merge_gives_the_same_output(base, vits_state, images, kind: str) -> None:
    inject_adapters(base, LoRAConfig(kind, rank=4, targets=("mlp.fc1", "mlp.fc2", "attn.qkv")))
    inject_necks(base)
    _randomise_adapters(base, seed=3)
    with torch.no_grad():
        before = base(images)
    merged = merge_adapters(base)
    assert len(merged) == 36
    assert not any(isinstance(m, LoRALinear) for m in base.modules())
    keys = set(base.state_dict())
    assert {k for k in keys if ".necks." not in k} == set(vits_state)
    with torch.no_grad():
        after = base(images)
    torch.testing.assert_close(after, before, atol=1e-5 * before.abs().max().item(), rtol=1e-4)


def test_inject_errors(base) -> None:
    inject_adapters(base, LoRAConfig("lora", rank=2))
    with pytest.raises(ValueError, match="already"):
        inject_adapters(base, LoRAConfig("lora", rank=2))
    fresh = _meta_model()
    with pytest.raises(ValueError, match="not nn.Linear"):
        inject_adapters(fresh, LoRAConfig("lora", targets=("mlp.act",)))
    with pytest.raises(ValueError, match="out of range"):
        inject_adapters(fresh, LoRAConfig("lora", blocks=(12,)))
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig("lora", rank=0)
    inject_necks(fresh, NeckConfig(blocks=(0,)))
    with pytest.raises(ValueError, match="already"):
        inject_necks(fresh)
