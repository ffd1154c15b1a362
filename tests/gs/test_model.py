"""Spherical harmonics (endo3d.gs.sh) and the Gaussian scene model / 3DGS PLY (endo3d.gs.gaussians)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from endo3d.core.errors import InputError
from endo3d.gs.gaussians import SPLAT_KEYS, create_splats, read_ply, sh_degree_of, to_splats, write_ply
from endo3d.gs.sh import eval_sh, num_sh_bases, rgb_to_sh0, sh0_to_rgb, sh_basis

F64 = torch.float64


def _directions(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=F64), dim=-1)


def _spherical(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Polar angle from +z and azimuth from +x."""
    return torch.acos(d[:, 2].clamp(-1, 1)), torch.atan2(d[:, 1], d[:, 0])


# -- spherical harmonics -----------------------------------------------------------------------------


def test_num_sh_bases() -> None:
    assert [num_sh_bases(d) for d in range(4)] == [1, 4, 9, 16]
    with pytest.raises(ValueError):
        num_sh_bases(4)


def test_rgb_sh0_round_trip() -> None:
    rgb = torch.rand(50, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    sh0 = rgb_to_sh0(rgb)
    assert torch.allclose(sh0_to_rgb(sh0), rgb)
    assert torch.allclose(sh0, (rgb - 0.5) / 0.28209479177387814)  # C0 = 1 / (2 sqrt(pi))
    assert math.isclose(0.28209479177387814, 0.5 / math.sqrt(math.pi))
    # degree 0 through eval_sh: the same colour from every direction
    colour = eval_sh(0, sh0[:, None, :], _directions(50)) + 0.5
    assert torch.allclose(colour, rgb)


def test_basis_against_closed_forms_in_spherical_coordinates() -> None:
    """Real harmonics with the Condon-Shortley phase, from the complex tables:
    Y_lm = sqrt(2) Im Y_l^|m| (m < 0), Re Y_l^m (m = 0), sqrt(2) Re Y_l^m (m > 0)."""
    d = _directions(64)
    theta, phi = _spherical(d)
    st, ct = torch.sin(theta), torch.cos(theta)
    pi = math.pi
    expected = {
        0: torch.full_like(theta, 0.5 / math.sqrt(pi)),
        1: -math.sqrt(3 / (4 * pi)) * st * torch.sin(phi),                         # l=1 m=-1
        2: math.sqrt(3 / (4 * pi)) * ct,                                           # l=1 m=0
        3: -math.sqrt(3 / (4 * pi)) * st * torch.cos(phi),                         # l=1 m=1
        4: math.sqrt(15 / pi) / 4 * st**2 * torch.sin(2 * phi),                    # l=2 m=-2
        6: math.sqrt(5 / pi) / 4 * (3 * ct**2 - 1),                                # l=2 m=0
        8: math.sqrt(15 / pi) / 4 * st**2 * torch.cos(2 * phi),                    # l=2 m=2
        9: -math.sqrt(35 / (2 * pi)) / 4 * st**3 * torch.sin(3 * phi),             # l=3 m=-3
        12: math.sqrt(7 / pi) / 4 * (5 * ct**3 - 3 * ct),                          # l=3 m=0
        15: -math.sqrt(35 / (2 * pi)) / 4 * st**3 * torch.cos(3 * phi),            # l=3 m=3
    }
    basis = sh_basis(3, d)
    for k, value in expected.items():
        assert torch.allclose(basis[:, k], value, atol=1e-12), k


def test_basis_against_scipy() -> None:
    special = pytest.importorskip("scipy.special")
    if not hasattr(special, "sph_harm_y"):
        pytest.skip("scipy too old for sph_harm_y")
    d = _directions(40, seed=3)
    theta, phi = (a.numpy() for a in _spherical(d))
    basis = sh_basis(3, d).numpy()
    for l in range(4):
        for m in range(-l, l + 1):
            y = special.sph_harm_y(l, abs(m), theta, phi)  # complex, Condon-Shortley phase
            real = np.sqrt(2) * (y.imag if m < 0 else y.real) if m else y.real
            assert np.allclose(basis[:, l * l + l + m], real, atol=1e-12), (l, m)


def test_basis_is_orthonormal() -> None:
    # Fibonacci lattice: equal-area points, exact enough for polynomials of degree <= 6
    n = 20000
    i = torch.arange(n, dtype=F64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt(1 - z**2)
    a = math.pi * (3 - math.sqrt(5)) * i
    d = torch.stack([r * torch.cos(a), r * torch.sin(a), z], -1)
    basis = sh_basis(3, d)
    gram = basis.T @ basis * (4 * math.pi / n)
    assert torch.allclose(gram, torch.eye(16, dtype=F64), atol=2e-3)


def test_eval_sh_sums_bases_and_uses_leading_coefficients() -> None:
    g = torch.Generator().manual_seed(2)
    coeffs = torch.randn(30, 16, 3, generator=g, dtype=F64)
    d = _directions(30)
    basis = sh_basis(3, d)
    assert torch.allclose(eval_sh(3, coeffs, d), torch.einsum("nk,nkc->nc", basis, coeffs))
    # a lower active degree uses only the first (d + 1)^2 coefficients
    assert torch.allclose(eval_sh(1, coeffs, d), torch.einsum("nk,nkc->nc", basis[:, :4], coeffs[:, :4]))
    # one-hot coefficient picks one basis function (3DGS sign: -C1 y for k = 1)
    onehot = torch.zeros(1, 4, 3, dtype=F64)
    onehot[0, 1] = 1
    y_axis = torch.tensor([[0.0, 1.0, 0.0]], dtype=F64)
    assert torch.allclose(eval_sh(1, onehot, y_axis), torch.full((1, 3), -0.4886025119029199, dtype=F64))
    with pytest.raises(ValueError):
        eval_sh(2, coeffs[:, :4], d)


# -- scene model --------------------------------------------------------------------------------------


def _scene(n: int = 7, degree: int = 3, seed: int = 0) -> torch.nn.ParameterDict:
    g = torch.Generator().manual_seed(seed)
    splats = create_splats(torch.randn(n, 3, generator=g) * 10, torch.rand(n, 3, generator=g),
                           torch.rand(n, generator=g) + 0.1, sh_degree=degree)
    with torch.no_grad():  # make every value distinct, so a transposed layout would show
        for key in SPLAT_KEYS:
            splats[key].copy_(torch.randn(splats[key].shape, generator=g))
    return splats


def test_create_splats() -> None:
    means = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    rgb = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.0, 0.5]])
    extra = {"deform_weights": torch.zeros(2, 10, 17)}
    s = create_splats(means, rgb, torch.tensor([0.5, 2.0]), opacity=0.25, sh_degree=2, extra=extra)
    assert list(s.keys()) == [*SPLAT_KEYS, "deform_weights"]
    assert all(isinstance(p, torch.nn.Parameter) and p.dtype == torch.float32 for p in s.values())
    assert torch.equal(s["means"], means)
    assert torch.allclose(s["scales"], torch.log(torch.tensor([[0.5] * 3, [2.0] * 3])))
    assert torch.equal(s["quats"], torch.tensor([[1.0, 0, 0, 0]] * 2))
    assert torch.allclose(torch.sigmoid(s["opacities"]), torch.full((2,), 0.25))
    assert s["sh0"].shape == (2, 1, 3) and torch.allclose(sh0_to_rgb(s["sh0"][:, 0]), rgb)
    assert s["shN"].shape == (2, 8, 3) and not s["shN"].any()
    assert s["deform_weights"].shape == (2, 10, 17)
    assert sh_degree_of(s) == 2
    zero = create_splats(means, rgb, torch.ones(2, 3), sh_degree=0)
    assert zero["shN"].shape == (2, 0, 3) and sh_degree_of(zero) == 0
    with pytest.raises(ValueError):
        create_splats(means, rgb, torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError):
        create_splats(means, rgb, torch.ones(2), extra={"w": torch.zeros(3, 4)})


