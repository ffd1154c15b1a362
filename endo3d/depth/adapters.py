"""Parameter-efficient adaptation of the DINOv2 encoder: LoRA variants and convolutional necks.

LoRA layers replace ``nn.Linear`` modules of the encoder blocks (``mlp.fc1``
and ``mlp.fc2`` by default, as EndoDAC) and keep the frozen weight ``W0``
and bias under the same names, so the base checkpoint keys are unchanged::

    lora    h = W0 x + b + s B A x
    dvlora  h = W0 x + b + s diag(v) B diag(u) A x                (EndoDAC DV-LoRA)
    gated   h = W0 x + b + s sigmoid(g) diag(v) B diag(u) A x     (our GDV-LoRA)

with ``s = alpha / rank``, ``A`` (rank x in) Kaiming-uniform (``a = sqrt(5)``,
as ``nn.Linear``), ``B`` (out x rank) zero, so every variant starts as the
base model. DV-LoRA vectors follow EndoDAC: ``u`` (rank) and ``v`` (out),
both drawn from U(-1, 1) (their Kaiming-uniform on an ``(n, 1)`` tensor),
trainable; EndoDAC trains ``A, B`` during a warm-up (20k steps) and ``u, v``
afterwards (``freeze_backbone(lora_parts=...)``). EndoDAC uses ``alpha = rank``
for DV-LoRA (``s = 1``) and ``alpha = 1`` for plain LoRA.

``gated`` is our reading of Endo3DAC's "gated DV-LoRA", whose code is not
public: one learnable scalar per adapted layer, ``g`` (init 0, so the gate
starts at 0.5), lets training switch each layer's update on or off. The gate
does not depend on the input, so :func:`merge_adapters` stays exact.

:class:`ConvNeck` (EndoDAC's "convolutional neck", SAM/ViTDet's residual
bottleneck) runs on the patch tokens after selected blocks:
``tokens += LN(conv1x1(GELU(LN(conv3x3(GELU(LN(conv1x1(tokens))))))))``, width
C/8 in the middle, no conv biases, channel LayerNorms (eps 1e-6), the last
LayerNorm zero-initialised so the neck starts as the identity. The class
token passes unchanged.

Adapters are saved apart from the base weights (:func:`save_adapters`, a few
MB) with their configuration in the safetensors metadata, so
:func:`load_adapters` can rebuild them on a freshly loaded base model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from endo3d.core import InputError
from endo3d.core.config import from_dict, to_dict
from endo3d.depth.dinov2 import DinoVisionTransformer

__all__ = [
    "ADAPTER_FORMAT",
    "ChannelLayerNorm",
    "ConvNeck",
    "DVLoRALinear",
    "GatedLoRALinear",
    "LoRAConfig",
    "LoRALinear",
    "NeckConfig",
    "ParameterReport",
    "adapter_state_dict",
    "freeze_backbone",
    "inject_adapters",
    "inject_necks",
    "load_adapters",
    "merge_adapters",
    "save_adapters",
    "trainable_parameter_report",
]

ADAPTER_FORMAT = "endo3d/depth-adapters/v1"
"""``format`` entry of the metadata of an adapter file."""

LoRAKind = Literal["lora", "dvlora", "gated"]


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters on linear layers of the encoder blocks.

    Attributes:
        kind: ``"lora"``, ``"dvlora"`` (EndoDAC) or ``"gated"`` (DV-LoRA with
            a learnable scalar gate per layer).
        rank: rank ``r`` of ``B A``.
        alpha: the update is scaled by ``alpha / rank``; ``None`` means
            ``alpha = rank`` (scale 1, EndoDAC's DV-LoRA setting).
        targets: module paths inside each block (``mlp.fc1``, ``mlp.fc2``,
            ``attn.qkv``, ``attn.proj``).
        blocks: block indices to adapt; ``None`` = all.
    """

    kind: LoRAKind = "dvlora"
    rank: int = 4
    alpha: float | None = None
    targets: tuple[str, ...] = ("mlp.fc1", "mlp.fc2")
    blocks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("lora", "dvlora", "gated"):
            raise ValueError(f"LoRA kind must be lora, dvlora or gated, got {self.kind!r}")
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise ValueError("LoRA targets must name at least one module")

    @property
    def scale(self) -> float:
        """``alpha / rank``."""
        return (self.rank if self.alpha is None else self.alpha) / self.rank


