"""Tensor shape checks for public entry points.

``check_shape(x, "B 3 H W")`` checks the number of dimensions and every
dimension given as an integer; names (``B``, ``H``) match any size but must be
the same size wherever the same name appears in one call. A leading ``...``
matches any number of leading dimensions.
"""

from __future__ import annotations

from typing import Sequence

import torch


class ShapeError(ValueError):
    """A tensor has the wrong shape; carries the actual and expected shapes."""

    def __init__(self, name: str, actual: Sequence[int], expected: str) -> None:
        self.actual = tuple(actual)
        self.expected = expected
        super().__init__(f"{name} has shape {self.actual}, expected ({expected})")


def check_shape(x: torch.Tensor, spec: str, name: str = "tensor") -> dict[str, int]:
    """Check ``x.shape`` against ``spec`` and return the sizes bound to names.

    Args:
        x: the tensor to check.
        spec: space-separated dimensions, e.g. ``"B 3 H W"`` or ``"... 3"``.
        name: what to call ``x`` in the error message.

    Returns:
        The size of each named dimension, e.g. ``{"B": 2, "H": 64, "W": 80}``.

    Raises:
        ShapeError: when the shape does not match.

    Example:
        >>> check_shape(torch.zeros(2, 3, 4, 5), "B 3 H W")
        {'B': 2, 'H': 4, 'W': 5}
    """
    dims = spec.split()
    shape = tuple(x.shape)
    if dims and dims[0] == "...":
        dims = dims[1:]
        if len(shape) < len(dims):
            raise ShapeError(name, shape, spec)
        shape = shape[len(shape) - len(dims):]
    elif len(shape) != len(dims):
        raise ShapeError(name, x.shape, spec)
    bound: dict[str, int] = {}
    for dim, size in zip(dims, shape):
        if dim.isdigit():
            if int(dim) != size:
                raise ShapeError(name, x.shape, spec)
        elif bound.setdefault(dim, size) != size:
            raise ShapeError(name, x.shape, spec)
    return bound
