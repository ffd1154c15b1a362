"""Shading of G-buffer points: dispatch and plumbing on the CPU, fused kernel vs ``shade`` on a GPU."""

from __future__ import annotations

import pytest
import torch

from endo3d.kernels import build
from endo3d.kernels import shading as kshading
from endo3d.kernels.shading import _fits_kernel, shade_points
from endo3d.render.brdf import Material
from endo3d.render.lights import SpotLight
from endo3d.render.shading import shade

F64 = torch.float64
NAMES = ("points", "normals", "albedo", "roughness", "specular", "metallic", "visibility",
         "positions", "directions", "intensities", "falloffs", "ambient")


def scene(n: int, num_lights: int, seed: int, *, shadows: bool, ambient: bool, peak: bool = True,
          dtype: torch.dtype = F64) -> dict[str, torch.Tensor | None]:
    """Leaf tensors (CPU) of a random scene: points 20 mm in front of the camera facing it roughly,
    with special rows: 0 at the camera centre, 1 back-facing, 2-4 roughness below the alpha floor
    and near 1, 5 F0 = 0 (Lambertian), 6-7 metallic 0 and 1, 8 at light 0, 9-10 either side of the
    F90 = 50 F0 kink, and with ``peak`` 11-19 near the specular peak of light 0 (sharp GGX lobes).
    One light sits at the camera centre when there is one (C3VD's rig, where l = v); with more, the
    last one is isotropic (falloff 0). ``n >= 20``."""
    g = torch.Generator().manual_seed(seed)
    unit = torch.nn.functional.normalize
    points = torch.randn(n, 3, generator=g, dtype=F64) * 4 + torch.tensor([0.0, 0.0, 20.0], dtype=F64)
    normals = unit(-points + torch.randn(n, 3, generator=g, dtype=F64) * 8, dim=-1)
    albedo = torch.rand(n, 3, generator=g, dtype=F64)
    roughness = torch.rand(n, 1, generator=g, dtype=F64)
    specular = torch.rand(n, 1, generator=g, dtype=F64) * 0.08
    metallic = torch.rand(n, 1, generator=g, dtype=F64)
    positions = torch.randn(num_lights, 3, generator=g, dtype=F64) * 2
    directions = torch.randn(num_lights, 3, generator=g, dtype=F64) * 0.3 + torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    intensities = torch.rand(num_lights, 3, generator=g, dtype=F64) * 500 + 50
    falloffs = torch.rand(num_lights, generator=g, dtype=F64) * 3
    if num_lights == 1:
        positions[0] = 0.0
    else:
        falloffs[-1] = 0.0
    points[0] = 0.0
    normals[1] = -normals[1]
    roughness[2:5, 0] = torch.tensor([0.01, 0.999, 0.03])
    specular[5], metallic[5] = 0.0, 0.0
    metallic[6], metallic[7] = 0.0, 1.0
    points[8] = positions[0]
    specular[9:11, 0], metallic[9:11] = torch.tensor([0.0199, 0.0201]), 0.0
    if peak:
        for j in range(11, 20):
            w, v = unit(positions[0] - points[j], dim=0), unit(-points[j], dim=0)
            normals[j] = unit(w + v + torch.randn(3, generator=g, dtype=F64) * 0.003 * (j - 11), dim=0)
            roughness[j] = 0.05 + 0.02 * (j - 11)
    visibility = torch.rand(n, num_lights, generator=g, dtype=F64) if shadows else None
    amb = torch.rand(3, generator=g, dtype=F64) * 0.1 if ambient else None
    tensors = dict(points=points, normals=normals, albedo=albedo, roughness=roughness, specular=specular,
                   metallic=metallic, visibility=visibility, positions=positions, directions=directions,
                   intensities=intensities, falloffs=falloffs, ambient=amb)
    return {k: None if t is None else t.to(dtype) for k, t in tensors.items()}


