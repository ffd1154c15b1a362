"""The package list in pyproject.toml covers every package; presets ship."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "endo3d").rglob("__init__.py")}
    assert found | {"endo3d.scenes", "endo3d.cuda_ext"} == listed
    assert config["package-dir"] == {"endo3d.scenes": "scenes", "endo3d.cuda_ext": "cuda_ext"}
    assert {"colon.toml", "airway.toml", "tissue.toml"} <= {p.name for p in (ROOT / "scenes").glob("*.toml")}
