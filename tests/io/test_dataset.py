"""The endo3d/v1 dataset: writing, reading back, validation errors."""

from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from endo3d.core.errors import InputError
from endo3d.geometry.camera import Camera
from endo3d.io import open_dataset
from endo3d.io.dataset import (
    DatasetMeta,
    DatasetWriter,
    read_dataset,
    read_meta,
    write_frame_files,
)
from endo3d.io.images import write_png

H, W, N = 64, 80, 4
SCALE = 0.01
CAMERA = Camera("pinhole", W, H, [[70.0, 0, 39.5], [0, 72.0, 31.5], [0, 0, 1]])


def look_at(eye, target, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """OpenCV c2w for a camera at ``eye`` looking at ``target``; y (down) is against ``up``."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, -up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def frame_arrays(i: int) -> dict:
    """Deterministic arrays of frame ``i`` with invalid pixels in every channel."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    depth = 40.0 + 0.3 * xx + 0.2 * yy + i
    depth[0, :5] = 0.0
    normal = np.stack([np.sin(xx / 30), np.cos(yy / 20) * 0.3, -np.ones_like(xx)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    valid_n = np.ones((H, W), bool)
    valid_n[5, :7] = False
    flow = rng.uniform(-20, 20, size=(H, W, 2))
    valid_f = rng.uniform(size=(H, W)) > 0.1
    mask = np.zeros((H, W), np.uint8)
    mask[40:, 30:50] = 3
    mask[:, :2] = 255
    out = dict(rgb=rng.uniform(size=(3, H, W)).astype(np.float32), depth=depth, normal=normal,
               normal_valid=valid_n, mask=mask, extra_images={"albedo": rng.integers(0, 255, (H, W, 3), np.uint8)})
    if i < N - 1:
        out.update(flow=flow, flow_valid=valid_f)
    return out


def poses() -> list[np.ndarray]:
    return [look_at([60 * math.sin(0.2 * i), 5.0, -60 * math.cos(0.2 * i)], [0.0, 0.0, 0.0]) for i in range(N)]


def make_dataset(out: Path) -> Path:
    K1 = CAMERA.K.copy()
    K1[0, 0] = 75.0
    with DatasetWriter(out, camera=CAMERA, fps=10.0, depth_scale_mm=SCALE,
                       lights=[{"type": "spot", "position_cam": [0, 0, 0], "direction_cam": [0, 0, 1], "mu": 2.0}],
                       source={"generator": "test", "seed": 0}, extra={"material": {"albedo": [0.8, 0.3, 0.3]}}) as w:
        for i in reversed(range(N)):  # any order; meta.json is sorted by index
            w.write_frame(i, i / 10.0, poses()[i], K=K1 if i == 1 else None, breathing_phase=0.1 * i,
                          **frame_arrays(i))
        (w.root / "mesh.ply").write_text("ply\n")
        w.set_mesh("mesh.ply")
    return out


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds") / "out")


def copy_of(dataset_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "out"
    shutil.copytree(dataset_dir, dst)
    return dst


def edit_meta(root: Path, change) -> None:
    meta = json.loads((root / "meta.json").read_text())
    change(meta)
    (root / "meta.json").write_text(json.dumps(meta))


def test_meta_json_has_exactly_the_conventions_keys(dataset_dir):
    meta = json.loads((dataset_dir / "meta.json").read_text())
    assert list(meta) == ["format", "units", "width", "height", "fps", "depth_scale_mm", "camera", "frames",
                          "lights", "source", "mesh", "material"]
    assert meta["format"] == "endo3d/v1" and meta["units"] == "mm"
    assert (meta["width"], meta["height"], meta["fps"], meta["depth_scale_mm"]) == (W, H, 10.0, SCALE)
    assert meta["camera"] == {"model": "pinhole", "K": CAMERA.K.tolist(), "dist": []}
    assert [f["index"] for f in meta["frames"]] == list(range(N))
    first, last = meta["frames"][0], meta["frames"][-1]
    assert list(first) == ["index", "time", "c2w", "rgb", "depth", "normal", "flow", "mask", "albedo",
                           "breathing_phase"]
    assert first["rgb"] == "rgb/000000.png" and first["flow"] == "flow/000000.png"
    assert "flow" not in last and last["depth"] == "depth/000003.png"
    assert "K" in meta["frames"][1] and "K" not in first
    assert len(first["c2w"]) == 4 and first["c2w"][3] == [0, 0, 0, 1]
    files = {p.relative_to(dataset_dir).as_posix() for p in dataset_dir.rglob("*") if p.is_file()}
    assert files == {"meta.json", "mesh.ply"} | {
        f"{c}/{i:06d}.png" for c in ("rgb", "depth", "normal", "mask", "albedo") for i in range(N)
    } | {f"flow/{i:06d}.png" for i in range(N - 1)}


def test_round_trip_within_quantisation(dataset_dir):
    ds = read_dataset(dataset_dir)
    assert ds.format == "endo3d/v1" and len(ds) == N and ds.path == dataset_dir
    assert all(ds.has(c) for c in ("depth", "normal", "flow", "mask"))
    np.testing.assert_array_equal(ds.poses, np.stack(poses()))
    np.testing.assert_allclose(ds.times, np.arange(N) / 10.0)
    np.testing.assert_array_equal(ds.camera.K, CAMERA.K)
    assert ds.meta.mesh == "mesh.ply" and ds.meta.lights[0]["mu"] == 2.0
    frames = list(ds)
    assert [f.index for f in frames] == list(range(N))
    for f in frames:
        ref = frame_arrays(f.index)
        assert f.rgb.dtype == torch.float32 and f.rgb.shape == (3, H, W)
        assert (f.rgb - torch.from_numpy(ref["rgb"])).abs().max() <= 0.5 / 255 + 1e-6
        assert f.depth.shape == (1, H, W) and f.depth.dtype == torch.float32
        d = f.depth[0].numpy()
        assert d[0, 0] == 0.0
        assert np.abs(d - ref["depth"])[ref["depth"] > 0].max() <= SCALE / 2 + 1e-5
        n = f.normal.permute(1, 2, 0).numpy()
        assert np.abs(n - ref["normal"])[ref["normal_valid"]].max() <= 1 / 65535 + 1e-7
        assert (n[~ref["normal_valid"]] == 0).all()
        assert f.mask.dtype == torch.uint8
        np.testing.assert_array_equal(f.mask[0].numpy(), ref["mask"])
        np.testing.assert_array_equal(f.valid[0].numpy(), ref["mask"] == 0)
        assert f.extra["breathing_phase"] == pytest.approx(0.1 * f.index)
        assert f.extra["albedo"] == f"albedo/{f.index:06d}.png"
        if f.index < N - 1:
            assert f.flow.shape == (2, H, W) and f.flow_valid.dtype == torch.bool
            ok = ref["flow_valid"]
            np.testing.assert_array_equal(f.flow_valid[0].numpy(), ok)
            assert np.abs(f.flow.permute(1, 2, 0).numpy() - ref["flow"])[ok].max() <= 1 / 128 + 1e-6
        else:
            assert f.flow is None and f.flow_valid is None
    assert frames[1].K[0, 0] == 75.0 and frames[0].K[0, 0] == 70.0


def test_frames_are_lazy_and_indexable(dataset_dir):
    ds = read_dataset(dataset_dir)
    f = ds.frame(2)
    assert f.index == 2 and f.time == pytest.approx(0.2)
    with pytest.raises(IndexError):
        ds.frame(N)
    with pytest.raises(ValueError, match="unknown channel"):
        ds.has("rgb")


def test_unknown_keys_survive_read_modify_write(dataset_dir, tmp_path):
    root = copy_of(dataset_dir, tmp_path)
    edit_meta(root, lambda m: (m.update(future_key={"a": [1, 2]}), m["frames"][2].update(note="kept")))
    meta = read_meta(root)
    meta.fps = 12.5
    (root / "meta.json").write_text(json.dumps(meta.to_json()))
    again = json.loads((root / "meta.json").read_text())
    assert again["future_key"] == {"a": [1, 2]} and again["material"] == {"albedo": [0.8, 0.3, 0.3]}
    assert again["frames"][2]["note"] == "kept" and again["fps"] == 12.5
    ds = read_dataset(root)
    assert ds.meta.extra["future_key"] == {"a": [1, 2]} and ds.frame(2).extra["note"] == "kept"


def test_a_dataset_with_only_rgb(tmp_path):
    cam = Camera.from_fov("pinhole", W, H, 90.0)
    with DatasetWriter(tmp_path / "plain", camera=cam, fps=25.0) as w:
        for i in range(2):
            w.write_frame(i, i / 25.0, np.eye(4), rgb=np.full((H, W, 3), 10 * i, np.uint8))
    ds = read_dataset(tmp_path / "plain")
    assert not any(ds.has(c) for c in ("depth", "normal", "flow", "mask"))
    f = ds.frame(1)
    assert f.depth is None and f.mask is None and f.valid.all() and f.valid.shape == (1, H, W)
    assert torch.allclose(f.rgb, torch.full((3, H, W), 10 / 255.0))
    meta = json.loads((tmp_path / "plain" / "meta.json").read_text())
    assert list(meta["frames"][0]) == ["index", "time", "c2w", "rgb"] and "mesh" not in meta
    assert meta["lights"] == [] and meta["source"] == {}


def _write_in_worker(args):
    root, i = args
    rgb = np.full((H, W, 3), i, np.uint8)
    return write_frame_files(root, i, rgb=rgb, depth=np.full((H, W), 50.0), mask=np.zeros((H, W), np.uint8))


def test_frame_files_written_by_worker_processes(tmp_path):
    with DatasetWriter(tmp_path / "par", camera=CAMERA, fps=10.0) as w:
        with ProcessPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(_write_in_worker, [(w.root, i) for i in range(N)]))
        for i, files in enumerate(results):
            assert files == {"rgb": f"rgb/{i:06d}.png", "depth": f"depth/{i:06d}.png", "mask": f"mask/{i:06d}.png"}
            w.add_frame(i, i / 10.0, np.eye(4), files)
    ds = read_dataset(tmp_path / "par")
    assert len(ds) == N and ds.frame(3).rgb[0, 0, 0].item() == pytest.approx(3 / 255.0)
    assert ds.frame(0).depth.unique().tolist() == [pytest.approx(50.0)]


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(out, camera=CAMERA, fps=10.0) as w:
            w.write_frame(0, 0.0, np.eye(4), rgb=np.zeros((H, W, 3), np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # A dataset that would be invalid (frame 1 missing) is not written either.
    with pytest.raises(ValueError, match="frame at position 1 has index 2"):
        with DatasetWriter(out, camera=CAMERA, fps=10.0) as w:
            for i in (0, 2):
                w.write_frame(i, i / 10.0, np.eye(4), rgb=np.zeros((H, W, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_existing_output_unless_overwrite(dataset_dir, tmp_path):
    root = copy_of(dataset_dir, tmp_path)
    with pytest.raises(InputError, match="already exists"):
        DatasetWriter(root, camera=CAMERA, fps=10.0).__enter__()
    with DatasetWriter(root, camera=CAMERA, fps=5.0, overwrite=True) as w:
        w.write_frame(0, 0.0, np.eye(4), rgb=np.zeros((H, W, 3), np.uint8))
    assert len(read_dataset(root)) == 1 and not (root / "depth").exists()


def test_writer_rejects_bad_frames_early(tmp_path):
    with DatasetWriter(tmp_path / "x", camera=CAMERA, fps=10.0) as w:
        rgb = np.zeros((H, W, 3), np.uint8)
        files = write_frame_files(w.root, 0, rgb=rgb)
        skew = np.eye(4)
        skew[0, 1] = 0.1
        with pytest.raises(ValueError, match="frame 0 c2w has a rotation that is not orthonormal"):
            w.add_frame(0, 0.0, skew, files)
        with pytest.raises(ValueError, match="frame 0 K: K has a non-positive focal length"):
            w.add_frame(0, 0.0, np.eye(4), files, K=np.diag([-1.0, 1.0, 1.0]))
        with pytest.raises(ValueError, match="clash"):
            w.add_frame(0, 0.0, np.eye(4), files, mask="mask/000000.png")
        with pytest.raises(ValueError, match="depth is 40x32, rgb is 80x64"):
            write_frame_files(w.root, 1, rgb=rgb, depth=np.ones((32, 40)))
        with pytest.raises(ValueError, match="mask must be uint8"):
            write_frame_files(w.root, 1, rgb=rgb, mask=np.zeros((H, W), np.int64))
        w.add_frame(0, 0.0, np.eye(4), files)
        with pytest.raises(ValueError, match="already added"):
            w.add_frame(0, 0.0, np.eye(4), files)


def _set_c2w_nan(m):
    m["frames"][3]["c2w"][0][0] = float("nan")


def _scale_rotation(m):
    m["frames"][2]["c2w"][0][0] *= 1.01


def _mirror(m):
    for row in m["frames"][1]["c2w"][:3]:
        row[2] = -row[2]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(format="endo3d/v0"), r"meta\.json: not an endo3d/v1 dataset"),
        (lambda m: m.pop("fps"), r"meta\.json: missing key 'fps'"),
        (lambda m: m.update(units="m"), r"meta\.json: units must be 'mm'"),
        (lambda m: m.update(width="80"), r"meta\.json: width must be an integer"),
        (lambda m: m["frames"][1].pop("c2w"), r"meta\.json: frame 1: missing key 'c2w'"),
        (lambda m: m["frames"][1].update(rgb=None), r"meta\.json: frame 1 rgb must be a path string"),
        (lambda m: m["frames"][1].update(c2w=[[1, 0], [0, 1]]), r"meta\.json: frame 1 c2w must be a 4x4"),
        (_set_c2w_nan, r"meta\.json: frame 3 c2w has non-finite values"),
        (_scale_rotation, r"meta\.json: frame 2 c2w has a rotation that is not orthonormal"),
        (_mirror, r"meta\.json: frame 1 c2w has a reflection"),
        (lambda m: m["frames"][0]["c2w"][3].__setitem__(0, 0.5), r"meta\.json: frame 0 c2w has a last row"),
        (lambda m: m["camera"]["K"][1].__setitem__(0, 5.0), r"meta\.json: camera: K is not upper-triangular"),
        (lambda m: m["camera"]["K"][0].__setitem__(0, 0.0), r"meta\.json: camera: K has a non-positive focal"),
        (lambda m: m["frames"][1]["K"][0].__setitem__(0, -70.0), r"meta\.json: frame 1 K: K has a non-positive"),
        (lambda m: m["frames"].reverse(), r"meta\.json: frame at position 0 has index 3"),
        (lambda m: m["frames"][2].update(time=0.05), r"meta\.json: frame 2 time 0\.05 s is not after frame 1"),
        (lambda m: m.update(frames=[]), r"meta\.json: no frames"),
        (lambda m: m.update(fps=0), r"meta\.json: fps must be positive"),
        (lambda m: m["frames"][3].update(depth="depth/000009.png"), r"out/depth/000009\.png: missing"),
        (lambda m: m.update(mesh="gone.ply"), r"out/gone\.ply: missing"),
        (lambda m: m["frames"][0].update(depth="rgb/000000.png"),
         r"out/rgb/000000\.png: depth must be a 16-bit 1-channel PNG, found 8-bit 3-channel"),
    ],
)
def test_invalid_meta_is_reported_with_the_file(dataset_dir, tmp_path, change, message):
    root = copy_of(dataset_dir, tmp_path)
    edit_meta(root, change)
    with pytest.raises(InputError, match=message):
        read_dataset(root)


def test_missing_or_broken_files_are_reported(dataset_dir, tmp_path):
    root = copy_of(dataset_dir, tmp_path)
    (root / "depth" / "000003.png").unlink()
    with pytest.raises(InputError, match=r"out/depth/000003\.png: missing"):
        read_dataset(root)
    root = copy_of(dataset_dir, tmp_path / "b")
    write_png(root / "mask" / "000002.png", np.zeros((H, W + 1), np.uint8))
    with pytest.raises(InputError, match=r"out/mask/000002\.png: size 81x64, but meta\.json says 80x64"):
        read_dataset(root)
    root = copy_of(dataset_dir, tmp_path / "c")
    (root / "rgb" / "000001.png").write_text("not a png")
    with pytest.raises(InputError, match=r"out/rgb/000001\.png: not a PNG"):
        read_dataset(root)
    root = copy_of(dataset_dir, tmp_path / "d")
    (root / "meta.json").write_text("{ not json")
    with pytest.raises(InputError, match=r"out/meta\.json: not valid JSON"):
        read_dataset(root)
    (root / "meta.json").unlink()
    with pytest.raises(InputError, match=r"out/meta\.json: missing"):
        read_dataset(root)
    with pytest.raises(InputError, match=r"nowhere: missing"):
        read_dataset(tmp_path / "nowhere")


def test_meta_from_json_round_trips(dataset_dir):
    obj = json.loads((dataset_dir / "meta.json").read_text())
    assert DatasetMeta.from_json(obj, "meta.json").to_json() == obj


def test_open_dataset_reads_endo3d_folders(dataset_dir):
    assert open_dataset(dataset_dir).format == "endo3d/v1"
