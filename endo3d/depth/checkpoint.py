"""Load Depth Anything weights: official ``.pth`` and Hugging Face safetensors.

Two layouts are read:

- **official** (``depth_anything_v2_vits.pth``, ``depth_anything_vits14.pth``):
  ``pretrained.*`` and ``depth_head.*``, the names our modules use.
- **Hugging Face** (``Depth-Anything-V2-Small-hf/model.safetensors``,
  ``depth-anything-small-hf``): ``backbone.*``, ``neck.*``, ``head.*``, with
  q, k and v stored separately (merged here into ``qkv`` in that order),
  LayerScale as ``layer_scale{1,2}.lambda1``, and the fusion blocks in
  coarse-to-fine order (``neck.fusion_stage.layers.j`` is
  ``refinenet{4 - j}``).

Loading is strict: a missing or unexpected key or a shape mismatch is an
:class:`~endo3d.core.InputError` naming the file and a few keys; nothing is
dropped quietly.

V1 and V2 weights have identical names and shapes, so ``version`` cannot be
read from the weights; a Hugging Face ``config.json`` beside the file is
checked against it when present.
"""

from __future__ import annotations

import json
import re
from os import PathLike
from pathlib import Path
from typing import Mapping

import torch

from endo3d.core import InputError
from endo3d.depth.dinov2 import VIT_SIZES
from endo3d.depth.model import DepthAnything, DepthAnythingConfig

__all__ = [
    "convert_hf_state_dict",
    "depth_anything_from_state_dict",
    "infer_encoder",
    "load_depth_anything",
    "read_state_dict",
]