@dataclass(frozen=True)
class NeckConfig:
    """Convolutional necks after encoder blocks.

    Attributes:
        blocks: block indices; ``None`` = the model's tap blocks (2, 5, 8, 11
            for Depth Anything V2 S/B, EndoDAC's choice).
        reduction: bottleneck width is ``C // reduction``.
    """

    blocks: tuple[int, ...] | None = None
    reduction: int = 8

    def __post_init__(self) -> None:
        if self.reduction < 1:
            raise ValueError(f"neck reduction must be >= 1, got {self.reduction}")


class LoRALinear(nn.Module):
    """``W0 x + b + s B A x`` around the frozen ``weight`` / ``bias`` of an ``nn.Linear``.

    Args:
        base: the layer to adapt; its ``weight`` and ``bias`` Parameters are
            taken over (same objects, same state-dict names).
        rank: ``r``.
        scale: ``s = alpha / r``.
    """

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.scale = float(scale)
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank update applied to ``x`` (``(..., in)`` -> ``(..., out)``)."""
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The update as a dense ``(out, in)`` matrix."""
        return (self.lora_B @ self.lora_A) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.branch(x)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W0 + delta`` (and the same bias)."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.weight + self.delta_weight())
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        layer.weight.requires_grad_(self.weight.requires_grad)
        if self.bias is not None:
            layer.bias.requires_grad_(self.bias.requires_grad)
        return layer

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, scale={self.scale}"


class DVLoRALinear(LoRALinear):
    """EndoDAC's DV-LoRA: ``W0 x + b + s diag(v) B diag(u) A x``; ``u``, ``v`` ~ U(-1, 1)."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__(base, rank, scale)
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_u = nn.Parameter(torch.empty(rank, **like).uniform_(-1.0, 1.0))
        self.lora_v = nn.Parameter(torch.empty(base.out_features, **like).uniform_(-1.0, 1.0))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A) * self.lora_u, self.lora_B) * (self.lora_v * self.scale)

    def delta_weight(self) -> torch.Tensor:
        return ((self.lora_v[:, None] * self.lora_B) @ (self.lora_u[:, None] * self.lora_A)) * self.scale


class GatedLoRALinear(DVLoRALinear):
    """DV-LoRA times a learnable scalar gate ``sigmoid(g)``, ``g`` = 0 at start (see module docstring)."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__(base, rank, scale)
        self.lora_gate = nn.Parameter(torch.zeros(1, dtype=base.weight.dtype, device=base.weight.device))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return super().branch(x) * torch.sigmoid(self.lora_gate)

    def delta_weight(self) -> torch.Tensor:
        return super().delta_weight() * torch.sigmoid(self.lora_gate)


