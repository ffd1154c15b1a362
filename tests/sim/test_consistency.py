"""Independent consistency of simulated data, using only the files on disk.

Geometry (depth, poses, intrinsics), flow and normals must agree with each
other, and image brightness must follow the spotlight model stored in
meta.json. Thresholds are the acceptance criteria of the simulator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from endo3d.geometry import depth_to_normals, depth_to_points, relative_pose, reproject, sample_image
from endo3d.geometry.align import umeyama
from endo3d.io import read_dataset, read_png
from endo3d.render.response import srgb_decode, vignetting_map


def _reprojection(ds, i: int, j: int):
    """Where frame i's depth lands in frame j, and frame j's depth there."""
    fi, fj = ds.frame(i), ds.frame(j)
    cam = ds.camera
    T = relative_pose(torch.from_numpy(fi.c2w), torch.from_numpy(fj.c2w))[None].float()
    uv, z, ok = reproject(fi.depth[None], cam, T)
    inside = (uv[:, 0] > 0) & (uv[:, 0] < cam.width - 1) & (uv[:, 1] > 0) & (uv[:, 1] < cam.height - 1)
    dj = sample_image(fj.depth[None], uv)
    valid = ok & inside[:, None] & (fi.mask[None] == 0) & (dj > 0)
    return fi, uv, z, dj, valid


def test_depth_reprojects_consistently_across_frames(rigid_colon: Path):
    ds = read_dataset(rigid_colon)
    for i, j in [(0, 1), (2, 5), (1, 7)]:
        _, _, z, dj, valid = _reprojection(ds, i, j)
        assert valid.sum() > 0.5 * valid.numel()
        rel = ((z - dj).abs() / dj)[valid]
        assert rel.median() < 0.005, (i, j, float(rel.median()))


def test_flow_agrees_with_depth_reprojection(rigid_colon: Path):
    ds = read_dataset(rigid_colon)
    cam = ds.camera
    grid = torch.stack(torch.meshgrid(torch.arange(cam.width), torch.arange(cam.height), indexing="xy"), 0)
    for i in range(len(ds) - 1):
        fi, uv, _, _, valid = _reprojection(ds, i, i + 1)
        use = valid & fi.flow_valid[None]
        assert use.sum() > 0.5 * use.numel()
        err = (uv - grid[None].float() - fi.flow[None]).norm(dim=1, keepdim=True)[use]
        assert err.median() < 0.1, (i, float(err.median()))
    assert ds.frame(len(ds) - 1).flow is None


def test_normals_agree_with_depth(rigid_colon: Path):
    ds = read_dataset(rigid_colon)
    for i in (0, 4):
        f = ds.frame(i)
        derived = depth_to_normals(f.depth[None], ds.camera)[0]
        both = (derived.norm(dim=0) > 0) & (f.normal.norm(dim=0) > 0)
        cos = (derived * f.normal).sum(0).clamp(-1, 1)[both]
        assert torch.rad2deg(torch.acos(cos)).median() < 5.0
        # normals face the camera: n . X < 0
        X = depth_to_points(f.depth[None], ds.camera)[0]
        assert ((f.normal * X).sum(0)[f.normal.norm(dim=0) > 0] < 0).all()


def test_colon_brightness_follows_the_spotlight_model(rigid_colon: Path):
    """Undo exposure and vignetting (meta.json), divide by the stored albedo,
    and compare with the irradiance of the stored lights at the stored
    geometry: the relation is linear in log space with slope 1 and leaves no
    trend with depth."""
    ds = read_dataset(rigid_colon)
    meta = json.loads((rigid_colon / "meta.json").read_text())
    cam = ds.camera
    vig = vignetting_map(cam.height, cam.width, torch.tensor(cam.K), *meta["sensor"]["vignetting"])[0].double()
    log_pred, log_obs, log_depth = [], [], []
    for i in range(len(ds)):
        f, record = ds.frame(i), meta["frames"][i]
        X = depth_to_points(f.depth[None].double(), cam)[0]
        observed = srgb_decode(f.rgb.double()) / (record["exposure"] * vig)
        albedo = srgb_decode(torch.from_numpy(read_png(rigid_colon / record["albedo"]) / 255.0).permute(2, 0, 1))
        irradiance = torch.zeros_like(observed)
        for light in meta["lights"]:
            p = torch.tensor(light["position_cam"], dtype=torch.float64)[:, None, None]
            axis = torch.tensor(light["direction_cam"], dtype=torch.float64)[:, None, None]
            w = p - X
            r = w.norm(dim=0, keepdim=True)
            w = w / r
            falloff = (axis * -w).sum(0, keepdim=True).clamp(min=0) ** light["falloff"] / r**2
            irradiance += torch.tensor(light["intensity"], dtype=torch.float64)[:, None, None] * falloff * \
                (f.normal.double() * w).sum(0, keepdim=True).clamp(min=0)
        predicted = albedo / np.pi * irradiance  # Lambertian part
        ok = (f.mask[0] == 0) & (f.rgb.max(0).values < 0.98) & (predicted[1] > 0) & (observed[1] > 0)
        log_pred.append(predicted[1][ok].log())
        log_obs.append(observed[1][ok].log())
        log_depth.append(f.depth[0][ok].double().log())
    x, y, d = (torch.cat(v) for v in (log_pred, log_obs, log_depth))

    def slope(a, b):
        return float(torch.linalg.lstsq(torch.stack([a, torch.ones_like(a)], 1), b[:, None]).solution[0])

    assert abs(slope(x, y) - 1.0) < 0.1
    assert abs(slope(d, y - x)) < 0.15
    assert np.corrcoef(x.numpy(), y.numpy())[0, 1] > 0.9
    assert slope(d, y) < -0.5  # and it does get darker with depth


def test_tissue_flow_carries_the_deformation(tissue: Path):
    """With breathing and pulling, flow departs from the rigid reprojection of
    depth (the camera alone cannot explain it), while staying smooth."""
    ds = read_dataset(tissue)
    cam = ds.camera
    grid = torch.stack(torch.meshgrid(torch.arange(cam.width), torch.arange(cam.height), indexing="xy"), 0)
    departures = []
    for i in range(len(ds) - 1):
        fi, uv, _, _, valid = _reprojection(ds, i, i + 1)
        use = valid & fi.flow_valid[None]
        departures.append((uv - grid[None].float() - fi.flow[None]).norm(dim=1, keepdim=True)[use])
    assert torch.cat(departures).quantile(0.9) > 0.1


def test_tissue_labels_the_instrument(tissue: Path):
    ds = read_dataset(tissue)
    labels = set()
    for i in range(len(ds)):
        f = ds.frame(i)
        labels |= set(torch.unique(f.mask).tolist())
        tool = f.mask[0] == 1
        if tool.any():
            assert (f.depth[0][tool] > 0).all()
            assert (f.depth[0][tool].median() < f.depth[0][f.mask[0] == 0].median())  # in front of the tissue
    assert labels <= {0, 1, 255} and 1 in labels and 0 in labels


def _tissue_motion(frame) -> np.ndarray:
    """The labelled rigid motion of the visible tissue, rest -> now: ``c2w c2w_tissue^-1``."""
    return frame.c2w @ np.linalg.inv(np.array(frame.extra["c2w_tissue"]))


def test_rigid_tissue_frame_is_the_camera_pose(rigid_colon: Path):
    for f in read_dataset(rigid_colon):
        np.testing.assert_allclose(np.array(f.extra["c2w_tissue"]), f.c2w, atol=1e-4)
        assert f.extra["tissue_nonrigid_mm"] < 1e-3


def test_tissue_frame_is_the_rigid_part_of_depth_flow_and_poses(tissue: Path):
    """Tissue points of frame i (depth, pose) and where the flow puts them in
    frame i+1 (depth there, pose): the rigid motion that best fits these
    pairs is the labelled motion between the two frames' tissue frames."""
    ds = read_dataset(tissue)
    cam = ds.camera
    grid = torch.stack(torch.meshgrid(torch.arange(cam.width), torch.arange(cam.height), indexing="xy"), 0).float()
    ratios = []
    for i in range(len(ds) - 1):
        a, b = ds.frame(i), ds.frame(i + 1)
        uv = grid[None] + a.flow[None]
        depth_b = sample_image(b.depth[None], uv)[0, 0]
        tissue_b = sample_image((b.mask == 0).float()[None], uv)[0, 0]
        use = (a.mask[0] == 0) & a.flow_valid[0] & (a.depth[0] > 0) & (depth_b > 0) & (tissue_b > 0.999)
        pa = depth_to_points(a.depth[None], cam)[0].permute(1, 2, 0)[use].double().numpy()
        rays = cam.unproject(uv[0].permute(1, 2, 0)[use].double()).numpy()
        pb = rays / rays[:, 2:] * depth_b[use].double().numpy()[:, None]
        xa = pa @ a.c2w[:3, :3].T + a.c2w[:3, 3]
        xb = pb @ b.c2w[:3, :3].T + b.c2w[:3, 3]
        _, R, t = umeyama(xa, xb, with_scale=False)
        D = _tissue_motion(b) @ np.linalg.inv(_tissue_motion(a))
        labelled = xa @ D[:3, :3].T + D[:3, 3]
        gap = np.sqrt(np.mean(np.sum((xa @ R.T + t - labelled) ** 2, axis=1)))
        ratios.append(gap / np.sqrt(np.mean(np.sum((labelled - xa) ** 2, axis=1))))
    assert max(ratios) < 0.4 and np.mean(ratios) < 0.12, ratios
    assert max(f.extra["tissue_nonrigid_mm"] for f in ds) > 0.05  # breathing and pulling are not rigid