def inputs(t: dict[str, torch.Tensor | None]) -> tuple:
    """``(points, normals, material, lights, ambient, visibility)`` of :func:`shade` from the leaves."""
    lights = [SpotLight(t["positions"][k], t["directions"][k], t["intensities"][k], t["falloffs"][k])
              for k in range(len(t["positions"]))]
    vis = t["visibility"]
    visibility = None if vis is None else [vis[:, k:k + 1] for k in range(vis.shape[1])]
    material = Material(t["albedo"], t["roughness"], t["specular"], t["metallic"])
    return t["points"], t["normals"], material, lights, t["ambient"], visibility


def run(fn, t: dict[str, torch.Tensor | None], cotangent: torch.Tensor, wrt: tuple[str, ...] = NAMES):
    """``fn``'s radiance and its gradients (dict) to the leaves named in ``wrt`` (None leaves skipped)."""
    leaves = {k: v.detach().clone().requires_grad_(k in wrt) if v is not None else None for k, v in t.items()}
    points, normals, material, lights, ambient, visibility = inputs(leaves)
    out = fn(points, normals, material, lights, ambient, visibility=visibility)
    names = [k for k in wrt if leaves[k] is not None]
    grads = torch.autograd.grad(out, [leaves[k] for k in names], cotangent) if names else ()
    return out.detach(), dict(zip(names, grads))


# -- CPU: dispatch and plumbing -----------------------------------------------------------------------


def test_cpu_is_the_reference_bit_for_bit() -> None:
    t = scene(40, 2, seed=1, shadows=True, ambient=True, dtype=torch.float32)
    cotangent = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    ours, our_grads = run(shade_points, t, cotangent)
    ref, ref_grads = run(shade, t, cotangent)
    assert torch.equal(ours, ref)
    assert our_grads.keys() == ref_grads.keys()
    assert all(torch.equal(our_grads[k], ref_grads[k]) for k in ref_grads)


def test_fits_kernel_shapes() -> None:
    points, normals, material, lights, ambient, visibility = inputs(scene(20, 2, 0, shadows=True, ambient=True))
    assert _fits_kernel(points, normals, material, lights, ambient, visibility)
    uniform = Material(material.albedo[:1], material.roughness[0], material.specular[:1], material.metallic[:1])
    assert _fits_kernel(points, normals, uniform, lights, ambient[None], [v[:1] for v in visibility])
    assert _fits_kernel(points, normals, material, lights, None, None)
    batched = [SpotLight(*(x.expand(2, *x.shape) for x in (l.position, l.direction, l.intensity, l.falloff)))
               for l in lights]
    image = [x.reshape(4, 5, -1) for x in (points, normals)]
    bad = [
        (*image, material, lights, ambient, None),                                 # not flat
        (points, normals, material, batched, ambient, None),                       # one light per image
        (points, normals, material, lights, ambient.expand(20, 3), None),          # ambient per point
        (points, normals, material, lights, ambient, visibility[:1]),              # one visibility for 2
        (points, normals, material, lights, ambient.float(), None),                # mixed dtypes
        (points, normals, Material(material.albedo[:2], *material.fields()[1:]), lights, None, None),
        (points, normals, material, [], None, None),
    ]
    for args in bad:
        assert not _fits_kernel(*args)


class _ReferenceOps:
    """Stands in for ``torch.ops.endo3d`` on the CPU: the operators' contract (flat contiguous
    inputs, gradients for exactly the bits of ``needs``), computed with the reference."""

    def __init__(self) -> None:
        self.needs: list[int] = []

    @staticmethod
    def _shade(points, normals, albedo, roughness, specular, metallic, visibility, positions, directions,
               intensities, falloffs, ambient):
        n, num_lights = points.shape[0], positions.shape[0]
        for x in (points, normals, albedo):
            assert x.shape == (n, 3) and x.is_contiguous()
        for x in (roughness, specular, metallic):
            assert x.shape == (n, 1) and x.is_contiguous()
        assert visibility is None or (visibility.shape == (n, num_lights) and visibility.is_contiguous())
        assert ambient is None or ambient.shape == (3,)
        t = dict(zip(NAMES, (points, normals, albedo, roughness, specular, metallic, visibility, positions,
                             directions, intensities, falloffs, ambient)))
        points, normals, material, lights, ambient, visibility = inputs(t)
        return shade(points, normals, material, lights, ambient, visibility=visibility)

    def shade_forward(self, *args):
        return self._shade(*args)

    def shade_backward(self, grad, *args):
        *args, needs = args
        self.needs.append(needs)
        with torch.enable_grad():
            leaves = [a.detach().requires_grad_() if a is not None else None for a in args]
            wanted = [i for i, a in enumerate(leaves) if a is not None and (needs >> i) & 1]
            grads = torch.autograd.grad(self._shade(*leaves), [leaves[i] for i in wanted], grad)
        out = [None] * len(args)
        for i, g in zip(wanted, grads):
            out[i] = g
        return out


