"""The kernels' build and dispatch policy, on a machine without a GPU (CI's)."""

from __future__ import annotations

import fnmatch
import logging
import tomllib
from pathlib import Path

import pytest
import torch

from endo3d.cli.main import main as cli_main
from endo3d.core.errors import Endo3dError
from endo3d.kernels import build

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.delenv(build.ENV, raising=False)
    build._reset_for_tests()
    yield
    build._reset_for_tests()


def test_sources_ship_with_the_package():
    """Every source file of cuda_ext/ matches the package-data globs, and each operation has its file."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["endo3d.cuda_ext"]
    files = [p.name for p in build.source_dir().iterdir() if p.is_file() and p.suffix != ".py"]
    assert all(any(fnmatch.fnmatch(name, g) for g in globs) for name in files), files
    assert {p.name for p in build.sources()} >= {"hexplane.cu", "shading.cu", "ssim.cu"}


def test_cache_key_follows_the_sources(tmp_path, monkeypatch):
    (tmp_path / "a.cu").write_text("// one")
    monkeypatch.setattr(build, "source_dir", lambda: tmp_path)
    monkeypatch.setenv("ENDO3D_CACHE_DIR", str(tmp_path / "cache"))
    first = build.cache_dir()
    assert first.parent == tmp_path / "cache" / "kernels"
    (tmp_path / "a.cu").write_text("// two")
    assert build.cache_dir() != first


def test_a_build_ahead_of_time_for_this_gpu_is_found_without_the_arch_variable(tmp_path, monkeypatch):
    """``TORCH_CUDA_ARCH_LIST=9.0 endo3d kernels build`` and a later run on an H100 without the variable use one
    cache folder."""
    monkeypatch.setenv("ENDO3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    ahead = build.cache_dir()
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert build.cache_dir() == ahead
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert build.cache_dir() != ahead


def test_any_error_of_the_compiler_wrapper_is_a_failed_build(tmp_path, monkeypatch):
    """A malformed arch list is a ValueError inside torch's loader: a build failure, so auto can fall back."""
    from torch.utils import cpp_extension

    def bad_arch(**kwargs):
        raise ValueError("Unknown CUDA arch (sm_90) or GPU not supported")

    monkeypatch.setenv("ENDO3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", bad_arch)
    with pytest.raises(Endo3dError, match="sm_90"):
        build.build()


def test_backend_from_env_and_override(monkeypatch):
    assert build.backend() == "auto"
    monkeypatch.setenv(build.ENV, "Torch")
    assert build.backend() == "torch"
    build.set_backend("cuda")
    assert build.backend() == "cuda"
    with pytest.raises(ValueError):
        build.set_backend("gpu")
    build._reset_for_tests()
    monkeypatch.setenv(build.ENV, "gpu")
    with pytest.raises(Endo3dError, match="ENDO3D_KERNELS='gpu'"):
        build.backend()


@pytest.mark.parametrize("name", ["auto", "cuda", "torch"])
def test_cpu_tensors_take_the_reference_with_one_log_line(caplog, name):
    build.set_backend(name)
    with caplog.at_level(logging.INFO, logger="endo3d.kernels"):
        assert build.cuda_ops(torch.ones(2)) is None
        assert build.cuda_ops(torch.ones(3), torch.zeros(1)) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "PyTorch reference" in lines[0]


def test_failed_build_falls_back_once_or_raises_when_forced(monkeypatch, caplog):
    """CUDA tensors but no library: auto warns once and uses the reference; cuda is an error."""
    calls = []

    def failing_build(verbose=False):
        calls.append(1)
        raise Endo3dError("nvcc: not found")

    monkeypatch.setattr(build, "build", failing_build)
    monkeypatch.setattr(build, "_any_cuda", lambda tensors: True)
    with caplog.at_level(logging.INFO, logger="endo3d.kernels"):
        assert build.cuda_ops(torch.ones(1)) is None
        assert build.cuda_ops(torch.ones(1)) is None
    assert len(calls) == 1  # the build is tried once per process
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "nvcc: not found" in warnings[0].getMessage()
    build.set_backend("cuda")
    with pytest.raises(Endo3dError, match="ENDO3D_KERNELS=cuda .*nvcc: not found"):
        build.cuda_ops(torch.ones(1))


@pytest.mark.skipif(torch.version.cuda is not None, reason="checks the CPU build of torch")
def test_build_command_on_cpu_torch_is_one_line_exit_2(capsys):
    assert cli_main(["kernels", "build"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CPU build" in err[0]
    assert build.main([]) == 2


def test_status_says_which_path_runs(capsys):
    assert cli_main(["kernels", "status"]) == 0
    out = capsys.readouterr().out
    expected = "CUDA kernels" if torch.cuda.is_available() else "PyTorch reference (no CUDA GPU)"
    assert f"path for CUDA tensors: {expected}" in out
    assert "cuda_ext" in out or "endo3d/cuda_ext" in out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_library_builds_and_registers_every_operation():
    build.set_backend("cuda")
    ops = build.cuda_ops(torch.ones(1, device="cuda"))
    assert ops is not None
    names = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("endo3d::")}
    assert {"hexplane_forward", "hexplane_backward", "shade_forward", "shade_backward", "ssim_l1_forward",
            "ssim_l1_backward"} <= names
