"""endo3d simulate as a job: reproducible, parallel, atomic, complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from endo3d.core.errors import InputError
from endo3d.io import probe_video, read_dataset, read_png
from endo3d.sim import simulate as simulate_module
from endo3d.sim.config import SimulateConfig
from endo3d.sim.simulate import simulate

SMALL = dict(frames=4, width=80, height=64, preview=False)


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        simulate(SimulateConfig(scene="colon", out=out, seed=seed, workers=1, **SMALL), progress=False)
    assert _bytes(a) == _bytes(b)
    assert (a / "meta.json").read_text() == (b / "meta.json").read_text().replace(str(b), str(a))
    assert _bytes(a)["rgb/000000.png"] != _bytes(c)["rgb/000000.png"]


def test_workers_give_identical_output(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    simulate(SimulateConfig(scene="tissue", out=one, workers=1, **dict(SMALL, frames=8)), progress=False)
    simulate(SimulateConfig(scene="tissue", out=two, workers=2, **dict(SMALL, frames=8)), progress=False)
    assert _bytes(one) == _bytes(two)


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(*args, **kwargs)

    original = simulate_module.write_frame_files
    monkeypatch.setattr(simulate_module, "write_frame_files", broken)
    with pytest.raises(OSError):
        simulate(SimulateConfig(scene="colon", out=tmp_path / "out", workers=1, **SMALL), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    simulate(SimulateConfig(scene="colon", out=out, workers=1, **SMALL), progress=False)
    with pytest.raises(InputError, match="already exists"):
        simulate(SimulateConfig(scene="colon", out=out, workers=1, **SMALL), progress=False)
    simulate(SimulateConfig(scene="colon", out=out, workers=1, overwrite=True, **dict(SMALL, frames=3)),
             progress=False)
    assert len(read_dataset(out)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_dataset_contents(rigid_colon: Path):
    ds = read_dataset(rigid_colon)  # validates every file
    meta = json.loads((rigid_colon / "meta.json").read_text())
    assert meta["format"] == "endo3d/v1" and meta["units"] == "mm" and len(ds) == 8
    assert meta["source"]["generator"] == "endo3d simulate" and meta["source"]["scene"] == "colon"
    assert len(meta["lights"]) == 2 and all(light["type"] == "spot" for light in meta["lights"])
    assert all(f["exposure"] > 0 for f in meta["frames"])
    assert [f["time"] for f in meta["frames"]] == pytest.approx([i / 30.0 for i in range(8)])
    # the mesh is the tissue at t = 0, in world mm, around the camera path
    mesh = trimesh.load(rigid_colon / meta["mesh"], process=False)
    assert len(mesh.faces) > 1000 and mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)
    eye = ds.poses[0][:3, 3]
    assert np.min(np.linalg.norm(mesh.vertices - eye, axis=1)) < 25.0
    # material maps and the preview
    albedo = read_png(rigid_colon / meta["frames"][0]["albedo"])
    assert albedo.dtype == np.uint8 and albedo.shape == (128, 160, 3)
    info = probe_video(rigid_colon / "preview.mp4")
    assert info.num_frames == 8 and info.width == 160 and info.height == 128
    # the round aperture of the colonoscope: corners invalid, the rest all tissue
    mask = ds.frame(0).mask[0]
    assert mask[0, 0] == 255 and (mask[40:90, 50:110] == 0).all()
