"""Datasets generated once per test session with the simulator (small sizes), for every test area."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from endo3d.sim.config import SimulateConfig


def make_dataset(root: Path, scene: str, **kwargs) -> Path:
    settings = dict(frames=6, width=96, height=80, workers=1, preview=False)
    settings.update(kwargs)
    out = root / scene.replace("/", "_").replace(".", "_")
    from endo3d.sim.simulate import simulate  # open3d: imported only by tests that simulate

    simulate(SimulateConfig(scene=scene, out=out, **settings), progress=False)
    return out


@pytest.fixture
def one_thread():
    """One intra-op torch thread for tests of tiny tensors: on a busy shared 2-core CPU a second thread
    makes every small op wait for a core (fits of ~1 s take ~20 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(name)``: the script ``benchmarks/<name>.py`` as a module, for tests of its functions. It
    stays in ``sys.modules`` as ``benchmarks_<name>`` for the session (dataclasses look their module up there)."""
    loaded = []

    def load(name: str):
        script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        loaded.append(spec.name)
        spec.loader.exec_module(module)
        return module

    yield load
    for key in loaded:
        sys.modules.pop(key, None)


@pytest.fixture
def dataset_factory():
    """``make_dataset(root, scene, **settings)`` for tests that need their own data."""
    return make_dataset


@pytest.fixture(scope="session")
def rigid_colon(tmp_path_factory) -> Path:
    """Colon, rigid, 8 frames at 160x128, with preview."""
    return make_dataset(tmp_path_factory.mktemp("rigid"), "colon", frames=8, width=160, height=128,
                        deform_scale=0.0, preview=True)


@pytest.fixture(scope="session")
def tissue(tmp_path_factory) -> Path:
    """Tissue with breathing and the grasper pulling, 10 frames at 128x96."""
    return make_dataset(tmp_path_factory.mktemp("tissue"), "tissue", frames=10, width=128, height=96)
