"""The material field, its output mapping and the per-frame camera response: ranges and gradients."""

from __future__ import annotations

import torch
from torch.autograd import gradcheck

from endo3d.pbr.field import F0_MAX, R_MIN, HashEncoding, MaterialField, material_from_raw, radiance_from_raw
from endo3d.pbr.model import Response
from endo3d.render.brdf import ALPHA_MIN


def test_material_mapping_ranges_and_start_values():
    raw = torch.cat([torch.full((1, 6), -50.0), torch.zeros(1, 6), torch.full((1, 6), 50.0)])
    m = material_from_raw(raw, metallic=True)
    assert m.albedo.shape == (3, 3) and m.roughness.shape == (3, 1)
    assert torch.all((m.albedo >= 0) & (m.albedo <= 1))
    assert torch.all((m.roughness >= R_MIN) & (m.roughness <= 1)) and R_MIN**2 > ALPHA_MIN
    assert torch.all((m.specular >= 0) & (m.specular <= F0_MAX))
    assert torch.allclose(m.albedo[1], torch.full((3,), 0.5)) and abs(float(m.specular[1]) - 0.04) < 1e-7
    assert torch.all(material_from_raw(raw).metallic == 0)


def test_material_mapping_gradcheck():
    raw = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda r: material_from_raw(r, metallic=True).fields(), (raw,))
    assert gradcheck(lambda r: radiance_from_raw(r[:, :3], 2.0), (raw,))


def test_hash_encoding_interpolates_and_has_gradients():
    torch.manual_seed(0)
    enc = HashEncoding(torch.zeros(3), torch.full((3,), 4.0), levels=3, table_log2=6, features=2,
                       coarsest_mm=2.0, finest_mm=0.5).double()
    assert enc.dense[0] and not enc.dense[-1]  # a dense level and a hashed level
    with torch.no_grad():
        enc.table.normal_()
    # At a grid corner of the coarsest level its features are the stored corner values.
    corner = torch.tensor([[2.0, 2.0, 0.0]], dtype=torch.float64)
    res = enc.resolution[0]
    idx = 1 + res[0] * 1 + res[0] * res[1] * 0
    assert torch.allclose(enc(corner)[0, :2], enc.table[0, idx])
    # Continuous across cell borders.
    a, b = torch.tensor([[1.0 - 1e-9, 1.3, 0.7]]).double(), torch.tensor([[1.0 + 1e-9, 1.3, 0.7]]).double()
    assert torch.allclose(enc(a), enc(b), atol=1e-6)
    points = (torch.rand(5, 3, dtype=torch.float64) * 3.5 + 0.2).requires_grad_(True)
    table = enc.table.detach().clone().requires_grad_(True)

    def run(p, t):
        return torch.func.functional_call(enc, {"table": t}, (p,))

    assert gradcheck(run, (points, table), atol=1e-6)


def test_material_field_shapes():
    field = MaterialField(torch.zeros(3), torch.ones(3) * 10, outputs=6, levels=4, table_log2=8, hidden=8)
    out = field(torch.rand(7, 3) * 10)
    assert out.shape == (7, 6) and torch.isfinite(out).all()
    assert field(torch.zeros(0, 3)).shape == (0, 6)


def test_response_gradcheck_exposure_and_vignetting():
    torch.manual_seed(1)
    response = Response(torch.tensor([0.1, -0.2, 0.3]), learn_exposure=True, anchor=0, vignetting=(-0.2, 0.05),
                        learn_vignetting=True).double()
    K = torch.tensor([[4.0, 0, 2.5], [0, 4.0, 1.5], [0, 0, 1]], dtype=torch.float64)
    radiance = torch.rand(2, 3, 3, 5, dtype=torch.float64) * 0.5 + 0.05
    log_e = response.log_exposure.detach().clone().requires_grad_(True)
    vig = response.vignetting.detach().clone().requires_grad_(True)

    def run(rad, e, v):
        return torch.func.functional_call(response, {"log_exposure": e, "vignetting": v}, (rad, [2, 1], K))

    assert gradcheck(run, (radiance.requires_grad_(True), log_e, vig))


def test_response_anchor_frame_exposure_stays_fixed():
    response = Response(torch.zeros(3), learn_exposure=True, anchor=1)
    out = response(torch.full((3, 3, 2, 2), 0.1), [0, 1, 2], torch.eye(3))
    out.sum().backward()
    assert response.log_exposure.grad[1] == 0 and response.log_exposure.grad[0] != 0
    response.interpolate_exposures([0, 2])
    with torch.no_grad():
        response.log_exposure.copy_(torch.tensor([0.0, 5.0, 1.0]))
    response.interpolate_exposures([0, 2])
    assert torch.allclose(response.log_exposure, torch.tensor([0.0, 0.5, 1.0]))
