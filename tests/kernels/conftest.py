"""Fixtures of the kernel tests."""

from __future__ import annotations

import pytest
import torch

from endo3d.kernels import build


@pytest.fixture
def kernels(monkeypatch):
    """The CUDA kernels forced on (a failed build is an error, not a silent fallback): the ops namespace.

    The forced backend is undone after the test (``monkeypatch`` restores the module state)."""
    monkeypatch.setitem(build._state, "backend", "cuda")
    ops = build.cuda_ops(torch.zeros(1, device="cuda"))
    assert ops is not None
    return ops
