"""Deformation fields against finite differences and geometric facts."""

from __future__ import annotations

import numpy as np
import pytest

from endo3d.sim.instrument import GraspPull, GraspScript
from endo3d.sim.motion import Deformation, FourierModes, Rigid, transform_normals


def _fd_jacobian(field, x: np.ndarray, t: float, h: float = 1e-5) -> np.ndarray:
    out = np.empty((len(x), 3, 3))
    for j in range(3):
        step = np.zeros(3)
        step[j] = h
        out[:, :, j] = (field.displacement(x + step, t) - field.displacement(x - step, t)) / (2 * h)
    return out


@pytest.fixture
def fourier():
    rng = np.random.default_rng(0)
    return FourierModes.random(rng, modes=5, amplitude_mm=1.5, wavelength_mm=30.0, frequency_hz=0.3)


def test_fourier_vanishes_at_t0_and_has_the_requested_rms(fourier):
    rng = np.random.default_rng(1)
    x = rng.uniform(-200, 200, (20000, 3))
    assert np.abs(fourier.displacement(x, 0.0)).max() < 1e-12
    d = np.concatenate([fourier.displacement(x, t) for t in np.linspace(0.5, 40.0, 40)])
    assert np.sqrt(np.mean(np.sum(d * d, axis=1))) == pytest.approx(1.5, rel=0.3)


def test_fourier_jacobian_matches_finite_differences(fourier):
    x = np.random.default_rng(2).uniform(-50, 50, (50, 3))
    np.testing.assert_allclose(fourier.jacobian(x, 1.7), _fd_jacobian(fourier, x, 1.7), atol=1e-7)


def test_grasp_pull_jacobian_and_follows_the_jaws():
    script = GraspScript(trocar=np.array([100.0, 0.0, 80.0]), grasps=np.array([[0.0, 0.0, 0.0]]),
                         up=np.array([0.0, 0.0, 1.0]), period=2.0, pull=np.array([0.0, 0.0, 8.0]),
                         jaw_open_rad=0.6, grasp_depth_mm=6.0)
    pull = GraspPull(script, sigma_mm=10.0)
    x = np.random.default_rng(3).uniform(-20, 20, (40, 3))
    t = 0.65 * 2.0  # mid-pull
    np.testing.assert_allclose(pull.jacobian(x, t), _fd_jacobian(pull, x, t), atol=1e-7)
    grasp = np.zeros((1, 3))
    # the grasped point moves with the tip; released tissue returns to rest
    np.testing.assert_allclose(grasp + pull.displacement(grasp, t), script.tip(t)[None], atol=1e-9)
    assert np.abs(pull.displacement(x, 0.9 * 2.0)).max() < 1e-12
    assert script.opening(t) == 0.0 and script.opening(0.25 * 2.0) == pytest.approx(0.6)


def test_deformed_normals_stay_perpendicular_to_deformed_surface(fourier):
    """Nanson: carry two tangents with F, the new normal is perpendicular to both."""
    motion = Deformation((fourier,), scale=3.0)
    rng = np.random.default_rng(4)
    x = rng.uniform(-40, 40, (100, 3))
    n = rng.standard_normal((100, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    t1 = np.cross(n, rng.standard_normal((100, 3)))
    t2 = np.cross(n, t1)
    F = motion.gradient(x, 2.3)
    n_new = transform_normals(F, n)
    for tangent in (t1, t2):
        assert np.abs(np.sum(n_new * np.einsum("nij,nj->ni", F, tangent), axis=1)).max() < 1e-9
    np.testing.assert_allclose(np.linalg.norm(n_new, axis=1), 1.0)


def test_rigid_and_zero_scale():
    angle = 0.4
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = R, [1.0, 2.0, 3.0]
    rigid = Rigid(lambda t: pose)
    x = np.random.default_rng(5).standard_normal((10, 3))
    np.testing.assert_allclose(rigid.positions(x, 1.0), x @ R.T + [1, 2, 3])
    np.testing.assert_allclose(transform_normals(rigid.gradient(x, 1.0), x / np.linalg.norm(x, axis=1, keepdims=True)),
                               (x @ R.T) / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-12)
    frozen = Deformation((FourierModes.random(np.random.default_rng(0), 3, 1.0, 20.0, 1.0),), scale=0.0)
    assert frozen.static and np.array_equal(frozen.positions(x, 5.0), x)