def test_to_splats_checks_shapes() -> None:
    tensors = {k: v.detach() for k, v in _scene().items()}
    assert list(to_splats(tensors).keys()) == list(SPLAT_KEYS)
    with pytest.raises(ValueError):
        to_splats({k: v for k, v in tensors.items() if k != "quats"})
    with pytest.raises(ValueError):
        to_splats({**tensors, "shN": torch.zeros(7, 5, 3)})  # 5 + 1 is not a square


# -- PLY ------------------------------------------------------------------------------------------------


def _expected_names(degree: int) -> list[str]:
    rest = 3 * (num_sh_bases(degree) - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


@pytest.mark.parametrize("degree", [3, 0])
def test_ply_layout_read_by_plyfile(tmp_path: Path, degree: int) -> None:
    plyfile = pytest.importorskip("plyfile")
    splats = _scene(n=5, degree=degree)
    path = tmp_path / "point_cloud.ply"
    write_ply(path, **splats)
    ply = plyfile.PlyData.read(str(path))
    assert [e.name for e in ply.elements] == ["vertex"]
    vertex = ply["vertex"]
    assert vertex.count == 5
    assert [p.name for p in vertex.properties] == _expected_names(degree)
    assert len(vertex.properties) == (62 if degree == 3 else 17)
    assert all(np.dtype(p.val_dtype) == np.dtype("<f4") for p in vertex.properties)
    assert not ply.text and ply.byte_order == "<"
    data = vertex.data
    s = {k: v.detach().numpy() for k, v in splats.items()}
    assert np.array_equal(np.stack([data["x"], data["y"], data["z"]], 1), s["means"])
    assert not np.any(np.stack([data["nx"], data["ny"], data["nz"]]))
    assert np.array_equal(np.stack([data[f"f_dc_{i}"] for i in range(3)], 1), s["sh0"][:, 0])
    # channel-major f_rest: all red coefficients first
    k1 = num_sh_bases(degree) - 1
    rest = np.stack([data[f"f_rest_{i}"] for i in range(3 * k1)], 1) if k1 else np.zeros((5, 0))
    assert np.array_equal(rest, s["shN"].transpose(0, 2, 1).reshape(5, -1))
    assert np.array_equal(data["opacity"], s["opacities"])
    assert np.array_equal(np.stack([data[f"scale_{i}"] for i in range(3)], 1), s["scales"])
    assert np.array_equal(np.stack([data[f"rot_{i}"] for i in range(4)], 1), s["quats"])


@pytest.mark.parametrize("degree", [3, 1, 0])
def test_ply_round_trip(tmp_path: Path, degree: int) -> None:
    splats = _scene(degree=degree)
    path = tmp_path / "scene.ply"
    write_ply(path, splats["means"], splats["scales"], splats["quats"], splats["opacities"], splats["sh0"],
              splats["shN"])
    back = read_ply(path)
    assert list(back) == list(SPLAT_KEYS)
    for key in SPLAT_KEYS:
        assert back[key].dtype == torch.float32 and torch.equal(back[key], splats[key].detach()), key
    assert sh_degree_of(back) == degree
    assert os.listdir(tmp_path) == ["scene.ply"]  # no temporary file left behind


def test_ply_extra_keys_travel_through(tmp_path: Path) -> None:
    splats = _scene(n=4)
    extra = {"deform_weights": torch.randn(4, 10, 17), "deform_flag": torch.arange(4.0)}
    path = tmp_path / "checkpoint.ply"
    write_ply(path, **splats, **extra)
    back = read_ply(path)
    assert list(back) == [*SPLAT_KEYS, *extra]
    for key, value in extra.items():
        assert torch.equal(back[key], value), key
    scene = to_splats(back)
    assert list(scene.keys()) == [*SPLAT_KEYS, *extra]
    with pytest.raises(ValueError):
        write_ply(path, **splats, opacity=torch.zeros(4))  # clashes with a 3DGS property


def test_ply_keeps_unknown_properties_and_reads_big_endian(tmp_path: Path) -> None:
    plyfile = pytest.importorskip("plyfile")
    names = _expected_names(0) + ["filter_3D"]
    data = np.zeros(3, dtype=[(name, ">f4") for name in names])
    data["x"] = [1, 2, 3]
    data["filter_3D"] = [7, 8, 9]
    path = tmp_path / "other.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")], byte_order=">").write(str(path))
    back = read_ply(path)
    assert torch.equal(back["means"][:, 0], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(back["filter_3D"], torch.tensor([7.0, 8.0, 9.0]))


def test_ply_write_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "scene.ply"
    write_ply(path, **_scene(n=3))
    write_ply(path, **_scene(n=6, seed=1))
    assert read_ply(path)["means"].shape == (6, 3)
    assert os.listdir(tmp_path) == ["scene.ply"]


def test_ply_errors_name_the_file(tmp_path: Path) -> None:
    plyfile = pytest.importorskip("plyfile")
    cases = {}
    cases["text.ply"] = b"hello\n"
    cases["ascii.ply"] = b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nend_header\n"
    cases["noend.ply"] = b"ply\nformat binary_little_endian 1.0\nelement vertex 1\n"
    mesh = tmp_path / "mesh.ply"
    vertices = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    plyfile.PlyData([plyfile.PlyElement.describe(vertices, "vertex"),
                     plyfile.PlyElement.describe(faces, "face")]).write(str(mesh))
    good = tmp_path / "good.ply"
    write_ply(good, **_scene(n=4))
    cases["truncated.ply"] = good.read_bytes()[:-10]
    bad_rest = good.read_bytes().replace(b"property float f_rest_44\n", b"property float f_rest_45\n")
    cases["bad_rest.ply"] = bad_rest
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    expected = {"text.ply": "not a PLY", "ascii.ply": "ASCII", "noend.ply": "end_header",
                "truncated.ply": "truncated", "bad_rest.ply": "f_rest", "mesh.ply": "f_dc_0"}
    for name, phrase in expected.items():
        with pytest.raises(InputError) as info:
            read_ply(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and phrase in str(info.value), (name, str(info.value))
    with pytest.raises(InputError, match="cannot read"):
        read_ply(tmp_path / "missing.ply")
