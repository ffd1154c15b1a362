"""Tiny end-to-end training: self-supervised and supervised, gradients, resume (endo3d.depth.train)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from endo3d.core import InputError
from endo3d.depth.config import DepthFinetuneConfig, DepthTrainConfig
from endo3d.depth.run import load_run, load_tensors

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(encoder="vitt", height=56, width=70, batch_size=2, progress=False, device="cpu")


def _ss(data, out, **kw) -> DepthTrainConfig:
    settings = dict(TINY, steps=8, lr=2e-3, pose_lr=1e-3, pose_width=8, checkpoint_every=4, pose_warmup=1)
    settings.update(kw)
    return DepthTrainConfig(data=(data,), out=out, **settings)


@pytest.fixture(scope="module")
def ss_run(one_thread, tiny_encoder, rigid_colon, tmp_path_factory):
    from endo3d.depth.train import train

    return train(_ss(rigid_colon, tmp_path_factory.mktemp("ss") / "run", steps=14))


def test_self_supervised_loss_falls_and_run_folder(ss_run):
    h = ss_run.history
    assert len(h) == 14 and all(np.isfinite(h))
    assert np.mean(h[-4:]) < np.mean(h[:4])
    files = sorted(p.name for p in ss_run.run.iterdir())
    assert files == ["adapters.safetensors", "base.safetensors", "heads.safetensors", "loss.json", "pose.safetensors",
                     "run.json"]
    info = ss_run.info
    assert info["mode"] == "self-supervised" and info["trainable_share"] < 0.10
    loaded = load_run(ss_run.run)
    assert loaded.pose is not None and loaded.pose.learn_intrinsics
    assert loaded.net.backbone.pretrained.lora_config.kind == "dvlora"


def test_frozen_backbone_gets_no_gradient(tiny_encoder, rigid_colon, tmp_path):
    from endo3d.depth.data import open_sequences
    from endo3d.depth.train import FrameStore, build_models, self_supervised_step, training_samples

    config = _ss(rigid_colon, tmp_path / "unused")
    net, pose, _ = build_models(config, torch.device("cpu"))
    seqs = open_sequences([rigid_colon])
    store = FrameStore(seqs, (56, 70), need_depth=False)
    batch = store.batch(training_samples(seqs, self_supervised=True), torch.tensor([0, 3]), neighbours=True,
                        device=torch.device("cpu"))
    with torch.no_grad():  # B, the necks' last norm and the heads' last conv start at zero: give them values so
        for name, p in net.named_parameters():  # that every part gets a gradient
            if name.endswith("lora_B") or name.endswith("norm3.weight") or name.endswith("conv2.weight"):
                p.normal_(0, 0.01)
    self_supervised_step(net, pose, batch, config, torch.Generator().manual_seed(0)).total.backward()
    for name, p in net.named_parameters():
        adapter = ".lora_" in name or ".necks." in name or name.startswith("heads.")
        assert p.requires_grad == adapter, name
        if adapter:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        if not adapter:
            assert p.grad is None, name
    assert all(p.grad is not None for p in pose.parameters() if p.requires_grad)
    assert pose.focal.weight.grad.abs().sum() > 0
    # pose warm-up: the depth net runs without gradients, the pose / intrinsics net learns
    net.zero_grad(set_to_none=True)
    pose.zero_grad(set_to_none=True)
    self_supervised_step(net, pose, batch, config, torch.Generator().manual_seed(0), train_depth=False).total.backward()
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is not None for p in pose.parameters()) and pose.focal.bias.grad.abs().sum() > 0


def test_pose_warmup_freezes_depth_then_trains_it(tiny_encoder, rigid_colon, tmp_path):
    from endo3d.depth.train import CHECKPOINT, build_models, train

    config = _ss(rigid_colon, tmp_path / "run", steps=5, pose_warmup=3, checkpoint_every=1)
    net, _, _ = build_models(config, torch.device("cpu"))
    heads0 = {f"heads.{k}": v for k, v in net.heads.state_dict().items()}
    for done in (3, 4):  # paused at the end of the warm-up, then one step later
        assert train(dataclasses.replace(config, resume=done == 4), stop_after=3 if done == 3 else 1) is None
        state = torch.load(tmp_path / ".run.partial" / CHECKPOINT, weights_only=False)
        assert state["step"] == done
        same = all(torch.equal(state["net"][k], v) for k, v in heads0.items())
        assert same == (done == 3), "the depth heads train after the warm-up only"
    with pytest.raises(InputError, match="pose-warmup"):
        train(_ss(rigid_colon, tmp_path / "x", steps=3, pose_warmup=3))


def test_prior_weight_keeps_the_adapted_depth_near_the_starting_network(tiny_encoder, rigid_colon, tmp_path):
    """With --prior-weight the depth's scale-invariant log distance to the starting network stays a fraction of
    what the same training reaches without it."""
    from endo3d.depth.train import build_models, resize_image, train
    from endo3d.io import open_dataset

    frames = list(open_dataset(rigid_colon))[:4]
    images = torch.stack([resize_image(f.rgb, (TINY["height"], TINY["width"])) for f in frames])

    def distance(config: DepthTrainConfig) -> float:
        start, _, _ = build_models(config, torch.device("cpu"))
        train(config)
        with torch.no_grad():
            g = torch.log(load_run(config.out).net.eval().depth(images)) - torch.log(start.eval().depth(images))
        return float(g.flatten(1).std(dim=1).mean())

    free = distance(_ss(rigid_colon, tmp_path / "free", steps=6, lr=5e-3))
    anchored = distance(_ss(rigid_colon, tmp_path / "anchored", steps=6, lr=5e-3, prior_weight=20.0))
    assert free > 1e-3, "the unanchored training must move the depth for the comparison to mean anything"
    assert anchored < 0.5 * free, (anchored, free)  # 0.0024 vs 0.031 measured
    with pytest.raises(InputError, match="prior-weight"):
        train(_ss(rigid_colon, tmp_path / "x", prior_weight=-1.0))


def test_base_weights_unchanged_by_training(ss_run):
    loaded = load_run(ss_run.run)
    base = load_tensors(ss_run.run / "base.safetensors")
    state = loaded.net.backbone.state_dict()
    for k, v in base.items():
        assert torch.equal(state[k], v), k


def test_resume_equals_uninterrupted(tiny_encoder, rigid_colon, tmp_path):
    from endo3d.depth.train import train

    full = train(_ss(rigid_colon, tmp_path / "a", steps=6, checkpoint_every=2))
    assert train(_ss(rigid_colon, tmp_path / "b", steps=6, checkpoint_every=2), stop_after=3) is None
    assert not (tmp_path / "b").exists() and (tmp_path / ".b.partial" / "checkpoint.pt").is_file()
    with pytest.raises(InputError, match="interrupted run"):
        train(_ss(rigid_colon, tmp_path / "b", steps=6, checkpoint_every=2))
    with pytest.raises(InputError, match="other settings"):
        train(_ss(rigid_colon, tmp_path / "b", steps=6, checkpoint_every=2, lr=1e-2, resume=True))
    resumed = train(_ss(rigid_colon, tmp_path / "b", steps=6, checkpoint_every=2, resume=True))
    assert resumed.history == full.history
    a, b = load_tensors(tmp_path / "a" / "heads.safetensors"), load_tensors(tmp_path / "b" / "heads.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = load_tensors(tmp_path / "a" / "pose.safetensors"), load_tensors(tmp_path / "b" / "pose.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_known_intrinsics_and_no_adapters(tiny_encoder, rigid_colon, tmp_path):
    from endo3d.depth.train import train

    r = train(_ss(rigid_colon, tmp_path / "k", steps=2, intrinsics="known", adapter="none", necks=False,
                  train_head=True))
    assert r.info["pose"]["learn_intrinsics"] is False
    assert sorted(p.name for p in r.run.iterdir()) == ["base.safetensors", "heads.safetensors", "loss.json",
                                                       "pose.safetensors", "run.json"]
    assert load_run(r.run).pose.learn_intrinsics is False


def test_supervised_finetune_then_self_supervised_init(tiny_encoder, rigid_colon, tissue, tmp_path):
    from endo3d.depth.train import train

    ft = train(DepthFinetuneConfig(data=(rigid_colon,), out=tmp_path / "ft", steps=12, lr=2e-3, loss="silog",
                                   full=True, **TINY))
    assert np.mean(ft.history[-3:]) < np.mean(ft.history[:3])
    assert ft.info["mode"] == "supervised" and ft.info["trainable_share"] == 1.0
    for loss in ("ssi", "l1log"):
        r = train(DepthFinetuneConfig(data=(rigid_colon,), out=tmp_path / loss, steps=2, loss=loss, **TINY))
        assert np.isfinite(r.history).all()
    adapted = train(_ss(tissue, tmp_path / "adapt", steps=3, init=tmp_path / "ft"))
    assert adapted.info["init"] == str(tmp_path / "ft") and adapted.info["trainable_share"] < 0.10
    # the fine-tuned weights are the new base
    base = load_tensors(tmp_path / "adapt" / "base.safetensors")
    ft_base = load_tensors(tmp_path / "ft" / "base.safetensors")
    assert all(torch.equal(base[k], ft_base[k]) for k in ft_base)
    # another Depth Anything version taps other blocks: refused, and nothing is left behind to block a re-run
    with pytest.raises(InputError, match="version 2"):
        train(_ss(tissue, tmp_path / "v1", steps=2, init=tmp_path / "ft", version=1))
    assert not (tmp_path / "v1").exists() and not (tmp_path / ".v1.partial").exists()


def test_bad_inputs(tiny_encoder, rigid_colon, tmp_path, layouts):
    from endo3d.depth.train import train

    with pytest.raises(InputError, match="multiple of 14"):
        train(_ss(rigid_colon, tmp_path / "x", height=50))
    with pytest.raises(InputError, match="encoder"):
        train(_ss(rigid_colon, tmp_path / "x", encoder="vitq"))
    folder = tmp_path / "two"
    folder.mkdir()
    from endo3d.io import write_png

    for i, f in enumerate(layouts.rgb_frames(2, 16, 20)):
        write_png(folder / f"{i}.png", f)
    with pytest.raises(InputError, match="at least 3 frames"):
        train(_ss(folder, tmp_path / "x"))
    with pytest.raises(InputError, match="no ground-truth depth"):
        train(DepthFinetuneConfig(data=(folder,), out=tmp_path / "y", steps=1, **TINY))
    with pytest.raises(InputError, match="no intrinsics"):
        train(_ss(folder, tmp_path / "z", intrinsics="known"))
    assert dataclasses.replace(_ss(rigid_colon, tmp_path), steps=1).steps == 1
