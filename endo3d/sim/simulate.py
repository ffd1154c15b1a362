"""``endo3d simulate``: write a fully labelled synthetic endoscopy dataset.

The job builds the scene from its spec and seed, meters auto-exposure, then
renders frames in contiguous chunks on worker processes. Each worker writes
its frames' PNGs straight into the dataset's temporary folder and returns
small records; the main process streams ``preview.mp4`` and collects the
records for ``meta.json``. Nothing of size grows with the number of frames,
and the dataset appears (atomically) only when every frame is written.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.forkserver
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from endo3d import __version__, viz
from endo3d.core.config import to_dict
from endo3d.io.dataset import DatasetWriter, write_frame_files
from endo3d.io.video import VideoWriter
from endo3d.render.lights import SpotLight
from endo3d.render.response import srgb_encode, to_uint8
from endo3d.sim.exposure import auto_exposure
from endo3d.sim.frame import FrameOutput, FrameRenderer
from endo3d.sim.mesh_export import write_tissue_mesh
from endo3d.sim.scene import Scene
from endo3d.sim.scenes.common import BuildArgs
from endo3d.sim.config import SimulateConfig
from endo3d.sim.scenes.registry import build_scene, load_spec

STAGES = ("raycast", "shading", "labels", "encoding", "preview")
MATERIAL_MAPS = {
    "albedo": "base colour (albedo), 8-bit sRGB-encoded like a texture: linear = srgb_decode(value / 255)",
    "material": "8-bit: R = perceptual roughness * 255, G = Disney 'specular' = F0 / 0.08 * 255, "
                "B = metallic * 255",
}
SPECULAR_SCALE = 0.08  # Disney convention: specular 0.5 is F0 = 0.04


@dataclass
class SimulateReport:
    """What a run did and where the time went (seconds summed over workers)."""

    path: Path
    frames: int
    wall_seconds: float
    setup_seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        return self.frames / max(self.wall_seconds, 1e-9)


def simulate(config: SimulateConfig, progress: bool = True) -> SimulateReport:
    """Run ``endo3d simulate``; returns a :class:`SimulateReport`."""
    from tqdm import tqdm

    config.check()
    start = time.perf_counter()
    workers = config.workers or len(os.sched_getaffinity(0))
    workers = max(1, min(workers, math.ceil(config.frames / 4)))
    if workers > 1:  # let the worker server import everything while the scene is built
        _forkserver()
        multiprocessing.forkserver.ensure_running()
    name, spec = load_spec(config.scene)
    args = BuildArgs(config.width, config.height, config.frames, config.fps, config.seed, config.deform_scale)
    scene = build_scene(spec, args, config.scene)
    exposures = auto_exposure(scene)
    setup = time.perf_counter() - start
    chunk = max(1, min(16, math.ceil(config.frames / (4 * workers))))
    chunks = [(a, min(a + chunk, config.frames)) for a in range(0, config.frames, chunk)]
    totals = dict.fromkeys(STAGES, 0.0)

    lights = [SpotLight.create(l.position_mm, l.direction, l.intensity, l.falloff).to_json() for l in scene.lights]
    source = {"generator": "endo3d simulate", "version": __version__, "scene": name, "seed": config.seed,
              "deform_scale": config.deform_scale, "scene_spec": scene.spec}
    extra: dict[str, Any] = {"sensor": to_dict(scene.sensor)}
    if scene.render.material_maps:
        extra["material_maps"] = MATERIAL_MAPS
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(DatasetWriter(
            config.out, camera=scene.camera, fps=config.fps, depth_scale_mm=scene.render.depth_scale_mm,
            lights=lights, source=source, extra=extra, overwrite=config.overwrite))
        write_tissue_mesh(scene, writer.root / "mesh.ply")
        writer.set_mesh("mesh.ply")
        preview = stack.enter_context(VideoWriter(writer.root / "preview.mp4", config.fps)) if config.preview else None
        bar = stack.enter_context(tqdm(total=config.frames, unit="frame", desc=f"simulate {name}",
                                       disable=not progress, dynamic_ncols=True))
        for records in _run_chunks(scene, writer.root, exposures, chunks, workers, config.preview):
            for rec in records:
                writer.add_frame(rec.index, rec.time, rec.c2w, rec.files, exposure=rec.exposure,
                                 c2w_tissue=rec.c2w_tissue.tolist(), tissue_nonrigid_mm=rec.tissue_nonrigid_mm)
                for stage, seconds in rec.timings.items():
                    totals[stage] += seconds
                if preview is not None:
                    clock = time.perf_counter()
                    preview.write(rec.preview)
                    totals["preview"] += time.perf_counter() - clock
                bar.update(1)
            bar.set_postfix(fps=f"{bar.n / max(time.perf_counter() - start - setup, 1e-9):.1f}")
    return SimulateReport(config.out, config.frames, time.perf_counter() - start, setup, totals)


@dataclass
class _Record:
    index: int
    time: float
    c2w: np.ndarray
    files: dict[str, str]
    exposure: float
    c2w_tissue: np.ndarray
    tissue_nonrigid_mm: float
    timings: dict[str, float]
    preview: np.ndarray | None


_WORKER: dict[str, Any] = {}


def _init_worker(scene: Scene, root: Path, exposures: np.ndarray, preview: bool, cast_threads: int) -> None:
    threadpool_limits(1)
    _WORKER.update(renderer=FrameRenderer(scene, cast_threads=cast_threads), root=root, exposures=exposures,
                   preview=preview)


def _run_chunks(scene: Scene, root: Path, exposures: np.ndarray, chunks: list[tuple[int, int]], workers: int,
                preview: bool):
    """Render chunks in order.

    BLAS and OpenMP (numpy's OpenBLAS, torch) run single-threaded in every
    renderer: its matrix products are (N, 3) x (3, 3) and its torch ops
    small and element-wise, which gain nothing from threads, while idle BLAS
    and OpenMP threads spin and steal the cores from open3d's ray casting and
    from the other worker (measured on 2 cores: 290 -> 170 ms per frame alone,
    and two workers 2.3x slower each without the limit, 1.2x with it). With
    several workers, ray queries run on one thread each as well. Workers come
    from a forkserver that has imported the simulator: quick to start, and
    forked before any thread pool exists.
    """
    if workers == 1:
        with threadpool_limits(1):
            _init_worker(scene, root, exposures, preview, 0)
            try:
                yield from map(_render_chunk, chunks)
            finally:
                _WORKER.clear()
        return
    with _forkserver().Pool(workers, initializer=_init_worker, initargs=(scene, root, exposures, preview, 1)) as pool:
        yield from pool.imap(_render_chunk, chunks)


def _forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["endo3d.sim.simulate"])
    return ctx


def _render_chunk(bounds: tuple[int, int]) -> list[_Record]:
    renderer: FrameRenderer = _WORKER["renderer"]
    scene = renderer.scene
    root, exposures = _WORKER["root"], _WORKER["exposures"]
    records = []
    geom_next = None
    for i in range(*bounds):
        cast_before = renderer.raycaster.seconds
        geom = geom_next if geom_next is not None else renderer.geometry(i)
        geom_next = renderer.geometry(i + 1) if i + 1 < scene.num_frames else None
        out = renderer.render(i, geom, geom_next, float(exposures[i]))
        timings = dict(out.timings, raycast=renderer.raycaster.seconds - cast_before)
        clock = time.perf_counter()
        extra = None
        if scene.render.material_maps:
            extra = {"albedo": _albedo_u8(out.albedo), "material": _material_u8(out.material)}
        files = write_frame_files(
            root, i, rgb=out.rgb, depth=out.depth, depth_scale_mm=scene.render.depth_scale_mm, normal=out.normal,
            normal_valid=out.normal_valid, flow=out.flow, flow_valid=out.flow_valid, mask=out.mask,
            extra_images=extra)
        timings["encoding"] = time.perf_counter() - clock
        tile = preview_frame(out) if _WORKER["preview"] else None
        records.append(_Record(i, scene.time(i), scene.c2w(i), files, float(exposures[i]), out.c2w_tissue,
                               out.tissue_nonrigid_mm, timings, tile))
    return records


def _albedo_u8(albedo: np.ndarray) -> np.ndarray:
    return to_uint8(srgb_encode(torch.from_numpy(albedo).permute(2, 0, 1)[None]))[0]


def _material_u8(material: np.ndarray) -> np.ndarray:
    """(roughness, F0, metallic) -> 8-bit (roughness, F0 / 0.08, metallic)."""
    scaled = material / np.array([1.0, SPECULAR_SCALE, 1.0], dtype=np.float32)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def preview_frame(out: FrameOutput) -> np.ndarray:
    """A 2x2 picture of one frame: RGB, depth | normals, flow (mask without
    flow), each at half resolution (rounded up), so about the frame's size."""
    def half(image: np.ndarray) -> np.ndarray:
        return image[::2, ::2]

    flow = out.flow[::2, ::2] if out.flow is not None else None
    last = viz.flow_to_rgb(flow, out.flow_valid[::2, ::2]) if flow is not None else viz.mask_to_rgb(half(out.mask))
    return viz.tile([half(out.rgb), viz.depth_to_rgb(half(out.depth)), viz.normals_to_rgb(half(out.normal)), last],
                    columns=2)
