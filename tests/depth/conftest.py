"""Random Depth Anything checkpoints built key by key from the published layout.

The state dicts here are written from the key list in ``ANCHORS.md`` (official
``depth_anything_v2_*.pth``) and the Hugging Face conversion script's names,
never from our model's ``state_dict()``, so a naming mistake in the model
shows up as a missing or unexpected key.
"""

from __future__ import annotations

import pytest
import torch

SIZES = {  # encoder -> (width, blocks, heads, DPT features, out_channels)
    "vits": (384, 12, 6, 64, (48, 96, 192, 384)),
    "vitb": (768, 12, 12, 128, (96, 192, 384, 768)),
    "vitl": (1024, 24, 16, 256, (256, 512, 1024, 1024)),
}


def official_state_dict(encoder: str = "vits", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights named and shaped as an official Depth Anything checkpoint.

    Scales keep activations in a sensible range (weights ~ 1/sqrt(fan_in),
    LayerNorm weights around 1, LayerScale around 0.5) so the output is not
    all zero after the final ReLU.
    """
    C, depth, _, F, oc = SIZES[encoder]
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        return torch.randn(*shape, generator=g) / fan_in**0.5

    def b(n: int, mean: float = 0.0, std: float = 0.05) -> torch.Tensor:
        return mean + std * torch.randn(n, generator=g)

    sd: dict[str, torch.Tensor] = {}
    p = "pretrained."
    sd[p + "cls_token"] = 0.5 * torch.randn(1, 1, C, generator=g)
    sd[p + "pos_embed"] = 0.5 * torch.randn(1, 1 + 37 * 37, C, generator=g)
    sd[p + "mask_token"] = torch.randn(1, C, generator=g)
    sd[p + "patch_embed.proj.weight"] = w(C, 3, 14, 14)
    sd[p + "patch_embed.proj.bias"] = b(C)
    for i in range(depth):
        q = f"{p}blocks.{i}."
        sd[q + "norm1.weight"] = b(C, 1.0, 0.1)
        sd[q + "norm1.bias"] = b(C)
        sd[q + "attn.qkv.weight"] = w(3 * C, C)
        sd[q + "attn.qkv.bias"] = b(3 * C)
        sd[q + "attn.proj.weight"] = w(C, C)
        sd[q + "attn.proj.bias"] = b(C)
        sd[q + "ls1.gamma"] = b(C, 0.5, 0.1)
        sd[q + "norm2.weight"] = b(C, 1.0, 0.1)
        sd[q + "norm2.bias"] = b(C)
        sd[q + "mlp.fc1.weight"] = w(4 * C, C)
        sd[q + "mlp.fc1.bias"] = b(4 * C)
        sd[q + "mlp.fc2.weight"] = w(C, 4 * C)
        sd[q + "mlp.fc2.bias"] = b(C)
        sd[q + "ls2.gamma"] = b(C, 0.5, 0.1)
    sd[p + "norm.weight"] = b(C, 1.0, 0.1)
    sd[p + "norm.bias"] = b(C)
    h = "depth_head."
    for k in range(4):
        sd[f"{h}projects.{k}.weight"] = w(oc[k], C, 1, 1)
        sd[f"{h}projects.{k}.bias"] = b(oc[k])
    # ConvTranspose2d weights are (in, out, kH, kW).
    sd[h + "resize_layers.0.weight"] = w(oc[0], oc[0], 4, 4) * 4
    sd[h + "resize_layers.0.bias"] = b(oc[0])
    sd[h + "resize_layers.1.weight"] = w(oc[1], oc[1], 2, 2) * 2
    sd[h + "resize_layers.1.bias"] = b(oc[1])
    sd[h + "resize_layers.3.weight"] = w(oc[3], oc[3], 3, 3)
    sd[h + "resize_layers.3.bias"] = b(oc[3])
    for k in range(1, 5):
        sd[f"{h}scratch.layer{k}_rn.weight"] = w(F, oc[k - 1], 3, 3)
    for k in range(1, 5):
        r = f"{h}scratch.refinenet{k}."
        sd[r + "out_conv.weight"] = w(F, F, 1, 1)
        sd[r + "out_conv.bias"] = b(F)
        for unit in (1, 2):
            for conv in (1, 2):
                sd[f"{r}resConfUnit{unit}.conv{conv}.weight"] = w(F, F, 3, 3) * 0.5
                sd[f"{r}resConfUnit{unit}.conv{conv}.bias"] = b(F)
    sd[h + "scratch.output_conv1.weight"] = w(F // 2, F, 3, 3)
    sd[h + "scratch.output_conv1.bias"] = b(F // 2)
    sd[h + "scratch.output_conv2.0.weight"] = w(32, F // 2, 3, 3)
    sd[h + "scratch.output_conv2.0.bias"] = b(32)
    sd[h + "scratch.output_conv2.2.weight"] = w(1, 32, 1, 1)
    sd[h + "scratch.output_conv2.2.bias"] = b(1, 0.5, 0.0)
    return sd


def hf_state_dict(official: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """The same weights under Hugging Face ``DepthAnythingForDepthEstimation`` names (q, k, v split)."""
    out: dict[str, torch.Tensor] = {}
    emb = "backbone.embeddings."
    out[emb + "cls_token"] = official["pretrained.cls_token"]
    out[emb + "mask_token"] = official["pretrained.mask_token"]
    out[emb + "position_embeddings"] = official["pretrained.pos_embed"]
    for t in ("weight", "bias"):
        out[emb + "patch_embeddings.projection." + t] = official["pretrained.patch_embed.proj." + t]
        out["backbone.layernorm." + t] = official["pretrained.norm." + t]
    for i in range(depth):
        src, dst = f"pretrained.blocks.{i}.", f"backbone.encoder.layer.{i}."
        out[dst + "layer_scale1.lambda1"] = official[src + "ls1.gamma"]
        out[dst + "layer_scale2.lambda1"] = official[src + "ls2.gamma"]
        for t in ("weight", "bias"):
            out[dst + "norm1." + t] = official[src + "norm1." + t]
            out[dst + "norm2." + t] = official[src + "norm2." + t]
            out[dst + "mlp.fc1." + t] = official[src + "mlp.fc1." + t]
            out[dst + "mlp.fc2." + t] = official[src + "mlp.fc2." + t]
            out[dst + "attention.output.dense." + t] = official[src + "attn.proj." + t]
            q, k, v = official[src + "attn.qkv." + t].chunk(3, dim=0)
            out[dst + "attention.attention.query." + t] = q.clone()
            out[dst + "attention.attention.key." + t] = k.clone()
            out[dst + "attention.attention.value." + t] = v.clone()
    h = "depth_head."
    for k in range(4):
        for t in ("weight", "bias"):
            out[f"neck.reassemble_stage.layers.{k}.projection.{t}"] = official[f"{h}projects.{k}.{t}"]
            if k != 2:
                out[f"neck.reassemble_stage.layers.{k}.resize.{t}"] = official[f"{h}resize_layers.{k}.{t}"]
        out[f"neck.convs.{k}.weight"] = official[f"{h}scratch.layer{k + 1}_rn.weight"]
    for k in range(1, 5):
        j = 4 - k  # HF runs the fusion coarse to fine
        for t in ("weight", "bias"):
            out[f"neck.fusion_stage.layers.{j}.projection.{t}"] = official[f"{h}scratch.refinenet{k}.out_conv.{t}"]
            for unit in (1, 2):
                for conv in (1, 2):
                    out[f"neck.fusion_stage.layers.{j}.residual_layer{unit}.convolution{conv}.{t}"] = official[
                        f"{h}scratch.refinenet{k}.resConfUnit{unit}.conv{conv}.{t}"
                    ]
    for t in ("weight", "bias"):
        out["head.conv1." + t] = official[h + "scratch.output_conv1." + t]
        out["head.conv2." + t] = official[h + "scratch.output_conv2.0." + t]
        out["head.conv3." + t] = official[h + "scratch.output_conv2.2." + t]
    return out


@pytest.fixture(scope="session")
def vits_state() -> dict[str, torch.Tensor]:
    """Random ViT-S Depth Anything weights in the official layout (do not modify; copy first)."""
    return official_state_dict("vits", seed=0)


@pytest.fixture(scope="session")
def vits_model(vits_state):
    """A ViT-S V2 model holding ``vits_state`` (do not modify; build your own to change it)."""
    from endo3d.depth.model import DepthAnything, DepthAnythingConfig

    model = DepthAnything(DepthAnythingConfig("vits"))
    model.load_state_dict(vits_state, strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def build_official():
    """``official_state_dict(encoder, seed)``."""
    return official_state_dict


@pytest.fixture(scope="session")
def build_hf():
    """``hf_state_dict(official, depth)``."""
    return hf_state_dict


# --- Tiny test-only encoder size for the training / eval / CLI tests (endo3d.depth pipeline) ---
TINY = "vitt"


@pytest.fixture(scope="session")
def tiny_encoder():
    """Register a test-only DINOv2 size ``"vitt"`` (width 48, 4 blocks, 2 heads, DPT features 16) for the session.

    The public API knows only vits / vitb / vitl; the size tables are
    extended here so that the whole pipeline (configs, run folders, CLI)
    runs in seconds on a CPU.
    """
    from endo3d.depth import model as da_model
    from endo3d.depth.dinov2 import VIT_SIZES, ViTSize

    mp = pytest.MonkeyPatch()
    mp.setitem(VIT_SIZES, TINY, ViTSize(48, 4, 2))
    mp.setitem(da_model._HEAD, TINY, (16, (8, 16, 32, 48)))
    mp.setitem(da_model._TAPS_V2, TINY, (0, 1, 2, 3))
    yield TINY
    mp.undo()


@pytest.fixture(scope="session")
def layouts():
    """The fixture writers of ``tests/depth/layouts.py`` (SCARED, Hamlyn, C3VD, SimCol3D, TIFF)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("depth_layouts", Path(__file__).with_name("layouts.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread():
    """Run the module's tiny trainings on one torch thread (much faster on a shared, loaded CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
