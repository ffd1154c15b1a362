"""Small shared pieces: user-facing errors, shape checks, atomic output."""

from endo3d.core.check import ShapeError, check_shape
from endo3d.core.errors import Endo3dError, InputError
from endo3d.core.fs import atomic_output_dir

__all__ = ["Endo3dError", "InputError", "ShapeError", "atomic_output_dir", "check_shape"]
