"""The Gaussian scene model and its standard 3DGS PLY file.

A scene is a :class:`torch.nn.ParameterDict` of per-Gaussian tensors (first
dimension ``N``) under gsplat's key names, so gsplat's strategies and our own
densification (which clone and prune every key) operate on it directly:

=============  ==============  ===============================================
key            shape           meaning
=============  ==============  ===============================================
``means``      ``(N, 3)``      centres, world mm
``scales``     ``(N, 3)``      log of the standard deviations along the
                               Gaussian's axes (``exp(scales)`` is in mm)
``quats``      ``(N, 4)``      rotation quaternion ``(w, x, y, z)``, any length
                               (the renderer normalises it)
``opacities``  ``(N,)``        opacity logits (``sigmoid(opacities)`` in (0, 1))
``sh0``        ``(N, 1, 3)``   degree-0 SH colour coefficients (:mod:`endo3d.gs.sh`)
``shN``        ``(N, K-1, 3)`` higher SH coefficients, ``K = (degree + 1)^2``;
                               ``K - 1 = 0`` for degree 0
=============  ==============  ===============================================

Other keys with first dimension ``N`` (the per-Gaussian parameters of a
deformation field, e.g. ``deform_weights (N, C, J)``) may be present; they
are cloned, pruned, saved and loaded with the Gaussians.

PLY layout (3DGS ``save_ply``, read by common splat viewers): binary little
endian, one ``vertex`` element, float32 properties in this order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1}
    opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3

with normals 0, ``f_rest`` channel-major (all red coefficients, then green,
then blue: ``shN.transpose(1, 2).reshape(N, -1)``), ``opacity`` the logit,
``scale_i`` the log scales and ``rot_*`` the quaternion ``(w, x, y, z)``.
Extra keys follow as properties ``<key>_0 ..`` (row-major over the trailing
dimensions; a ``(N,)`` key is one property named ``<key>``), each declared
by a header line ``comment endo3d extra <key> <trailing dims>`` so that
:func:`read_ply` restores its shape; viewers skip properties they do not know.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from endo3d.core import check_shape
from endo3d.core.errors import InputError
from endo3d.core.fs import write_bytes_atomic
from endo3d.gs.sh import MAX_SH_DEGREE, num_sh_bases, rgb_to_sh0

__all__ = ["SPLAT_KEYS", "create_splats", "read_ply", "sh_degree_of", "to_splats", "write_ply"]

#: The keys every scene has, in this order; other keys are per-Gaussian extras.
SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")

#: Vertex properties before and after the ``f_rest_*`` block.
_HEAD = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
_TAIL = ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_NORMALS = ("nx", "ny", "nz")
_EXTRA_COMMENT = "endo3d extra"

#: PLY scalar types (both spellings) as numpy type codes.
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">"}
#: Longest header read before a file is declared not to be a PLY.
_MAX_HEADER_BYTES = 1 << 20


def create_splats(
    means: torch.Tensor,
    rgb: torch.Tensor,
    scales: torch.Tensor,
    *,
    opacity: float = 0.1,
    sh_degree: int = 3,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> nn.ParameterDict:
    """A fresh scene: identity rotations, view-independent colours, one opacity.

    Args:
        means: :math:`(N, 3)` centres, world mm.
        rgb: :math:`(N, 3)` colours in [0, 1] (linear, as rendered).
        scales: :math:`(N,)` (isotropic) or :math:`(N, 3)` standard deviations
            in **mm** (> 0; e.g. the distance to the nearest neighbours).
            They are stored as logs.
        opacity: opacity of every Gaussian, in (0, 1); stored as a logit.
        sh_degree: SH degree of the colours, 0 .. 3; ``shN`` starts at 0.
        extra: further per-Gaussian tensors, first dimension ``N`` (e.g. a
            deformation field's ``per_gaussian_init``).

    Returns:
        The scene (:data:`SPLAT_KEYS`, then ``extra``), every tensor a
        trainable float32 parameter on ``means``' device.
    """
    n = check_shape(means, "N 3", "means")["N"]
    check_shape(rgb, f"{n} 3", "rgb")
    if scales.dim() == 1:
        scales = scales[:, None].expand(-1, 3)
    check_shape(scales, f"{n} 3", "scales")
    if not bool((scales > 0).all()):
        raise ValueError("scales must be positive standard deviations in mm")
    if not 0 < opacity < 1:
        raise ValueError(f"opacity must be in (0, 1), got {opacity}")
    clash = sorted(set(extra or {}) & set(SPLAT_KEYS))
    if clash:
        raise ValueError(f"extra keys {clash} would replace standard scene keys")
    k = num_sh_bases(sh_degree)
    float32 = dict(dtype=torch.float32, device=means.device)
    quats = torch.zeros(n, 4, **float32)
    quats[:, 0] = 1
    tensors = {
        "means": means.to(**float32),
        "scales": torch.log(scales.to(**float32)),
        "quats": quats,
        "opacities": torch.full((n,), math.log(opacity / (1 - opacity)), **float32),
        "sh0": rgb_to_sh0(rgb.to(**float32))[:, None, :],
        "shN": torch.zeros(n, k - 1, 3, **float32),
        **{key: value.to(means.device) for key, value in (extra or {}).items()},
    }
    return to_splats(tensors)


def to_splats(tensors: Mapping[str, torch.Tensor]) -> nn.ParameterDict:
    """Trainable copies of ``tensors`` (e.g. from :func:`read_ply`) as a scene, shapes checked.

    Raises:
        ValueError: a key of :data:`SPLAT_KEYS` is missing, or a shape does not fit.
    """
    missing = [key for key in SPLAT_KEYS if key not in tensors]
    if missing:
        raise ValueError(f"a scene needs {', '.join(missing)}")
    _check_layout(**tensors)
    ordered = list(SPLAT_KEYS) + [key for key in tensors if key not in SPLAT_KEYS]
    # a list of pairs keeps this order (a plain dict would be sorted by key)
    return nn.ParameterDict([(key, nn.Parameter(tensors[key].detach().clone())) for key in ordered])


def sh_degree_of(splats: Mapping[str, torch.Tensor]) -> int:
    """SH degree of a scene, from the size of ``shN``: ``sqrt(K) - 1``.

    Example:
        >>> sh_degree_of({"shN": torch.zeros(5, 15, 3)})
        3
    """
    k = splats["shN"].shape[1] + 1
    degree = math.isqrt(k) - 1
    if (degree + 1) ** 2 != k or degree > MAX_SH_DEGREE:
        raise ValueError(f"shN has {k - 1} coefficients per channel, not (d + 1)^2 - 1 for a degree d <= 3")
    return degree


def write_ply(
    path: str | os.PathLike[str],
    means: torch.Tensor,
    scales: torch.Tensor,
    quats: torch.Tensor,
    opacities: torch.Tensor,
    sh0: torch.Tensor,
    shN: torch.Tensor,
    **extra: torch.Tensor,
) -> None:
    """Write Gaussians as a standard 3DGS PLY (see the module docstring), atomically.

    The file is written beside ``path`` under a temporary name and renamed
    into place, so ``path`` never holds a partial file. ``write_ply(path,
    **splats)`` writes a whole scene, extra keys included.

    Args:
        path: the ``.ply`` file (its folder must exist).
        means: :math:`(N, 3)` mm.
        scales: :math:`(N, 3)` log standard deviations.
        quats: :math:`(N, 4)` ``(w, x, y, z)``, written as given.
        opacities: :math:`(N,)` logits.
        sh0: :math:`(N, 1, 3)`.
        shN: :math:`(N, K-1, 3)`.
        extra: further per-Gaussian tensors :math:`(N, ...)`; their names
            must be plain identifiers and not clash with the standard properties.
    """
    n = _check_layout(means=means, scales=scales, quats=quats, opacities=opacities, sh0=sh0, shN=shN, **extra)
    columns = [means, torch.zeros_like(means), sh0.reshape(n, 3), shN.transpose(1, 2).reshape(n, 3 * shN.shape[1]),
               opacities[:, None], scales, quats]
    names = [*_HEAD, *(f"f_rest_{i}" for i in range(shN.shape[1] * 3)), *_TAIL]
    comments = []
    for key, value in extra.items():
        trailing = tuple(value.shape[1:])
        columns.append(value.reshape(n, math.prod(trailing)))
        names += [key] if not trailing else [f"{key}_{i}" for i in range(math.prod(trailing))]
        comments.append(" ".join([_EXTRA_COMMENT, key, *map(str, trailing)]))
    data = np.ascontiguousarray(torch.cat([c.detach().to("cpu", torch.float32) for c in columns], 1).numpy(), "<f4")
    header = "".join(
        ["ply\n", "format binary_little_endian 1.0\n", *(f"comment {c}\n" for c in comments),
         f"element vertex {n}\n", *(f"property float {name}\n" for name in names), "end_header\n"]
    )
    write_bytes_atomic(path, header.encode("ascii"), data.tobytes())


def read_ply(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a 3DGS PLY written by :func:`write_ply`, 3DGS, gsplat or a splat editor.

    Normals are dropped. Extra properties come back under their keys: those
    declared by an ``endo3d extra`` comment with their shape, any other as a
    ``(N,)`` tensor named after the property. Elements after ``vertex`` (none
    in a 3DGS file) are ignored.

    Returns:
        float32 CPU tensors: ``means``, ``scales``, ``quats``, ``opacities``,
        ``sh0``, ``shN`` with the shapes of the module docstring, then the extras.

    Raises:
        InputError: naming the file, when it is not a binary PLY whose first
            element is a vertex element with the 3DGS properties, or is truncated.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            lines, offset = _read_header(f, path)
            endian, count, props, extras = _parse_header(lines, path)
            dtype = np.dtype([(name, endian + code) for name, code in props])
            f.seek(offset)
            raw = f.read(count * dtype.itemsize)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    if len(raw) < count * dtype.itemsize:
        raise InputError(path, f"truncated: {count} vertices need {count * dtype.itemsize} bytes, "
                               f"the file has {len(raw)} after the header")
    table = np.frombuffer(raw, dtype=dtype, count=count)
    names = [name for name, _ in props]
    missing = [name for name in (*_HEAD, *_TAIL) if name not in names and name not in _NORMALS]
    if missing:
        raise InputError(path, f"not a 3DGS PLY: the vertex element has no {', '.join(missing)}")
    rest = sorted((int(m.group(1)) for m in map(re.compile(r"f_rest_(\d+)$").match, names) if m))
    if rest != list(range(len(rest))) or len(rest) % 3:
        raise InputError(path, f"not a 3DGS PLY: {len(rest)} f_rest properties, "
                               "expected f_rest_0 .. f_rest_{3(K-1)-1}")
    k = len(rest) // 3 + 1
    if math.isqrt(k) ** 2 != k or math.isqrt(k) - 1 > MAX_SH_DEGREE:
        raise InputError(path, f"not a 3DGS PLY: {len(rest)} f_rest values are not 3((d+1)^2 - 1) for d <= 3")

    def columns(*keys: str) -> torch.Tensor:
        out = np.empty((count, len(keys)), np.float32)
        for i, key in enumerate(keys):
            out[:, i] = table[key]
        return torch.from_numpy(out)

    out = {
        "means": columns("x", "y", "z"),
        "scales": columns("scale_0", "scale_1", "scale_2"),
        "quats": columns("rot_0", "rot_1", "rot_2", "rot_3"),
        "opacities": columns("opacity")[:, 0],
        "sh0": columns("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        "shN": columns(*(f"f_rest_{i}" for i in rest)).reshape(count, 3, k - 1).transpose(1, 2).contiguous(),
    }
    used = {*_HEAD, *_TAIL, *(f"f_rest_{i}" for i in rest)}
    for key, trailing in extras.items():
        keys = [key] if not trailing else [f"{key}_{i}" for i in range(math.prod(trailing))]
        absent = [name for name in keys if name not in names]
        if absent:
            raise InputError(path, f"the header declares extra {key!r} but property {absent[0]} is missing")
        out[key] = columns(*keys).reshape(count, *trailing)
        used.update(keys)
    out.update({name: columns(name)[:, 0] for name in names if name not in used})
    return out


def _check_layout(**tensors: torch.Tensor) -> int:
    """Check the shapes of a scene's tensors (standard keys optional) and return ``N``."""
    specs = {"means": "N 3", "scales": "N 3", "quats": "N 4", "opacities": "N", "sh0": "N 1 3", "shN": "N R 3"}
    sizes: set[int] = set()
    for key, value in tensors.items():
        if key in specs:
            sizes.add(check_shape(value, specs[key], key)["N"])
        else:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or key in _HEAD + _TAIL or key.startswith("f_rest_"):
                raise ValueError(f"extra key {key!r} is not a plain identifier or clashes with a 3DGS property")
            if value.dim() == 0:
                raise ValueError(f"extra key {key!r} is a scalar, expected one row per Gaussian")
            sizes.add(value.shape[0])
    if len(sizes) > 1:
        raise ValueError(f"per-Gaussian tensors disagree on the number of Gaussians: {sorted(sizes)}")
    if "shN" in tensors:
        sh_degree_of(tensors)
    return sizes.pop() if sizes else 0


def _read_header(f, path: Path) -> tuple[list[str], int]:
    """The header's lines (without ``end_header``) and the byte offset of the data."""
    magic = f.readline(8)
    if magic.rstrip(b"\r\n") != b"ply":
        raise InputError(path, "not a PLY file (it does not start with 'ply')")
    lines: list[str] = []
    offset = len(magic)
    while True:
        line = f.readline(_MAX_HEADER_BYTES)
        offset += len(line)
        if not line or offset > _MAX_HEADER_BYTES:
            raise InputError(path, "not a PLY file (no end_header)")
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            raise InputError(path, "not a PLY file (binary data in the header)") from None
        if text == "end_header":
            return lines, offset
        lines.append(text)


def _parse_header(
    lines: list[str], path: Path
) -> tuple[str, int, list[tuple[str, str]], dict[str, tuple[int, ...]]]:
    """Byte order, vertex count, vertex properties ``(name, numpy code)`` and declared extras."""
    endian = None
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    extras: dict[str, tuple[int, ...]] = {}
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "format":
            if len(words) != 3 or words[1] not in _FORMATS and words[1] != "ascii":
                raise InputError(path, f"bad PLY format line {line!r}")
            if words[1] == "ascii":
                raise InputError(path, "ASCII PLY: a 3DGS PLY is binary")
            endian = _FORMATS[words[1]]
        elif words[0] == "comment" and " ".join(words[1:3]) == _EXTRA_COMMENT and len(words) >= 4:
            try:
                extras[words[3]] = tuple(int(w) for w in words[4:])
            except ValueError:
                raise InputError(path, f"bad extra declaration {line!r}") from None
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise InputError(path, f"bad PLY element line {line!r}")
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise InputError(path, f"PLY property before any element: {line!r}")
            if len(words) > 1 and words[1] == "list" and len(elements) > 1:
                continue  # a list in a later element (e.g. faces): not read
            if len(words) != 3 or words[1] not in _PLY_TYPES:
                raise InputError(path, f"not a 3DGS PLY: vertex property line {line!r}")
            elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
        elif words[0] not in ("comment", "obj_info"):
            raise InputError(path, f"unknown PLY header line {line!r}")
    if endian is None:
        raise InputError(path, "PLY header has no format line")
    if not elements or elements[0][0] != "vertex":
        raise InputError(path, "not a 3DGS PLY: the first element is not 'vertex'")
    _, count, props = elements[0]
    return endian, count, props, extras