_LORA_CLASSES: dict[str, type[LoRALinear]] = {"lora": LoRALinear, "dvlora": DVLoRALinear, "gated": GatedLoRALinear}
_MATRICES = ("lora_A", "lora_B")
_VECTORS = ("lora_u", "lora_v")


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeck(nn.Module):
    """Residual bottleneck on the patch tokens (EndoDAC's convolutional neck); starts as the identity.

    Args:
        dim: token width ``C``.
        reduction: bottleneck width ``C // reduction`` (8 in EndoDAC).
    """

    def __init__(self, dim: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.conv1 = nn.Conv2d(dim, hidden, kernel_size=1, bias=False)
        self.norm1 = ChannelLayerNorm(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, bias=False)
        self.norm2 = ChannelLayerNorm(hidden)
        self.conv3 = nn.Conv2d(hidden, dim, kernel_size=1, bias=False)
        self.norm3 = ChannelLayerNorm(dim)
        for conv in (self.conv1, self.conv2, self.conv3):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # Caffe2 MSRA fill
        nn.init.zeros_(self.norm3.weight)

    def residual(self, maps: torch.Tensor) -> torch.Tensor:
        """The update for ``(B, C, h, w)`` maps (zero at initialisation)."""
        x = F.gelu(self.norm1(self.conv1(maps)))
        x = F.gelu(self.norm2(self.conv2(x)))
        return self.norm3(self.conv3(x))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, 1 + h*w, C)`` tokens (class token first) -> same shape, patch tokens updated."""
        h, w = grid
        cls, patches = tokens[:, :1], tokens[:, 1:]
        b, n, c = patches.shape
        if n != h * w:
            raise ValueError(f"{n} patch tokens do not fill a {h}x{w} grid")
        maps = patches.transpose(1, 2).reshape(b, c, h, w)
        update = self.residual(maps).reshape(b, c, n).transpose(1, 2)
        return torch.cat([cls, patches + update], dim=1)


def _encoder(model: nn.Module) -> tuple[DinoVisionTransformer, str]:
    """The DINOv2 encoder inside ``model`` and its name prefix (``"pretrained."`` or ``""``)."""
    if isinstance(model, DinoVisionTransformer):
        return model, ""
    encoder = getattr(model, "pretrained", None)
    if isinstance(encoder, DinoVisionTransformer):
        return encoder, "pretrained."
    raise TypeError(f"expected a DepthAnything or DinoVisionTransformer, got {type(model).__name__}")


def inject_adapters(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Replace the target ``nn.Linear`` layers of the encoder blocks with LoRA layers, in place.

    Load the base weights first: the new ``lora_*`` parameters are not in a
    base checkpoint. New parameters are created trainable; call
    :func:`freeze_backbone` to freeze the rest.

    Args:
        model: a ``DepthAnything`` or its ``DinoVisionTransformer``.
        config: kind, rank, targets, blocks.

    Returns:
        Names of the replaced modules (e.g. ``pretrained.blocks.0.mlp.fc1``).

    Raises:
        ValueError: the encoder already has LoRA layers, a block index is out
            of range, or a target is not an ``nn.Linear``.
    """
    encoder, prefix = _encoder(model)
    if encoder.lora_config is not None or any(isinstance(m, LoRALinear) for m in encoder.modules()):
        raise ValueError("the encoder already has LoRA adapters")
    depth = len(encoder.blocks)
    blocks = range(depth) if config.blocks is None else config.blocks
    bad = [i for i in blocks if not 0 <= i < depth]
    if bad:
        raise ValueError(f"LoRA blocks {bad} out of range for {depth} blocks")
    plan = []
    for i in blocks:
        for target in config.targets:
            parent_name, _, child = target.rpartition(".")
            parent = encoder.blocks[i].get_submodule(parent_name) if parent_name else encoder.blocks[i]
            layer = getattr(parent, child, None)
            if type(layer) is not nn.Linear:
                raise ValueError(f"blocks.{i}.{target} is {type(layer).__name__}, not nn.Linear")
            plan.append((i, target, parent, child, layer))
    cls = _LORA_CLASSES[config.kind]
    names = []
    for i, target, parent, child, layer in plan:
        setattr(parent, child, cls(layer, config.rank, config.scale))
        names.append(f"{prefix}blocks.{i}.{target}")
    encoder.lora_config = config
    return names


def inject_necks(model: nn.Module, config: NeckConfig = NeckConfig()) -> list[str]:
    """Add a :class:`ConvNeck` after each of ``config.blocks`` (default: the tap blocks), in place.

    Returns:
        Names of the new modules (e.g. ``pretrained.necks.2``).

    Raises:
        ValueError: the encoder already has necks, or a block is out of range.
    """
    encoder, prefix = _encoder(model)
    if len(encoder.necks) or encoder.neck_config is not None:
        raise ValueError("the encoder already has necks")
    blocks = encoder.taps if config.blocks is None else config.blocks
    depth = len(encoder.blocks)
    bad = [i for i in blocks if not 0 <= i < depth]
    if bad:
        raise ValueError(f"neck blocks {bad} out of range for {depth} blocks")
    device, dtype = encoder.cls_token.device, encoder.cls_token.dtype
    for i in blocks:
        encoder.necks[str(i)] = ConvNeck(encoder.embed_dim, config.reduction).to(device=device, dtype=dtype)
    encoder.neck_config = config
    return [f"{prefix}necks.{i}" for i in blocks]


