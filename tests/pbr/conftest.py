"""Fixtures of the PBR tests: a short fitted run on the session's rigid colon."""

from __future__ import annotations

from pathlib import Path

import pytest

from endo3d.pbr.config import PbrFitConfig


def fit_config(dataset: Path, out: Path, **kwargs) -> PbrFitConfig:
    """A small, quick fit (few steps, small field)."""
    settings = dict(steps=20, pixels_per_frame=1024, checkpoint_every=10, progress=False,
                    field=__import__("endo3d.pbr.config", fromlist=["FieldConfig"]).FieldConfig(
                        levels=6, table_log2=12, hidden=16))
    settings.update(kwargs)
    return PbrFitConfig(dataset=dataset, out=out, **settings)


@pytest.fixture(scope="session")
def pbr_run(rigid_colon, tmp_path_factory) -> Path:
    """A 20-step PBR fit of the rigid colon (its run folder)."""
    from endo3d.pbr.fit import fit

    out = tmp_path_factory.mktemp("pbr") / "run"
    fit(fit_config(rigid_colon, out))
    return out
