"""User-facing errors.

An :class:`Endo3dError` is a problem with the user's input or environment. The
command line prints it as one line, ``endo3d: error: <message>``, and exits
with status 2; it never shows a traceback for it. Programming errors are not
``Endo3dError`` and keep their traceback.
"""

from __future__ import annotations

from os import PathLike


class Endo3dError(Exception):
    """A problem the user can fix; its message is one line."""


class InputError(Endo3dError):
    """A bad input file or folder: the message names the path and the problem.

    Example:
        >>> str(InputError("data/meta.json", "missing key 'frames'"))
        "data/meta.json: missing key 'frames'"
    """

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
