"""Scene specs by kind, and loading a scene from a name or a file.

``--scene`` accepts a preset name (a TOML file shipped in ``endo3d/scenes``,
the repository's ``scenes/`` folder), a path to a scene file (``.toml``), or
a path to a mesh file (OBJ, PLY, STL, GLB, ...), which becomes a ``mesh``
scene with default settings.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Callable

import numpy as np

from endo3d.core.config import from_dict, to_dict
from endo3d.core.errors import InputError
from endo3d.sim.scene import Scene
from endo3d.sim.scenes.airway import AirwaySpec, build_airway
from endo3d.sim.scenes.colon import ColonSpec, build_colon
from endo3d.sim.scenes.common import BuildArgs
from endo3d.sim.scenes.mesh import MESH_SUFFIXES, MeshSpec, build_mesh
from endo3d.sim.scenes.tissue import TissueSpec, build_tissue

KINDS: dict[str, tuple[type, Callable[[Any, BuildArgs], Scene]]] = {
    "colon": (ColonSpec, build_colon),
    "airway": (AirwaySpec, build_airway),
    "tissue": (TissueSpec, build_tissue),
    "mesh": (MeshSpec, build_mesh),
}


def presets_dir() -> Traversable:
    """Where the preset scene files are: ``endo3d.scenes`` in an installed
    wheel; ``scenes/`` beside the package in a source checkout (whose
    ``endo3d/`` folder shadows the installed mapping when it is the cwd)."""
    try:
        return resources.files("endo3d.scenes")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[3] / "scenes"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in presets_dir().iterdir() if p.name.endswith(".toml"))


def load_spec(scene: str) -> tuple[str, Any]:
    """Resolve ``--scene`` to ``(name, spec)``; raises :class:`InputError`.

    A name that is neither a mesh file, a ``.toml`` file nor an existing file
    is a preset (so a folder named like a preset does not hide it).
    """
    path = Path(scene)
    if path.suffix.lower() in MESH_SUFFIXES:
        if not path.is_file():
            raise InputError(path, "mesh file not found")
        return path.stem, MeshSpec(mesh=str(path.resolve()))
    if path.suffix.lower() == ".toml" or path.is_file():
        if not path.is_file():
            raise InputError(path, "scene file not found")
        return path.stem, spec_from_file(path)
    preset = presets_dir() / f"{scene}.toml"
    if not preset.is_file():
        raise InputError(scene, f"unknown scene (presets: {', '.join(preset_names())}; or a .toml scene file or a mesh file)")
    with resources.as_file(preset) as file:
        return scene, spec_from_file(file)


def spec_from_file(path: Path) -> Any:
    """Parse a TOML scene file into the spec of its ``kind``."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read scene file ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(path, f"not valid TOML ({e})") from None
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise InputError(path, f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    spec_cls = KINDS[kind][0]
    if kind == "mesh" and "mesh" in data:
        if not isinstance(data["mesh"], str):
            raise InputError(path, f"'mesh' must be a path (a string), got {data['mesh']!r}")
        mesh = Path(data["mesh"])
        data["mesh"] = str(mesh if mesh.is_absolute() else (path.parent / mesh).resolve())
    spec = from_dict(spec_cls, data, str(path))
    problems = spec.problems()
    if problems:
        raise InputError(path, problems[0])
    return spec


def build_scene(spec: Any, args: BuildArgs, source: str = "scene") -> Scene:
    """Build the scene of ``spec`` and record the spec in it as plain data.

    ``source`` names the scene (file) in errors: a spec whose values are in
    range can still describe an impossible scene (say a keyframe looking at
    its own eye, or a mesh with dangling faces); that is an
    :class:`InputError`, not a crash.
    """
    problems = spec.problems()
    if problems:
        raise InputError(source, problems[0])
    try:
        scene = KINDS[spec.kind][1](spec, args)
        with np.errstate(invalid="ignore", divide="ignore"):  # what is not finite is reported below, once
            for k in range(args.num_frames):  # every pose now, so an impossible path is an InputError too
                if not np.isfinite(scene.c2w(k)).all():
                    raise ValueError(f"the camera pose of frame {k} is not finite")
                for surface in scene.surfaces:
                    if not surface.motion.static and not np.isfinite(
                            surface.motion.positions(surface.vertices[:1], scene.time(k))).all():
                        raise ValueError(f"{surface.name} has no finite position at frame {k}")
    except (ValueError, OverflowError) as e:
        raise InputError(source, f"cannot build the scene: {e}") from None
    except MemoryError:
        raise InputError(source, "cannot build the scene: it needs more memory than there is (sizes, "
                                 "vertex counts or voxel sizes too extreme)") from None
    if not any(len(s.faces) for s in scene.surfaces if s.is_tissue):
        raise InputError(source, "the scene has no tissue triangles")
    scene.spec = to_dict(spec)
    return scene
