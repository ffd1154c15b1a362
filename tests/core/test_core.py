"""Shape checks, typed configs from plain data, atomic output folders."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch

from endo3d.core import InputError, ShapeError, atomic_output_dir, check_shape
from endo3d.core.config import from_dict, to_dict


def test_check_shape():
    assert check_shape(torch.zeros(2, 3, 4, 5), "B 3 H W") == {"B": 2, "H": 4, "W": 5}
    assert check_shape(torch.zeros(7, 6, 3), "... 3") == {}
    with pytest.raises(ShapeError, match=r"\(2, 4, 4, 5\), expected \(B 3 H W\)"):
        check_shape(torch.zeros(2, 4, 4, 5), "B 3 H W")
    with pytest.raises(ShapeError):
        check_shape(torch.zeros(3, 4), "N N")


@dataclass(frozen=True)
class Inner:
    size: float = 1.0
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    count: int = 2
    pair: tuple[float, float] = (0.0, 1.0)
    inner: Inner = Inner()
    items: tuple[Inner, ...] = field(default=())
    tuned: Inner = Inner(size=5.0, mode="b")


def test_config_round_trip_and_errors():
    config = from_dict(Outer, {"count": 3, "pair": [1, 2], "inner": {"mode": "b"}, "items": [{"size": 2}]}, "f.toml")
    assert config == Outer(count=3, pair=(1.0, 2.0), inner=Inner(mode="b"), items=(Inner(size=2.0),))
    assert from_dict(Outer, to_dict(config), "f.toml") == config
    # a nested table overrides only what it gives, on top of the field's default
    assert from_dict(Outer, {"tuned": {"size": 7.0}}, "f.toml").tuned == Inner(size=7.0, mode="b")
    for data, message in [({"cont": 1}, "unknown key 'cont'"), ({"count": 1.5}, "count must be an integer"),
                          ({"inner": {"mode": "c"}}, "inner.mode = 'c'"), ({"pair": [1]}, "pair needs 2 values"),
                          ({"count": True}, "count must be an integer")]:
        with pytest.raises(InputError, match=message) as error:
            from_dict(Outer, data, "f.toml")
        assert str(error.value).startswith("f.toml: ")


def test_atomic_output_dir(tmp_path):
    out = tmp_path / "result"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "1"
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    with pytest.raises(InputError, match="already exists"):
        with atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"] and (out / "a.txt").exists()
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


def test_atomic_output_dir_restores_the_old_result_when_publishing_fails(tmp_path, monkeypatch):
    out = tmp_path / "result"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    real_replace = os.replace

    def flaky(src, dst):
        if Path(dst) == out and Path(src).name.startswith(".result.tmp-"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]
    assert (out / "a.txt").read_text() == "old"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