def _adapter_parameters(model: nn.Module, lora_parts: str = "all") -> dict[str, nn.Parameter]:
    """Adapter parameters by their name in ``model``."""
    encoder, prefix = _encoder(model)
    names = []
    if lora_parts in ("all", "matrices"):
        names += list(_MATRICES)
    if lora_parts in ("all", "vectors"):
        names += list(_VECTORS)
    names.append("lora_gate")
    out: dict[str, nn.Parameter] = {}
    for mod_name, module in encoder.named_modules():
        if isinstance(module, LoRALinear):
            for p in names:
                if hasattr(module, p):
                    out[f"{prefix}{mod_name}.{p}"] = getattr(module, p)
    for name, p in encoder.necks.named_parameters():
        out[f"{prefix}necks.{name}"] = p
    return out


def freeze_backbone(
    model: nn.Module,
    *,
    train_head: bool = False,
    lora_parts: Literal["all", "matrices", "vectors"] = "all",
) -> list[str]:
    """Freeze everything but the adapters (and optionally the DPT head).

    Args:
        model: a ``DepthAnything`` (or its encoder) with adapters injected.
        train_head: keep ``depth_head.*`` trainable too.
        lora_parts: which LoRA parameters train: ``"all"``; ``"matrices"``
            (``A``, ``B``: EndoDAC's warm-up); ``"vectors"`` (``u``, ``v``:
            EndoDAC after the warm-up). The gate and the necks always train.

    Returns:
        Names of the trainable parameters.

    Raises:
        ValueError: nothing would be trainable.
    """
    if lora_parts not in ("all", "matrices", "vectors"):
        raise ValueError(f"lora_parts must be all, matrices or vectors, got {lora_parts!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = _adapter_parameters(model, lora_parts)
    if train_head:
        head = getattr(model, "depth_head", None)
        if head is None:
            raise ValueError("train_head=True needs a model with a depth_head")
        trainable.update({f"depth_head.{n}": p for n, p in head.named_parameters()})
    if not trainable:
        raise ValueError("nothing to train: inject adapters or necks first, or pass train_head=True")
    for p in trainable.values():
        p.requires_grad_(True)
    return sorted(trainable)


class ParameterReport(NamedTuple):
    """Parameter counts (each parameter counted once)."""

    trainable: int
    total: int
    share: float
    """``trainable / total``."""


def trainable_parameter_report(model: nn.Module) -> ParameterReport:
    """``(trainable, total, share)`` over the unique parameters of ``model``."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return ParameterReport(trainable, total, trainable / total if total else 0.0)


def adapter_state_dict(model: nn.Module, *, include_head: bool = False) -> dict[str, torch.Tensor]:
    """Adapter tensors (LoRA, gates, necks; plus ``depth_head.*`` if asked), named as in a ``DepthAnything``."""
    _, prefix = _encoder(model)
    out = {("" if prefix else "pretrained.") + k: p.detach() for k, p in _adapter_parameters(model).items()}
    if include_head:
        head = getattr(model, "depth_head", None)
        if head is None:
            raise ValueError("include_head=True needs a model with a depth_head")
        out.update({f"depth_head.{n}": t.detach() for n, t in head.state_dict().items()})
    return out


def _metadata(model: nn.Module, include_head: bool) -> dict[str, str]:
    encoder, _ = _encoder(model)
    lora, neck = encoder.lora_config, encoder.neck_config
    return {
        "format": ADAPTER_FORMAT,
        "embed_dim": str(encoder.embed_dim),
        "depth": str(len(encoder.blocks)),
        "lora": json.dumps(to_dict(lora) if lora is not None else None),
        "neck": json.dumps(to_dict(neck) if neck is not None else None),
        "include_head": json.dumps(include_head),
    }


def save_adapters(model: nn.Module, path: str | os.PathLike[str], *, include_head: bool = False) -> Path:
    """Write the adapter tensors and their configuration to a ``.safetensors`` file (atomically).

    Args:
        model: a ``DepthAnything`` (or its encoder) with adapters.
        path: output file.
        include_head: also store ``depth_head.*`` (when the head was trained).

    Returns:
        ``path``.
    """
    from safetensors.torch import save_file

    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model, include_head=include_head).items()}
    if not tensors:
        raise ValueError("the model has no adapters to save")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=_metadata(model, include_head))
    os.replace(tmp, path)
    return path


def load_adapters(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load adapters saved by :func:`save_adapters` into ``model``, in place.

    A model without adapters gets them injected first from the file's
    configuration (load the base weights before). A model with adapters
    must have the same configuration. On an error after injection the model
    keeps the injected, untrained adapters.

    Returns:
        Names of the loaded tensors.

    Raises:
        InputError: unreadable file, not an adapter file, another encoder
            size or adapter configuration, missing/unexpected keys or shape
            mismatches.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "adapter file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise InputError(path, f"cannot read adapter file ({type(exc).__name__}: {reason})") from exc
    if meta.get("format") != ADAPTER_FORMAT:
        found = meta.get("format")
        raise InputError(path, f"not an endo3d adapter file (format {found!r}, expected {ADAPTER_FORMAT!r})")
    encoder, _ = _encoder(model)
    size = (str(encoder.embed_dim), str(len(encoder.blocks)))
    if (meta.get("embed_dim"), meta.get("depth")) != size:
        raise InputError(path, f"adapters are for a width-{meta.get('embed_dim')}, {meta.get('depth')}-block encoder, "
                               f"the model has width {size[0]}, {size[1]} blocks")
    try:
        lora_data, neck_data = json.loads(meta["lora"]), json.loads(meta["neck"])
        include_head = bool(json.loads(meta["include_head"]))
    except (KeyError, ValueError) as exc:
        raise InputError(path, f"bad adapter metadata ({exc})") from None
    lora = from_dict(LoRAConfig, lora_data, str(path), "lora") if lora_data is not None else None
    neck = from_dict(NeckConfig, neck_data, str(path), "neck") if neck_data is not None else None
    for name, saved, current, inject in (("LoRA", lora, encoder.lora_config, inject_adapters),
                                         ("neck", neck, encoder.neck_config, inject_necks)):
        if current is None and saved is not None:
            inject(model, saved)  # type: ignore[operator]
        elif current != saved:
            raise InputError(path, f"{name} configuration differs: file {saved}, model {current}")
    expected = adapter_state_dict(model, include_head=include_head)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise InputError(path, f"adapter keys differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
             for k, v in expected.items() if tensors[k].shape != v.shape]
    if wrong:
        raise InputError(path, f"{len(wrong)} adapter tensors have the wrong shape: {', '.join(wrong[:5])}")
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(tensors[k].to(dtype=v.dtype, device=v.device))
    return sorted(expected)


def merge_adapters(model: nn.Module) -> list[str]:
    """Fold every LoRA update into its base ``nn.Linear`` (for inference), in place.

    Outputs are unchanged up to float rounding; the state dict is the base
    layout again (plus necks, which cannot be folded). Gates and vectors are
    folded too. The merged model carries no LoRA configuration any more:
    :func:`load_adapters` on it would add the same update a second time.

    Returns:
        Names of the merged modules.
    """
    encoder, prefix = _encoder(model)
    targets = [(name, m) for name, m in encoder.named_modules() if isinstance(m, LoRALinear)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(encoder.get_submodule(parent_name), child, module.merged())
    encoder.lora_config = None
    return [f"{prefix}{name}" for name, _ in targets]

