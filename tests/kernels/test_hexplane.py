"""HexPlane feature query (endo3d.kernels.hexplane): the reference, the dispatch, and the CUDA kernel's parity."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from endo3d.gs.deform import PLANES, HexPlaneField
from endo3d.gs.deform_config import HexPlaneConfig
from endo3d.kernels import build
from endo3d.kernels.hexplane import (
    PlaneLayout,
    _flat_layout,
    hexplane_features,
    hexplane_features_reference,
)

F64 = torch.float64
AABB = torch.tensor([[-5.0, -4.0, 20.0], [5.0, 4.0, 30.0]])
OURS = HexPlaneConfig()
ENDOGAUSSIAN = HexPlaneConfig.endogaussian()


pytestmark = pytest.mark.usefixtures("one_thread")


def _layouts(spatial: tuple[int, ...], times: tuple[int, ...]) -> list[PlaneLayout]:
    """HexPlane layouts (planes ``xy xz yz xt yt zt``), one scale per ``(spatial, time)`` pair of sizes."""
    out = []
    for res, time in zip(spatial, times):
        sizes = (res, res, res, time)
        offsets, rows = [], 0
        for a, b in PLANES:
            offsets.append(rows)
            rows += sizes[a] * sizes[b]
        out.append(PlaneLayout(sizes, tuple((o, a, b) for o, (a, b) in zip(offsets, PLANES))))
    return out


def _rows(layout: PlaneLayout) -> int:
    return sum(layout.sizes[a] * layout.sizes[b] for _, a, b in layout.planes)


def _tables(layouts: list[PlaneLayout], features: int, generator: torch.Generator, dtype=torch.float32,
            device="cpu") -> list[torch.Tensor]:
    """Random tables in [0.5, 1.5], so that a product of six lookups is neither tiny nor huge."""
    return [(0.5 + torch.rand(_rows(lay), features, generator=generator, dtype=dtype)).to(device) for lay in layouts]


def _coords(n: int, generator: torch.Generator, dtype=torch.float32, shared_time: bool = False) -> torch.Tensor:
    """``(N, 4)`` coordinates, about a quarter of them outside [0, 1], the first rows exactly on the box faces.

    They are multiples of ``2^-12``, so that ``x (size - 1)`` is exact in float32 for sizes up to ``2^12``:
    float32 and float64 then find the same cells and fractions (otherwise the position's rounding,
    ``~ size 6e-8`` cell widths, moves a float32 lookup by that times the plane's slope).
    """
    coords = ((torch.rand(n, 4, generator=generator, dtype=dtype) * 1.4 - 0.2) * 4096).round() / 4096
    if shared_time:  # one frame: every Gaussian at the same t, as in training
        coords[:, 3] = 0.375
    faces = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.5, 1.0], [1.0, 0.5, 0.0, 0.0],
                          [-0.5, 1.5, 0.25, 2.0]], dtype=dtype)
    coords[: min(n, len(faces))] = faces[:n]
    return coords


def _by_planes(tables: list[torch.Tensor], coords: torch.Tensor, layouts: list[PlaneLayout]) -> torch.Tensor:
    """An independent oracle: every plane through ``F.grid_sample`` (border padding, align_corners)."""
    out = []
    for table, (sizes, planes) in zip(tables, layouts):
        product = 1.0
        for offset, a, b in planes:
            plane = table[offset: offset + sizes[a] * sizes[b]].view(sizes[b], sizes[a], -1).permute(2, 0, 1)
            grid = (coords.clamp(0, 1)[:, [a, b]] * 2 - 1)[None, None]
            sample = F.grid_sample(plane[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
            product = product * sample[0, :, 0].T
        out.append(product)
    return torch.cat(out, 1)


# -- reference and dispatch (CPU) -----------------------------------------------------------------------


def test_reference_matches_grid_sample() -> None:
    g = torch.Generator().manual_seed(0)
    layouts = _layouts((5, 9), (4, 3))
    tables = _tables(layouts, 3, g, F64)
    coords = _coords(300, g, F64)
    ours = hexplane_features_reference(tables, coords, layouts)
    assert ours.shape == (300, 6)
    torch.testing.assert_close(ours, _by_planes(tables, coords, layouts), rtol=1e-12, atol=1e-12)


def test_reference_gradcheck() -> None:
    g = torch.Generator().manual_seed(1)
    layouts = _layouts((3, 4), (3, 2))
    tables = [t.requires_grad_(True) for t in _tables(layouts, 2, g, F64)]
    # inside the box and away from the cell edges of both scales, where the lookups have kinks
    coords = torch.tensor([[0.1, 0.2, 0.4, 0.3], [0.9, 0.6, 0.15, 0.7], [0.45, 0.8, 0.6, 0.2]], dtype=F64)
    torch.autograd.gradcheck(lambda c, *t: hexplane_features_reference(t, c, layouts),
                             (coords.requires_grad_(True), *tables))


def test_field_features_are_hexplane_features() -> None:
    config = dataclasses.replace(OURS, features=3, resolution=5, time_resolution=4)
    field = HexPlaneField(config, AABB)
    g = torch.Generator().manual_seed(2)
    points = AABB[0] + (AABB[1] - AABB[0]) * (torch.rand(50, 3, generator=g) * 1.2 - 0.1)
    t = torch.rand(50, generator=g)
    box = ((points - AABB[0]) / (AABB[1] - AABB[0])).clamp(0, 1)
    coords = torch.cat([box, t[:, None]], 1)
    expected = _by_planes([p.detach().double() for p in field.planes], coords.double(), field._layout)
    torch.testing.assert_close(field.features(points, t).double(), expected, rtol=1e-5, atol=1e-6)


def test_cpu_tensors_use_the_reference() -> None:
    g = torch.Generator().manual_seed(3)
    layouts = _layouts((4, 6), (3, 5))
    tables = [t.requires_grad_(True) for t in _tables(layouts, 4, g)]
    coords = _coords(40, g).requires_grad_(True)
    assert build.cuda_ops(coords, *tables) is None
    ours = hexplane_features(tables, coords, layouts)
    ref = hexplane_features_reference(tables, coords, layouts)
    assert torch.equal(ours, ref)
    cotangent = torch.randn(ours.shape, generator=g)
    grads = torch.autograd.grad((ours * cotangent).sum(), (coords, *tables))
    ref_grads = torch.autograd.grad((ref * cotangent).sum(), (coords, *tables))
    for a, b in zip(grads, ref_grads):
        assert torch.equal(a, b)


def test_flat_layout() -> None:
    layouts = _layouts((4, 6), (3, 5))
    tables = [torch.zeros(_rows(lay), 2) for lay in layouts]
    coords = torch.zeros(7, 4)
    flat = _flat_layout(tables, coords, layouts)
    assert len(flat) == 2 * 6 * 5
    # scale 1, plane xt: after xy, xz, yz (3 x 6 x 6 rows), a = x (6 samples) along u, b = t (5) along v
    assert flat[(6 + 3) * 5: (6 + 4) * 5] == [108, 0, 3, 6, 5]
    assert _flat_layout([t.double() for t in tables], coords, layouts) is None  # the kernel is float32
    assert _flat_layout(tables, coords.double(), layouts) is None
    assert _flat_layout(tables * 5, coords, layouts * 5) is None  # more than 8 scales
    assert _flat_layout([tables[0], torch.zeros(_rows(layouts[1]), 3)], coords, layouts) is None  # mixed F


def test_tables_and_layouts_must_pair() -> None:
    layouts = _layouts((4,), (3,))
    with pytest.raises(ValueError, match="layouts"):
        hexplane_features([torch.zeros(_rows(layouts[0]), 2)] * 2, torch.zeros(3, 4), layouts)


# -- CUDA kernel parity ---------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _poison(nbytes: int) -> None:
    """Leave NaN in the caching allocator's free blocks, so that an output element the kernel skips shows."""
    torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda")
    torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda")


def _close(ours: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    """Equal within ``rtol`` of each element and of the largest (float32 sums of many atomics)."""
    assert torch.isfinite(ours).all()
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours.double(), ref, rtol=rtol, atol=rtol * scale)


def _check_parity(layouts: list[PlaneLayout], features: int, n: int, seed: int, shared_time: bool = False,
                  tables: list[torch.Tensor] | None = None) -> None:
    """Forward and all gradients of the kernel (float32) against the reference in float64, on the GPU."""
    g = torch.Generator().manual_seed(seed)
    if tables is None:
        tables = _tables(layouts, features, g, device="cuda")
    tables = [t.requires_grad_(True) for t in tables]
    coords = _coords(n, g, shared_time=shared_time).cuda().requires_grad_(True)
    ref_tables = [t.detach().double().requires_grad_(True) for t in tables]
    ref_coords = coords.detach().double().requires_grad_(True)

    _poison(n * features * len(layouts) * 4)
    ours = hexplane_features(tables, coords, layouts)
    ref = hexplane_features_reference(ref_tables, ref_coords, layouts)
    assert ours.shape == (n, features * len(layouts)) and ours.dtype == torch.float32
    _close(ours, ref, 1e-5)

    cotangent = torch.randn(ours.shape, generator=g, dtype=F64).cuda()
    _poison(n * 4 * 4)
    grads = torch.autograd.grad(ours, (coords, *tables), cotangent.float())
    ref_grads = torch.autograd.grad(ref, (ref_coords, *ref_tables), cotangent)
    for ours_table, ref_table in zip(grads[1:], ref_grads[1:]):
        _close(ours_table, ref_table, 1e-4)
    _close(grads[0], ref_grads[0], 1e-4)
    outside = (coords.detach() < 0) | (coords.detach() > 1)
    assert outside.any() and not grads[0][outside].any()


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("shared_time", [False, True])
def test_cuda_parity_ours(kernels, shared_time: bool) -> None:
    c = OURS
    layouts = _layouts(tuple(c.resolution * m for m in c.scales), (c.time_resolution,) * len(c.scales))
    _check_parity(layouts, c.features, 20_000, seed=10, shared_time=shared_time)


@pytest.mark.cuda
@cuda
def test_cuda_parity_endogaussian(kernels) -> None:
    c = ENDOGAUSSIAN
    layouts = _layouts(tuple(c.resolution * m for m in c.scales), (c.time_resolution,) * len(c.scales))
    _check_parity(layouts, c.features, 20_000, seed=11, shared_time=True)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("features", [1, 5, 6, 12, 33, 36, 132])
def test_cuda_parity_feature_counts(kernels, features: int) -> None:
    """Float, float2 and float4 chunks; idle lanes (F = 5, 36) and lanes with several chunks (F = 33, 132)."""
    _check_parity(_layouts((5, 17, 9), (3, 11, 2)), features, 3_000, seed=features)


@pytest.mark.cuda
@cuda
def test_cuda_parity_misaligned_tables(kernels) -> None:
    """Tables that start 4 bytes past a 16-byte boundary take the scalar path."""
    layouts = _layouts((6, 10), (5, 7))
    g = torch.Generator().manual_seed(20)
    tables = []
    for lay in layouts:
        storage = 0.5 + torch.rand(_rows(lay) * 8 + 1, generator=g)
        tables.append(storage.cuda()[1:].view(-1, 8))
    assert all(t.data_ptr() % 16 == 4 for t in tables)
    _check_parity(layouts, 8, 2_000, seed=21, tables=tables)


@pytest.mark.cuda
@cuda
def test_cuda_partial_gradients(kernels) -> None:
    """Only the coordinates, or only the tables, asked for."""
    g = torch.Generator().manual_seed(30)
    layouts = _layouts((8, 16), (6, 6))
    tables = _tables(layouts, 4, g, device="cuda")
    coords = _coords(500, g).cuda()
    x = coords.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(hexplane_features(tables, x, layouts).sum(), x)
    x64 = coords.double().requires_grad_(True)
    (gx64,) = torch.autograd.grad(hexplane_features_reference([t.double() for t in tables], x64, layouts).sum(), x64)
    _close(gx, gx64, 1e-4)
    t0 = tables[0].clone().requires_grad_(True)
    (gt,) = torch.autograd.grad(hexplane_features([t0, tables[1]], coords, layouts).sum(), t0)
    t64 = tables[0].double().requires_grad_(True)
    (gt64,) = torch.autograd.grad(
        hexplane_features_reference([t64, tables[1].double()], coords.double(), layouts).sum(), t64)
    _close(gt, gt64, 1e-4)


@pytest.mark.cuda
@cuda
def test_cuda_no_points(kernels) -> None:
    layouts = _layouts((4, 8), (3, 3))
    g = torch.Generator().manual_seed(40)
    tables = [t.requires_grad_(True) for t in _tables(layouts, 4, g, device="cuda")]
    coords = torch.zeros(0, 4, device="cuda", requires_grad=True)
    out = hexplane_features(tables, coords, layouts)
    assert out.shape == (0, 8)
    grads = torch.autograd.grad(out.sum(), (coords, *tables))
    assert grads[0].shape == (0, 4)
    assert all(gt.shape == t.shape and not gt.any() for gt, t in zip(grads[1:], tables))
    out = kernels.hexplane_forward([t.detach() for t in tables], coords.detach(), _flat_layout(tables, coords, layouts))
    assert out.shape == (0, 8)


@pytest.mark.cuda
@cuda
def test_cuda_field_end_to_end(kernels) -> None:
    """The EndoGaussian field on the GPU: features through the kernel, as the reference gives them.

    The box coordinates are not exact multiples (see :func:`_coords`), so float32 positions on the
    512-sample planes are off by up to ~3e-5 cells: a few 1e-5 relative on these [0.1, 0.5] planes.
    """
    field = HexPlaneField(ENDOGAUSSIAN, AABB).cuda()
    g = torch.Generator().manual_seed(50)
    points = (AABB[0] + (AABB[1] - AABB[0]) * torch.rand(5_000, 3, generator=g)).cuda()
    t = torch.full((5_000,), 0.6, device="cuda")
    ours = field.features(points, t)
    box = ((points - field.aabb[0]) / (field.aabb[1] - field.aabb[0])).clamp(0, 1)
    coords = torch.cat([box, t[:, None]], 1).double()
    ref = hexplane_features_reference([p.detach().double() for p in field.planes], coords, field._layout)
    _close(ours, ref, 2e-4)