@pytest.mark.parametrize("wrt", [NAMES, ("albedo", "roughness", "intensities", "ambient"), ("points",)])
def test_kernel_plumbing_with_uniform_material(monkeypatch, wrt: tuple[str, ...]) -> None:
    """The kernel path's expansion of broadcast fields, stacking of lights and gradient routing,
    run on the CPU with the operators replaced by the reference."""
    ops = _ReferenceOps()
    monkeypatch.setattr(kshading, "cuda_ops", lambda *tensors: ops)
    t = scene(30, 3, seed=2, shadows=True, ambient=True)
    t.update(albedo=t["albedo"][:1], roughness=t["roughness"][:1], specular=t["specular"][0],
             metallic=t["metallic"][:1], visibility=t["visibility"][:1])
    cotangent = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    ours, our_grads = run(shade_points, t, cotangent, wrt)
    ref, ref_grads = run(shade, t, cotangent, wrt)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    assert our_grads.keys() == ref_grads.keys()
    for k in ref_grads:
        assert our_grads[k].shape == t[k].shape
        torch.testing.assert_close(our_grads[k], ref_grads[k], rtol=1e-12, atol=1e-14, msg=k)
    assert ops.needs == [sum(1 << NAMES.index(k) for k in wrt)]


# -- CUDA kernel parity ------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _poison(n: int, num_lights: int, dtype: torch.dtype) -> None:
    """Leave NaN in free allocator blocks of the sizes of the per-point outputs, so that an element the
    kernel does not write shows."""
    held = [torch.full((n * c,), float("nan"), dtype=dtype, device="cuda")
            for c in (1, 3, num_lights) for _ in range(16)]
    del held


def _close(ours: torch.Tensor, ref: torch.Tensor, rtol: float, name: str) -> None:
    """Equal within ``rtol`` of each element and of the largest."""
    assert ours.shape == ref.shape and ours.device == ref.device, name
    assert torch.isfinite(ours).all(), name
    scale = ref.abs().max().item() if ref.numel() else 0.0
    torch.testing.assert_close(ours.double(), ref.double(), rtol=rtol, atol=rtol * scale, msg=name)


def _parity(t: dict, rtol_forward: float, rtol_point: float, rtol_light: float,
            wrt: tuple[str, ...] = NAMES) -> None:
    """Kernel on ``t`` (its dtype) vs the reference in float64 on the same values."""
    n, device = t["points"].shape[0], t["points"].device
    cotangent = torch.randn(n, 3, generator=torch.Generator().manual_seed(n), dtype=F64).to(device)
    reference = {k: None if v is None else v.double() for k, v in t.items()}
    if device.type == "cuda":
        _poison(n, t["positions"].shape[0], t["points"].dtype)
    ours, our_grads = run(shade_points, t, cotangent.to(t["points"].dtype), wrt)
    ref, ref_grads = run(shade, reference, cotangent, wrt)
    _close(ours, ref, rtol_forward, "radiance")
    assert our_grads.keys() == ref_grads.keys()
    for k, g in ref_grads.items():
        summed = k in ("positions", "directions", "intensities", "falloffs", "ambient")
        _close(our_grads[k], g, rtol_light if summed else rtol_point, k)


