"""``endo3d pbr fit`` and ``endo3d pbr render``: thin runners that print where the results are."""

from __future__ import annotations

from endo3d.pbr.config import PbrFitConfig, PbrRenderConfig


def run_fit(config: PbrFitConfig) -> None:
    from endo3d.gs.metrics import format_metric
    from endo3d.pbr.fit import fit

    result = fit(config)
    m = result.metrics
    print(f"wrote {result.run}: {config.model} model, {m['steps']} steps in {m['train_seconds']:.0f} s")
    print(f"test frames {m['test_frames']}: PSNR {format_metric(m['psnr'])} dB (masked full image), "
          f"{format_metric(m['psnr_tissue'])} dB (tissue only), SSIM {format_metric(m['ssim'], 3)}")
    lights = m.get("lights")
    if lights:
        print(f"light vs dataset: falloff error {100 * lights['falloff_relative_error']:.1f} %, intensity share "
              f"error {100 * lights['intensity_share_relative_error']:.1f} %"
              + (f", aligned intensity error {100 * lights['intensity_aligned_relative_error']:.1f} %"
                 if "intensity_aligned_relative_error" in lights else ""))
    print(f"metrics: {result.run / 'metrics.json'}  lights: {result.run / 'lights.json'}")


def run_render(config: PbrRenderConfig) -> None:
    from endo3d.pbr.render import render_dataset

    out = render_dataset(config)
    print(f"wrote {out}")
