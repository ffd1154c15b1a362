"""Fitting: the loss goes down, the run folder is complete, resume continues where it stopped."""

from __future__ import annotations

import json

import pytest
import torch

from endo3d.core.errors import InputError
from endo3d.pbr import fit as fit_module
from endo3d.pbr.fit import Trainer, _start_model, fit, load_inputs

from .conftest import fit_config


def _photometric(trainer: Trainer, ids: list[int]) -> float:
    inputs, model = trainer.inputs, trainer.model
    frames = [inputs.frames[i] for i in ids]
    with torch.no_grad():
        images = model.render(frames, inputs.height, inputs.width, inputs.K)
    total = 0.0
    for img, f in zip(images, frames):
        pred = img.reshape(3, -1)[:, f.pixels].T
        total += float(((pred - f.target).abs() * f.weight[:, None]).sum() / (3 * f.weight.sum()))
    return total / len(frames)


def test_a_few_steps_lower_the_loss(rigid_colon, tmp_path):
    config = fit_config(rigid_colon, tmp_path / "unused", steps=40, frames_per_step=2)
    torch.manual_seed(0)
    inputs = load_inputs(config)
    assert inputs.test_ids == [1] and 1 not in inputs.train_ids
    assert not inputs.learn_exposure and not inputs.learn_vignetting  # known from the simulator's metadata
    trainer = Trainer(config, inputs, _start_model(config, inputs))
    before = _photometric(trainer, inputs.train_ids)
    losses = [trainer.train_step()["loss"] for _ in range(config.steps)]
    after = _photometric(trainer, inputs.train_ids)
    assert after < 0.9 * before, (before, after)
    assert sum(losses[-5:]) < sum(losses[:5])


def test_run_folder(pbr_run):
    metrics = json.loads((pbr_run / "metrics.json").read_text())
    assert metrics["test_frames"] == [1] and metrics["steps"] == 20
    assert metrics["psnr"] > 15 and metrics["lpips"] is None and 0 < metrics["ssim"] <= 1
    assert metrics["material"]["albedo_error"]["mae"] >= 0
    lights = json.loads((pbr_run / "lights.json").read_text())
    assert len(lights["fitted"]["lights"]) == len(lights["reference"]["lights"]) == 2
    summary = lights["comparison"]["summary"]
    assert {"falloff_relative_error", "intensity_share_relative_error", "intensity_aligned_relative_error"} <= set(
        summary)
    assert (pbr_run / "renders" / "000001.png").is_file()
    assert (pbr_run / "checkpoint.pt").is_file() and (pbr_run / "mesh.ply").is_file()


def test_resume_continues_an_interrupted_run(rigid_colon, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = fit_config(rigid_colon, out, steps=12, checkpoint_every=5, renders=False)
    original = Trainer.train_step

    def interrupted(self):
        if self.step == 7:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(fit_module.Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(config)
    assert not out.exists()
    with pytest.raises(InputError, match="--resume"):
        fit(config)
    monkeypatch.setattr(fit_module.Trainer, "train_step", original)
    resumed_from = []
    load = Trainer.load_state_dict

    def record(self, state):
        resumed_from.append(state["step"])
        load(self, state)

    monkeypatch.setattr(fit_module.Trainer, "load_state_dict", record)
    with pytest.raises(InputError, match="seed"):  # other settings than the interrupted run: refused
        fit(fit_config(rigid_colon, out, steps=12, checkpoint_every=5, renders=False, resume=True, seed=1))
    result = fit(fit_config(rigid_colon, out, steps=12, checkpoint_every=5, renders=False, resume=True))
    assert resumed_from == [5] and result.metrics["steps"] == 12
    assert (out / "metrics.json").is_file()


def test_baked_baseline_fits(rigid_colon, tmp_path):
    result = fit(fit_config(rigid_colon, tmp_path / "baked", model="baked", steps=10, renders=False))
    assert result.metrics["model"] == "baked" and result.metrics["psnr"] > 10
    assert json.loads((tmp_path / "baked" / "lights.json").read_text())["fitted"] is None


def test_dataset_lights_without_intensity_are_not_compared_and_the_run_finishes(rigid_colon, tmp_path):
    """``--lights meta`` uses only the lights' positions and axes; a meta.json light without intensity or falloff
    must not end the run at the comparison."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(rigid_colon, data)
    meta = json.loads((data / "meta.json").read_text())
    meta["lights"] = [{"type": "spot", "position_cam": light["position_cam"]} for light in meta["lights"]]
    (data / "meta.json").write_text(json.dumps(meta))
    result = fit(fit_config(data, tmp_path / "run", steps=2, renders=False))
    assert "not compared" in json.loads((tmp_path / "run" / "lights.json").read_text())["comparison"]["note"]
    assert result.metrics["lights"] is None


def test_a_fit_that_sees_no_surface_is_refused(rigid_colon, tmp_path):
    with pytest.raises(InputError, match="max-range-mm"):
        fit(fit_config(rigid_colon, tmp_path / "run", steps=2, max_range_mm=-5.0))
    with pytest.raises(InputError, match="sees the mesh"):
        fit(fit_config(rigid_colon, tmp_path / "run", steps=2, max_range_mm=1e-3))
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()


def test_deforming_data_warns_that_the_mesh_is_static(tissue, rigid_colon, tmp_path):
    with pytest.warns(UserWarning, match="beyond a rigid motion"):
        load_inputs(fit_config(tissue, tmp_path / "run"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_inputs(fit_config(rigid_colon, tmp_path / "run"))
