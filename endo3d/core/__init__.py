"""Small shared pieces: user-facing errors, shape checks, atomic output.

``check_shape`` / ``ShapeError`` need torch and are imported on first use, so
that importing ``endo3d.core`` (every config module does) keeps
``endo3d --help`` free of torch.
"""

from typing import Any

from endo3d.core.errors import Endo3dError, InputError
from endo3d.core.fs import atomic_output_dir

__all__ = ["Endo3dError", "InputError", "ShapeError", "atomic_output_dir", "check_shape"]


def __getattr__(name: str) -> Any:
    if name in ("ShapeError", "check_shape"):
        from endo3d.core import check

        return getattr(check, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
