"""Loading Depth Anything checkpoints (endo3d.depth.checkpoint): official .pth and Hugging Face safetensors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from endo3d.core import InputError
from endo3d.depth.checkpoint import (
    convert_hf_state_dict,
    depth_anything_from_state_dict,
    infer_encoder,
    load_depth_anything,
)


@pytest.fixture(scope="module")
def hf_file(tmp_path_factory, vits_state, build_hf):
    """The random ViT-S weights as a Hugging Face ``model.safetensors`` (in its own folder)."""
    path = tmp_path_factory.mktemp("hf") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in build_hf(vits_state, depth=12).items()}, str(path))
    return path


def _same_weights(model, state) -> None:
    ours = model.state_dict()
    assert sorted(ours) == sorted(state)
    for k, v in state.items():
        assert torch.equal(ours[k], v), k


def test_official_pth(tmp_path, vits_state) -> None:
    path = tmp_path / "depth_anything_v2_vits.pth"
    torch.save(vits_state, path)
    model = load_depth_anything(path)  # encoder read from the weights
    assert model.config.encoder == "vits" and model.config.version == 2
    assert not model.training
    _same_weights(model, vits_state)
    assert depth_anything_from_state_dict(vits_state, "vits", version=1).config.taps == (8, 9, 10, 11)


def test_hf_safetensors(hf_file, vits_state, build_hf, vits_model) -> None:
    hf = build_hf(vits_state, depth=12)
    assert not any("qkv" in k for k in hf) and "backbone.encoder.layer.0.attention.attention.key.weight" in hf
    model = load_depth_anything(hf_file)
    _same_weights(model, vits_state)
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vits_model(x), rtol=0, atol=0)


def test_hf_config_version_is_checked(hf_file) -> None:
    config = {"backbone_config": {"out_indices": [9, 10, 11, 12], "num_hidden_layers": 12}}
    (hf_file.parent / "config.json").write_text(json.dumps(config))
    try:
        assert load_depth_anything(hf_file, version=1).config.version == 1
        with pytest.raises(InputError, match="V1"):
            load_depth_anything(hf_file, version=2)
    finally:
        (hf_file.parent / "config.json").unlink()


def test_infer_encoder(vits_state, build_hf) -> None:
    assert infer_encoder(vits_state) == "vits"
    assert infer_encoder(build_hf(vits_state, depth=12)) == "vits"
    for name, width, depth in (("vitb", 768, 12), ("vitl", 1024, 24)):
        fake = {"pretrained.cls_token": torch.empty(1, 1, width)}
        fake.update({f"pretrained.blocks.{i}.norm1.weight": torch.empty(0) for i in range(depth)})
        assert infer_encoder(fake) == name
    with pytest.raises(ValueError):
        infer_encoder({"encoder.weight": torch.zeros(1)})


def test_hf_unknown_keys_are_reported(vits_state, build_hf) -> None:
    hf = build_hf(vits_state, depth=12)
    hf["neck.something_new.weight"] = torch.zeros(1)
    del hf["backbone.encoder.layer.3.attention.attention.key.bias"]
    converted, unknown = convert_hf_state_dict(hf)
    assert "neck.something_new.weight" in unknown
    assert "pretrained.blocks.3.attn.qkv.bias" not in converted
    assert any("layer.3.attention.attention.query.bias" in k for k in unknown)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda sd: sd.pop("depth_head.scratch.refinenet2.resConfUnit1.conv2.bias"),
         r"1 missing keys \(depth_head.scratch.refinenet2"),
        (lambda sd: sd.__setitem__("depth_head.scratch.output_conv3.weight", torch.zeros(1)),
         r"unexpected keys \(depth_head.scratch.output_conv3"),
        (lambda sd: sd.__setitem__("pretrained.blocks.4.ls1.gamma", torch.zeros(10)),
         r"wrong shape.*blocks.4.ls1.gamma \(10,\) vs \(384,\)"),
        (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("pretrained.blocks.11.")], r"missing keys"),
    ],
)
def test_strict_errors_name_the_keys(vits_state, edit, pattern) -> None:
    state = dict(vits_state)
    edit(state)
    with pytest.raises(InputError, match=pattern) as info:
        depth_anything_from_state_dict(state, "vits", source="bad.pth")
    assert str(info.value).startswith("bad.pth: ") and "\n" not in str(info.value)


def test_strict_error_from_a_file(tmp_path, vits_state) -> None:
    state = {k: v for k, v in vits_state.items() if not k.startswith("depth_head.")}
    path = tmp_path / "encoder_only.pth"
    torch.save(state, path)
    with pytest.raises(InputError, match=r"missing keys \(depth_head") as info:
        load_depth_anything(path)
    assert str(path) in str(info.value)


def test_wrong_encoder_and_bad_files(tmp_path, vits_state) -> None:
    with pytest.raises(InputError, match="holds a vits encoder, not vitb"):
        depth_anything_from_state_dict(vits_state, "vitb")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_depth_anything(garbage)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00\x01\x02")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_depth_anything(bad_st)
    with pytest.raises(InputError, match="not found"):
        load_depth_anything(tmp_path / "missing.pth")
    other = tmp_path / "other.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(2)}, other)
    with pytest.raises(InputError, match="not a Depth Anything checkpoint"):
        load_depth_anything(other)
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    with pytest.raises(InputError, match="not a state dict"):
        load_depth_anything(listing)
