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
