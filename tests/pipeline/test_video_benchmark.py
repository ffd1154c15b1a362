"""``benchmarks/video.py --instrument-masks``: the simulator's labels reach ``reconstruct`` as ``--masks`` unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from endo3d.io import open_dataset
from endo3d.pipeline.frames import load_clip


@pytest.fixture(scope="module")
def script(load_benchmark):
    return load_benchmark("video")


def test_instrument_labels_round_trip_through_the_masks_flag(script, tissue, tmp_path):
    """Labels 1..254 of ``mask/`` written as a mask folder and read back by the video front end are the same
    pixels, frame by frame (0 = tissue and 255 = outside the view are not instruments)."""
    out = tmp_path / "masks"
    assert script.write_instrument_masks(tissue, out)
    labels = np.stack([f.mask[0].numpy() for f in open_dataset(tissue)])
    truth = (labels > 0) & (labels < 255)
    assert truth.any(), "the tissue fixture shows no grasper: the test would prove nothing"
    clip = load_clip(tissue / "rgb", masks=out)
    assert clip.instruments is not None
    np.testing.assert_array_equal(clip.instruments[:, 0].numpy(), truth)


def test_a_scene_without_instruments_gets_no_masks(script, rigid_colon, tmp_path):
    out = tmp_path / "masks"
    assert not script.write_instrument_masks(rigid_colon, out)
    assert not out.exists()
