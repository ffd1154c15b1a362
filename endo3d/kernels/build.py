"""Build, cache and choose the CUDA kernels of ``cuda_ext/``.

The CUDA sources ship inside the package (``endo3d.cuda_ext`` when
installed, ``cuda_ext/`` of a source checkout). They are compiled just in
time, at the first call of an operation on CUDA tensors, with
:func:`torch.utils.cpp_extension.load` into a cache folder keyed by the
torch and CUDA versions and a hash of the sources, so a later process loads
the library in a fraction of a second. ``endo3d kernels build`` (or
``python -m endo3d.kernels.build``) compiles ahead of time; compiling needs
the CUDA toolkit (``CUDA_HOME``) but no GPU (set ``TORCH_CUDA_ARCH_LIST``).

Which path runs is chosen per call by :func:`cuda_ops`:

- ``ENDO3D_KERNELS=auto`` (default): the kernels for CUDA tensors; the
  PyTorch reference for CPU tensors, or when the build fails (one log line
  says why).
- ``ENDO3D_KERNELS=torch``: always the reference (e.g. to compare).
- ``ENDO3D_KERNELS=cuda``: the kernels for CUDA tensors, and a build
  failure is an error instead of a fallback.

:func:`set_backend` does the same from Python.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from endo3d.core.errors import Endo3dError

__all__ = ["BACKENDS", "backend", "build", "build_command", "cache_dir", "cuda_ops", "set_backend", "source_dir",
           "sources", "status", "status_command"]

LOG = logging.getLogger("endo3d.kernels")
BACKENDS = ("auto", "cuda", "torch")
ENV = "ENDO3D_KERNELS"
LIBRARY = "endo3d_cuda"
OPS = "endo3d"
"""``torch.ops`` namespace the sources register into (``TORCH_LIBRARY_FRAGMENT(endo3d, m)``)."""

_lock = threading.Lock()
_state: dict[str, Any] = {"backend": None, "loaded": None, "reason": "", "said": set()}


def source_dir() -> Path:
    """The folder of the ``.cu`` / ``.cpp`` / ``.h`` sources."""
    try:
        return Path(str(resources.files("endo3d.cuda_ext")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "cuda_ext"


def sources() -> list[Path]:
    """The translation units, sorted: every ``.cu`` and ``.cpp`` of :func:`source_dir`."""
    return sorted(p for p in source_dir().iterdir() if p.suffix in (".cu", ".cpp"))


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in source_dir().iterdir() if p.suffix in (".cu", ".cpp", ".h", ".cuh")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _device_arch() -> str:
    """What torch builds for when ``TORCH_CUDA_ARCH_LIST`` is unset: the GPU's compute capability (``9.0`` on an
    H100, the same folder as an ahead-of-time build with ``TORCH_CUDA_ARCH_LIST=9.0``), ``native`` without one."""
    import torch

    if not torch.cuda.is_available():
        return "native"
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def cache_dir() -> Path:
    """``$ENDO3D_CACHE_DIR`` or ``~/.cache/endo3d``, then ``kernels/torch<ver>-cu<ver>-<arch>-<hash>``."""
    import torch

    root = Path(os.environ.get("ENDO3D_CACHE_DIR") or Path.home() / ".cache" / "endo3d")
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or _device_arch()
    arch = arch.replace(" ", "_").replace(";", "_").replace("+", "p")
    tag = f"torch{torch.__version__.split('+')[0]}-cu{torch.version.cuda}-{arch}-{_fingerprint()}"
    return root / "kernels" / tag


def _wheel_includes(cuda_home: Path) -> list[str]:
    """Header folders of the ``nvidia-*`` wheels beside torch, when the toolkit lacks cuSPARSE / cuBLAS headers.

    torch's CUDA headers include ``cusparse.h`` and ``cublas_v2.h``; a slim
    toolkit (compiler and runtime only) has neither, but a CUDA build of
    torch brings them in its ``nvidia`` wheels.
    """
    if (cuda_home / "include" / "cusparse.h").is_file():
        return []
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for root in map(Path, nvidia.__path__):
        found += sorted(str(p.parent) for p in root.glob("*/include/cusparse.h"))
        found += sorted(str(p.parent) for p in root.glob("*/include/cublas_v2.h"))
    return list(dict.fromkeys(found))


def build(verbose: bool = False) -> Path:
    """Compile (or find in the cache) the kernel library and load it; returns the ``.so`` path.

    Raises:
        Endo3dError: torch has no CUDA, the toolkit is missing, or a source
            does not compile (the compiler's message, last lines).
    """
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise Endo3dError(f"torch {torch.__version__} is a CPU build: the CUDA kernels need a CUDA build of torch")
    if cpp_extension.CUDA_HOME is None:
        raise Endo3dError("no CUDA toolkit found (set CUDA_HOME to the folder whose lib64 holds libcudart)")
    if not sources():
        raise Endo3dError(f"{source_dir()}: no CUDA sources (.cu / .cpp) to build")
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load(
            name=LIBRARY,
            sources=[str(p) for p in sources()],
            extra_include_paths=[str(source_dir()), *_wheel_includes(Path(cpp_extension.CUDA_HOME))],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo"],
            build_directory=str(folder),
            is_python_module=False,
            verbose=verbose,
        )
    # ninja's failure is a RuntimeError with the log, a bad arch list a ValueError, none at all without a GPU an
    # IndexError: each is a failed build, so the auto backend falls back to the references
    except (Exception, SystemExit) as e:
        tail = " | ".join(line.strip() for line in str(e).splitlines()[-4:] if line.strip())
        raise Endo3dError(f"building the CUDA kernels in {folder} failed: {tail}") from e
    return folder / f"{LIBRARY}.so"


def set_backend(name: str) -> None:
    """Force ``auto``, ``cuda`` or ``torch`` for this process (overrides ``$ENDO3D_KERNELS``)."""
    if name not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {name!r}")
    _state["backend"] = name


def backend() -> str:
    """The backend in force: :func:`set_backend`'s, else ``$ENDO3D_KERNELS``, else ``auto``."""
    name = _state["backend"] or os.environ.get(ENV, "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise Endo3dError(f"{ENV}={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def _say_once(key: str, level: int, message: str) -> None:
    if key not in _state["said"]:
        _state["said"].add(key)
        LOG.log(level, message)


def _load() -> bool:
    """Build and load once per process; remembers the failure reason."""
    with _lock:
        if _state["loaded"] is None:
            try:
                build()
                _state["loaded"] = True
            except Endo3dError as e:
                _state["loaded"], _state["reason"] = False, str(e)
        return _state["loaded"]


def _any_cuda(tensors: tuple[Any, ...]) -> bool:
    import torch

    return any(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors)


def cuda_ops(*tensors: Any) -> Any | None:
    """``torch.ops.endo3d`` when the kernels should run on these tensors, else ``None`` (use the reference).

    The kernels run when any tensor is on a CUDA device, the backend is not
    ``torch`` and the library builds; with backend ``cuda`` a failed build
    raises :class:`~endo3d.core.errors.Endo3dError` instead of falling back.
    """
    import torch

    name = backend()
    if name == "torch":
        _say_once("forced", logging.INFO, f"endo3d.kernels: {ENV}=torch, using the PyTorch reference path")
        return None
    if not _any_cuda(tensors):
        _say_once("cpu", logging.INFO, "endo3d.kernels: tensors on the CPU, using the PyTorch reference path")
        return None
    if not _load():
        if name == "cuda":
            raise Endo3dError(f"{ENV}=cuda but the CUDA kernels are unavailable: {_state['reason']}")
        _say_once("failed", logging.WARNING,
                  f"endo3d.kernels: using the PyTorch reference path: {_state['reason']}")
        return None
    return getattr(torch.ops, OPS)


def status() -> SimpleNamespace:
    """What :func:`cuda_ops` would decide for CUDA tensors now: backend, loaded (None = not tried), reason."""
    return SimpleNamespace(backend=backend(), loaded=_state["loaded"], reason=_state["reason"])


def _reset_for_tests() -> None:
    _state.update(backend=None, loaded=None, reason="", said=set())


def build_command(verbose: bool = False) -> None:
    """``endo3d kernels build``: compile and load, then print the library, the time and the operators."""
    import torch

    start = time.perf_counter()
    path = build(verbose=verbose)
    ops = sorted(name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith(f"{OPS}::"))
    print(f"built {path} in {time.perf_counter() - start:.1f} s from {len(sources())} sources")
    print(f"operators: {', '.join(ops)}")


def status_command(try_build: bool = False) -> None:
    """``endo3d kernels status``: backend, device, cache, and (with ``try_build``) whether the library loads."""
    import torch

    name = backend()
    folder = cache_dir()
    built = (folder / f"{LIBRARY}.so").is_file()
    print(f"backend: {name} ({ENV}; auto, cuda or torch)")
    print(f"torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}, "
          f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"sources: {source_dir()} ({len(sources())} files)")
    print(f"cache: {folder} ({'built' if built else 'not built'})")
    if try_build:
        loaded = _load()
        print("library: loaded" if loaded else f"library: unavailable: {_state['reason']}")
    if name == "torch":
        path = f"PyTorch reference ({ENV}=torch)"
    elif not torch.cuda.is_available():
        path = "PyTorch reference (no CUDA GPU)"
    elif _state["loaded"] is False:
        path = "PyTorch reference (the build failed)" if name == "auto" else "error (the build failed)"
    else:
        path = "CUDA kernels" + ("" if built or _state["loaded"] else " (compiled at first use)")
    print(f"path for CUDA tensors: {path}")


def main(argv: list[str] | None = None) -> int:
    """``python -m endo3d.kernels.build [--verbose]``: :func:`build_command` without the CLI's dependencies."""
    parser = argparse.ArgumentParser(prog="python -m endo3d.kernels.build", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="show the compiler's commands")
    args = parser.parse_args(argv)
    try:
        build_command(args.verbose)
    except Endo3dError as e:
        print(f"endo3d: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
