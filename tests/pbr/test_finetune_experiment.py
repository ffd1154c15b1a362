"""``benchmarks/pbr_depth_finetune.py``: its data factory yields labelled depth training sets off the training path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from endo3d.depth.data import open_sequences
from endo3d.io import read_dataset
from endo3d.pbr.config import FieldConfig


@pytest.fixture(scope="module")
def experiment(load_benchmark):
    return load_benchmark("pbr_depth_finetune")


def test_prepared_renders_are_labelled_depth_data_off_the_training_path(experiment, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = experiment.prepare_data(
            tmp_path, frames=8, eval_frames=4, width=64, height=48, fit_steps=10,
            fit_overrides=dict(pixels_per_frame=512, field=FieldConfig(levels=4, table_log2=10, hidden=8)))
    finally:
        torch.set_num_threads(threads)
    train, heldout = read_dataset(data.train), read_dataset(data.heldout)
    assert len(train) == 8 and len(heldout) == 4
    assert train.meta.source["seed"] != heldout.meta.source["seed"]
    assert len(data.renders) == len(experiment.RENDER_PATHS)
    total = 0
    for path, spec in zip(data.renders, experiment.RENDER_PATHS):
        ds = read_dataset(path)  # the dataset validation endo3d simulate output passes
        assert ds.meta.source["generator"] == "endo3d pbr render" and ds.has("depth") and ds.has("mask")
        total += len(ds)
        # every new camera is off the training path (the shifts are >= 1.5 mm sideways)
        gap = np.linalg.norm(ds.poses[:, None, :3, 3] - train.poses[None, :, :3, 3], axis=-1).min(axis=1)
        assert gap.min() > 1.0, (spec.name, gap)
        # ... and the depth trainer reads it as a supervised training sequence with valid depth
        (seq,) = open_sequences([path])
        assert seq.has_depth and len(seq) == len(ds)
        depth, mask = seq.depth(0), seq.mask(0)
        assert depth is not None and mask is not None
        assert ((depth > 0) & mask).float().mean() > 0.5
    assert total == len(train)  # the factory makes as many frames as the training video (2 paths at speed 2)
    assert np.isfinite(data.fit_metrics["psnr_tissue"])

    # the constant-depth row: median scaling makes a constant each frame's median depth
    expected = []
    for i in range(len(heldout)):
        frame = heldout.frame(i)
        gt = frame.depth[0].numpy().astype(np.float64)
        g = gt[(gt > 1e-3) & (gt < 150) & frame.valid[0].numpy()]
        expected.append(np.mean(np.abs(g - np.median(g)) / g))
    assert experiment.constant_depth_metrics(data.heldout)["abs_rel"] == pytest.approx(np.mean(expected), rel=1e-6)
