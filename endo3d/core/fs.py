"""Atomic output folders: write into a temporary sibling, rename when done.

A job that fails or is interrupted leaves no half-written output behind: the
final path either does not exist, or holds the previous complete result, or
the new complete result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from endo3d.core.errors import InputError


def current_umask() -> int:
    """The process umask (reading it means setting it, so set it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder that becomes ``path`` on success.

    The temporary folder is created beside ``path`` (same file system, so the
    final step is a rename). On an exception it is deleted and ``path`` is
    left untouched.

    Args:
        path: the final output folder.
        overwrite: replace an existing ``path``; otherwise an existing path is
            an :class:`InputError`, raised before any work is done.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise InputError(final, "already exists (pass --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; give the usual folder permissions
    try:
        yield tmp
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``, replacing an existing ``final`` only once
    the new one is in place; on failure the previous ``final`` is restored."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent)) / final.name
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        shutil.rmtree(old.parent, ignore_errors=True)
        raise
    shutil.rmtree(old.parent, ignore_errors=True)


def staging_dir(path: str | os.PathLike[str]) -> Path:
    """Where a resumable job writes before its output is complete: ``.NAME.partial`` beside ``path``."""
    final = Path(path)
    return final.parent / f".{final.name}.partial"


@contextlib.contextmanager
def resumable_output_dir(path: str | os.PathLike[str], *, overwrite: bool = False,
                         resume: bool = False) -> Iterator[tuple[Path, bool]]:
    """Like :func:`atomic_output_dir`, for long jobs that checkpoint.

    The job writes into :func:`staging_dir` ``(path)``, which survives an
    error or an interruption so that a later call with ``resume=True`` finds
    its checkpoints; on success it is renamed to ``path``.

    Yields:
        ``(folder, resuming)``: the staging folder, and whether it holds an
        interrupted job to continue.

    Raises:
        InputError: ``path`` exists and neither ``overwrite`` nor ``resume``
            is set; ``resume`` without an interrupted job; an interrupted job
            found while neither ``resume`` nor ``overwrite`` is set.
    """
    final, staging = Path(path), staging_dir(path)
    check_resumable_output(final, overwrite=overwrite, resume=resume)
    if not resume:
        shutil.rmtree(staging, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    yield staging, resume
    _publish(staging, final)


def check_resumable_output(path: str | os.PathLike[str], *, overwrite: bool = False, resume: bool = False) -> None:
    """The checks of :func:`resumable_output_dir`, to run before any expensive work."""
    final, staging = Path(path), staging_dir(path)
    if resume and not staging.is_dir():
        raise InputError(final, "nothing to resume: no interrupted run found "
                                f"({staging.name} does not exist beside it)")
    if not resume:
        if final.exists() and not overwrite:
            raise InputError(final, "already exists (pass --overwrite to replace it)")
        if staging.exists() and not overwrite:
            raise InputError(final, f"an interrupted run is in {staging}; pass --resume to continue it "
                                    "or --overwrite to start again")


def write_bytes_atomic(path: str | os.PathLike[str], *chunks: bytes) -> None:
    """Write ``chunks`` one after the other to a temporary file beside ``path`` and rename it into place
    (readers never see half a file); the file gets the usual permissions of the umask."""
    final = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
