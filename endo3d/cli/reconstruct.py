"""``endo3d reconstruct`` and ``endo3d render``: thin runners that print where the results are."""

from __future__ import annotations

from endo3d.gs.config import ReconstructConfig, RenderConfig


def run_reconstruct(config: ReconstructConfig) -> None:
    from endo3d.gs.metrics import format_metric
    from endo3d.gs.reconstruct import reconstruct

    result = reconstruct(config)
    m = result.metrics
    print(f"wrote {result.run}: {m['num_gaussians']} Gaussians, {m['iterations']} steps in "
          f"{m['train_seconds']:.0f} s on {m['device']} ({m['deformation']}, {m['rasterizer']} rasteriser)")
    print(f"test frames {m['test_frames']}: PSNR {format_metric(m['psnr'])} dB (masked full image), "
          f"{format_metric(m['psnr_tissue'])} dB (tissue only), SSIM {format_metric(m['ssim'], 3)}, "
          f"LPIPS {format_metric(m['lpips'], 3)}, "
          f"depth RMSE {format_metric(m['depth_rmse_mm'])} mm, render {m['render_fps']:.0f} fps")
    baseline = m.get("baseline_nearest_frame")
    if baseline is not None:
        print(f"baseline, repeating the nearest training frame: PSNR {format_metric(baseline['psnr'])} dB, "
              f"SSIM {format_metric(baseline['ssim'], 3)}")
        from endo3d.pipeline.run import focal_summary

        print(f"focal length {focal_summary(m['cameras'])}")
        print(f"report: {result.run / 'report.html'}  mesh: {result.run / 'mesh.ply'}")
    print(f"renders: {result.run / 'renders'}  metrics: {result.run / 'metrics.json'}")


def run_render(config: RenderConfig) -> None:
    from endo3d.gs.video import render_video

    count = render_video(config)
    print(f"wrote {config.out}: {count} frames")