def _cuda(t: dict) -> dict:
    return {k: None if v is None else v.cuda() for k, v in t.items()}


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("num_lights", [1, 2, 3])
@pytest.mark.parametrize("shadows", [False, True])
@pytest.mark.parametrize("ambient", [False, True])
def test_cuda_parity_float64(kernels, num_lights: int, shadows: bool, ambient: bool) -> None:
    """Every special row, including the sharp specular peaks, to rounding (the hand-written adjoint)."""
    t = scene(300, num_lights, seed=10 * num_lights + 2 * shadows + ambient, shadows=shadows, ambient=ambient)
    _parity(_cuda(t), 1e-9, 1e-7, 1e-7)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("num_lights", [1, 3])
def test_cuda_parity_float32(kernels, num_lights: int) -> None:
    """float32 against float64, many blocks. Without the constructed specular peaks, where float32 is
    ill-conditioned; random points near the lobes of roughness ~0 still cost the float32 reference
    itself up to 7e-6 of the largest radiance, hence 3e-5."""
    t = scene(5000, num_lights, seed=num_lights, shadows=True, ambient=True, peak=False, dtype=torch.float32)
    _parity(_cuda(t), 3e-5, 5e-4, 1e-3)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("wrt", [("albedo", "roughness", "specular", "metallic", "intensities", "falloffs",
                                  "ambient"), ("points", "normals"), ("visibility",)])
def test_cuda_uniform_material_and_partial_grads(kernels, wrt: tuple[str, ...]) -> None:
    t = scene(700, 2, seed=7, shadows=True, ambient=True)
    t.update(albedo=t["albedo"][:1], roughness=t["roughness"][0], specular=t["specular"][:1],
             metallic=t["metallic"][:1])
    _parity(_cuda(t), 1e-9, 1e-7, 1e-7, wrt)


@pytest.mark.cuda
@cuda
def test_cuda_no_points(kernels) -> None:
    t = _cuda(scene(20, 2, seed=3, shadows=True, ambient=True, dtype=torch.float32))
    empty = {k: v[:0] if k in NAMES[:7] and v is not None else v for k, v in t.items()}
    ours, grads = run(shade_points, empty, torch.zeros(0, 3, device="cuda"))
    assert ours.shape == (0, 3)
    for k in ("positions", "directions", "intensities", "falloffs", "ambient"):
        assert grads[k].shape == t[k].shape and not grads[k].any(), k
    for k in NAMES[:7]:
        assert grads[k].shape == empty[k].shape, k


@pytest.mark.cuda
@cuda
def test_cuda_pbr_model(kernels) -> None:
    """``PbrModel.radiance`` runs the kernel: the radiance and every parameter's gradient as with the reference."""
    pytest.importorskip("open3d")  # endo3d.pbr ray casts with it
    from endo3d.pbr.data import FrameBuffers
    from endo3d.pbr.field import MaterialField
    from endo3d.pbr.model import PbrModel, Response

    n = 500
    t = scene(n, 2, seed=5, shadows=True, ambient=True, peak=False, dtype=torch.float32)
    world = torch.rand(n, 3, generator=torch.Generator().manual_seed(5)) * 10
    frame = FrameBuffers(0, torch.arange(n).cuda(), world.cuda(), t["points"].cuda(), t["normals"].cuda(),
                         t["visibility"].cuda())
    lights = [SpotLight(t["positions"][k], t["directions"][k], t["intensities"][k], t["falloffs"][k])
              for k in range(2)]
    torch.manual_seed(0)
    field = MaterialField(torch.zeros(3), torch.full((3,), 10.0), outputs=6, levels=2, table_log2=4, hidden=8)
    model = PbrModel(field, lights, t["ambient"], Response(torch.zeros(1), learn_exposure=False),
                     metallic=True).cuda()
    params = [p for p in model.parameters() if p.requires_grad]

    def radiance_and_grads(backend: str) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        build.set_backend(backend)
        out = model.radiance(frame)
        return out.detach(), torch.autograd.grad(out.square().sum(), params)

    ours, our_grads = radiance_and_grads("cuda")
    ref, ref_grads = radiance_and_grads("torch")
    _close(ours, ref, 3e-5, "radiance")
    for i, (a, b) in enumerate(zip(our_grads, ref_grads)):
        _close(a, b, 1e-3, f"parameter {i}")