_SHOW = 5  # keys named in an error message


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_state_dict(path: str | PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save``d state dict (read with ``weights_only``).

    A ``.pth`` holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Raises:
        InputError: missing or unreadable file, or no tensors in it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found")
    kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch (torch.save)"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure is a bad file for the user
        reason = f"{type(exc).__name__}: {_one_line(exc)[:200]}"
        raise InputError(path, f"cannot read checkpoint as a {kind} file ({reason})") from exc
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(path, "not a state dict of tensors")
    return {str(k): v for k, v in obj.items()}


def _layout(state: Mapping[str, torch.Tensor]) -> str:
    if any(k.startswith(("pretrained.", "depth_head.")) for k in state):
        return "official"
    if any(k.startswith("backbone.embeddings.") for k in state):
        return "hf"
    raise ValueError("neither the official Depth Anything layout (pretrained.*, depth_head.*) "
                     "nor the Hugging Face one (backbone.*, neck.*, head.*)")


def infer_encoder(state: Mapping[str, torch.Tensor]) -> str:
    """``"vits"``, ``"vitb"`` or ``"vitl"`` from the token width of a state dict (either layout).

    Raises:
        ValueError: not a Depth Anything state dict, or a size we do not know.
    """
    layout = _layout(state)
    cls_key = "pretrained.cls_token" if layout == "official" else "backbone.embeddings.cls_token"
    official = layout == "official"
    block = re.compile(r"^pretrained\.blocks\.(\d+)\." if official else r"^backbone\.encoder\.layer\.(\d+)\.")
    if cls_key not in state:
        raise ValueError(f"no {cls_key}")
    dim = int(state[cls_key].shape[-1])
    depth = 1 + max((int(m.group(1)) for k in state if (m := block.match(k))), default=-1)
    for name, size in VIT_SIZES.items():  # widths are unique; a wrong block count is reported by the key check
        if size.embed_dim == dim:
            return name
    raise ValueError(f"unknown encoder size: width {dim}, {depth} blocks")


_HF_RULES: list[tuple[str, str]] = [
    (r"backbone\.embeddings\.cls_token", "pretrained.cls_token"),
    (r"backbone\.embeddings\.mask_token", "pretrained.mask_token"),
    (r"backbone\.embeddings\.position_embeddings", "pretrained.pos_embed"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"pretrained.patch_embed.proj.\1"),
    (r"backbone\.layernorm\.(weight|bias)", r"pretrained.norm.\1"),
    (r"backbone\.encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"pretrained.blocks.\1.ls\2.gamma"),
    (r"backbone\.encoder\.layer\.(\d+)\.(norm[12])\.(weight|bias)", r"pretrained.blocks.\1.\2.\3"),
    (r"backbone\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"pretrained.blocks.\1.mlp.\2.\3"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"pretrained.blocks.\1.attn.proj.\2"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.projection\.(weight|bias)", r"depth_head.projects.\1.\2"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.resize\.(weight|bias)", r"depth_head.resize_layers.\1.\2"),
    (r"head\.conv1\.(weight|bias)", r"depth_head.scratch.output_conv1.\1"),
    (r"head\.conv2\.(weight|bias)", r"depth_head.scratch.output_conv2.0.\1"),
    (r"head\.conv3\.(weight|bias)", r"depth_head.scratch.output_conv2.2.\1"),
]
_HF_QKV = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")
_HF_CONVS = re.compile(r"^neck\.convs\.(\d)\.weight$")
_HF_FUSION = re.compile(
    r"^neck\.fusion_stage\.layers\.(\d)\.(projection|residual_layer([12])\.convolution([12]))\.(weight|bias)$"
)


def _hf_name(key: str) -> str | None:
    for pattern, repl in _HF_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    if m := _HF_CONVS.match(key):
        return f"depth_head.scratch.layer{int(m.group(1)) + 1}_rn.weight"
    if m := _HF_FUSION.match(key):
        block = f"depth_head.scratch.refinenet{4 - int(m.group(1))}"
        if m.group(2) == "projection":
            return f"{block}.out_conv.{m.group(5)}"
        return f"{block}.resConfUnit{m.group(3)}.conv{m.group(4)}.{m.group(5)}"
    return None


def convert_hf_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Hugging Face Depth Anything names -> official names.

    Returns:
        The converted state dict and the keys that had no official name (the
        caller reports them as unexpected). q, k, v of a block are
        concatenated into ``attn.qkv``; a block missing one of them leaves
        its ``qkv`` out (reported later as missing).
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if m := _HF_QKV.match(key):
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = value
            continue
        name = _hf_name(key)
        if name is None:
            unknown.append(key)
        else:
            out[name] = value
    for (block, kind), parts in sorted(qkv.items()):
        if set(parts) == {"query", "key", "value"}:
            merged = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
            out[f"pretrained.blocks.{block}.attn.qkv.{kind}"] = merged
        else:
            prefix = f"backbone.encoder.layer.{block}.attention.attention"
            unknown.extend(f"{prefix}.{p}.{kind}" for p in parts)
    return out, unknown


def _hf_config_version(path: Path) -> int | None:
    """Depth Anything version implied by a Hugging Face ``config.json`` beside ``path`` (``None``: unknown)."""
    config = path.with_name("config.json")
    if path.suffix != ".safetensors" or not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
        indices = list(data["backbone_config"]["out_indices"])  # hidden-state indices: block i is i + 1
        depth = int(data["backbone_config"]["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if indices == [depth - 3, depth - 2, depth - 1, depth]:
        return 1
    if indices in ([3, 6, 9, 12], [5, 12, 18, 24]):
        return 2
    return None


def _summary(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def depth_anything_from_state_dict(
    state: Mapping[str, torch.Tensor],
    encoder: str | None = None,
    version: int = 2,
    *,
    use_clstoken: bool = False,
    source: str | PathLike[str] = "state dict",
) -> DepthAnything:
    """Build a :class:`DepthAnything` from a state dict in either layout, strictly.

    Args:
        state: official or Hugging Face names (not modified; tensors are copied).
        encoder: ``"vits"``, ``"vitb"`` or ``"vitl"``; ``None`` reads it from
            the weights (:func:`infer_encoder`).
        version: 1 or 2; must match the weights (see module docstring).
        use_clstoken: build the DPT class-token readout (needs its weights).
        source: what to name in error messages (the file).

    Returns:
        The model on the CPU in eval mode, float32.

    Raises:
        InputError: unknown layout, an encoder that differs from the weights,
            missing/unexpected keys or shape mismatches.
    """
    if encoder is not None and encoder not in VIT_SIZES:
        raise ValueError(f"encoder must be one of {sorted(VIT_SIZES)} or None, got {encoder!r}")
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, got {version!r}")
    try:
        layout = _layout(state)
    except ValueError as exc:
        raise InputError(source, f"not a Depth Anything checkpoint: {exc}") from None
    try:
        found = infer_encoder(state)
    except ValueError as exc:
        if encoder is None:
            raise InputError(source, f"cannot tell the encoder size: {exc}; pass encoder=") from None
        found = encoder  # the key check below names what is wrong
    if encoder is not None and encoder != found:
        raise InputError(source, f"checkpoint holds a {found} encoder, not {encoder}")
    unexpected: list[str] = []
    if layout == "hf":
        state, unexpected = convert_hf_state_dict(state)
    with torch.device("meta"):  # no storage and no random init until the keys are known to fit
        model = DepthAnything(DepthAnythingConfig(found, version, use_clstoken))  # type: ignore[arg-type]
    expected = model.state_dict()
    unexpected += [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_summary(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_summary(unexpected)})")
        raise InputError(source, f"does not match Depth Anything {found}: " + "; ".join(parts))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise InputError(source, f"{len(wrong)} tensors have the wrong shape (checkpoint vs {found}): "
                                 f"{_summary(wrong)}")
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)  # copies (and casts) into the fresh float32 storage
    return model.eval()


def load_depth_anything(
    path: str | PathLike[str],
    encoder: str | None = None,
    version: int = 2,
    *,
    use_clstoken: bool = False,
) -> DepthAnything:
    """Build a :class:`DepthAnything` from a checkpoint file, strictly.

    Args:
        path: official ``.pth`` or Hugging Face ``.safetensors``.
        encoder: ``"vits"``, ``"vitb"`` or ``"vitl"``; ``None`` reads it from
            the weights (:func:`infer_encoder`).
        version: 1 or 2; must match the weights (see module docstring).
        use_clstoken: build the DPT class-token readout (needs its weights).

    Returns:
        The model on the CPU in eval mode.

    Raises:
        InputError: unreadable file, unknown layout, an encoder that differs
            from the weights, missing/unexpected keys, shape mismatches, or a
            ``config.json`` beside the file that says another version.
    """
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, got {version!r}")
    path = Path(path)
    state = read_state_dict(path)
    hf_version = _hf_config_version(path)
    if hf_version is not None and hf_version != version:
        raise InputError(path, f"config.json describes Depth Anything V{hf_version}, "
                               f"but version={version} was asked for")
    return depth_anything_from_state_dict(state, encoder, version, use_clstoken=use_clstoken, source=path)
