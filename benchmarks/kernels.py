"""The fused CUDA kernels against their PyTorch references, at the sizes of a 640x512 training run.

For each operation, the median time of the forward and of forward + backward,
once through the CUDA kernel (``ENDO3D_KERNELS=cuda``) and once through the
PyTorch reference (``torch``) on the same GPU and inputs, and the ratio:

- ``hexplane``: the deformation field's feature query of ``N`` Gaussians
  (``HexPlaneField.features``), with our default field and EndoGaussian's
  (4 scales x 64 features);
- ``shading``: spot light + GGX/Lambert shading of a 640x512 G-buffer, one
  and two lights, gradients to points, normals, material and lights;
- ``ssim_l1``: the masked ``0.8 L1 + 0.2 (1 - SSIM)`` loss of a 3x512x640
  render, gradient to the render.

Times come from CUDA events (median of ``--repeats`` after warm-up). The
end-to-end effect on training time and render FPS is measured by
``benchmarks/reconstruct.py --kernels torch auto`` on the same machine.

Usage: python benchmarks/kernels.py [--gaussians 100000 400000] [--repeats 50]
       [--json benchmarks/results/kernels.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Callable

import torch

from endo3d.gs.deform import HexPlaneField
from endo3d.gs.deform_config import HexPlaneConfig
from endo3d.kernels import photometric_loss, shade_points
from endo3d.kernels.build import set_backend
from endo3d.render.brdf import Material
from endo3d.render.lights import SpotLight

WIDTH, HEIGHT = 640, 512


def cuda_median_ms(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median milliseconds of ``fn()`` timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def hexplane_case(config: HexPlaneConfig, n: int, g: torch.Generator):
    """Forward and forward+backward closures of the feature query for ``n`` Gaussians in a 100 mm box."""
    aabb = torch.tensor([[-50.0, -40.0, 40.0], [50.0, 40.0, 120.0]])
    field = HexPlaneField(config, aabb).cuda()
    points = (aabb[0] + (aabb[1] - aabb[0]) * torch.rand(n, 3, generator=g)).cuda().requires_grad_()
    t = torch.rand(n, generator=g).cuda()

    def forward():
        with torch.no_grad():
            field.features(points, t)

    def backward():
        field.features(points, t).sum().backward()

    return forward, backward


def shading_case(lights_count: int, g: torch.Generator):
    """A 640x512 G-buffer of a tilted, wavy surface 30-90 mm away; random material."""
    p = WIDTH * HEIGHT
    u = (torch.rand(p, 2, generator=g) - 0.5) * 2
    z = 60 + 30 * u[:, 0] * u[:, 1]
    points = torch.stack([u[:, 0] * z * 0.6, u[:, 1] * z * 0.5, z], 1)
    tilt = torch.randn(p, 3, generator=g) * 0.3
    normals = torch.nn.functional.normalize(tilt + torch.tensor([0.0, 0.0, -1.0]), dim=1)
    leaves = dict(points=points, normals=normals, albedo=torch.rand(p, 3, generator=g),
                  roughness=0.2 + 0.7 * torch.rand(p, 1, generator=g), specular=0.5 * torch.rand(p, 1, generator=g),
                  metallic=0.1 * torch.rand(p, 1, generator=g))
    leaves = {k: v.cuda().requires_grad_() for k, v in leaves.items()}
    lights = [SpotLight.create(position=(4.0 * k - 2, 0.0, 0.0), direction=(0.0, 0.1 * k, 1.0),
                               intensity=(800.0, 700.0, 600.0), falloff=2.0, device="cuda")
              for k in range(lights_count)]
    for light in lights:
        for tensor in (light.position, light.direction, light.intensity, light.falloff):
            tensor.requires_grad_()
    ambient = torch.tensor([0.02, 0.015, 0.01], device="cuda", requires_grad=True)

    def run():
        material = Material(leaves["albedo"], leaves["roughness"], leaves["specular"], leaves["metallic"])
        return shade_points(leaves["points"], leaves["normals"], material, lights, ambient)

    def forward():
        with torch.no_grad():
            run()

    def backward():
        run().sum().backward()

    return forward, backward


def ssim_case(g: torch.Generator):
    target = torch.rand(3, HEIGHT, WIDTH, generator=g).cuda()
    render = (target + 0.1 * torch.randn(3, HEIGHT, WIDTH, generator=g).cuda()).clamp(0, 1).requires_grad_()
    yy, xx = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    mask = (((xx - WIDTH / 2) ** 2 + (yy - HEIGHT / 2) ** 2) < (0.55 * WIDTH) ** 2)[None].cuda()

    def forward():
        with torch.no_grad():
            photometric_loss(render, target, mask, 0.2)

    def backward():
        photometric_loss(render, target, mask, 0.2).backward()

    return forward, backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/kernels.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU (the kernels are compared on one device)")

    g = torch.Generator().manual_seed(0)
    cases = []
    for n in args.gaussians:
        cases.append((f"hexplane ours N={n}", hexplane_case(HexPlaneConfig(), n, g)))
        cases.append((f"hexplane EndoGaussian N={n}", hexplane_case(HexPlaneConfig.endogaussian(), n, g)))
    for lights in (1, 2):
        cases.append((f"shading 640x512 {lights} light{'s' if lights > 1 else ''}", shading_case(lights, g)))
    cases.append(("ssim_l1 3x512x640", ssim_case(g)))

    rows = []
    header = f"{'operation':32s} {'pass':8s} {'CUDA ms':>9s} {'torch ms':>9s} {'speed-up':>9s}"
    print(header)
    print("-" * len(header))
    for name, (forward, backward) in cases:
        for label, fn in (("fwd", forward), ("fwd+bwd", backward)):
            times = {}
            for backend in ("cuda", "torch"):
                set_backend(backend)
                times[backend] = cuda_median_ms(fn, args.repeats)
            rows.append(dict(operation=name, pass_=label, cuda_ms=times["cuda"], torch_ms=times["torch"],
                             speedup=times["torch"] / times["cuda"]))
            print(f"{name:32s} {label:8s} {times['cuda']:9.3f} {times['torch']:9.3f} "
                  f"{times['torch'] / times['cuda']:8.1f}x", flush=True)
    set_backend("auto")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                     "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
