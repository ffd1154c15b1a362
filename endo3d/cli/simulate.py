"""``endo3d simulate``: parse -> :func:`endo3d.sim.simulate.simulate` -> summary line."""

from __future__ import annotations

from endo3d.sim.config import SimulateConfig


def run(config: SimulateConfig) -> None:
    from endo3d.sim.simulate import simulate

    report = simulate(config)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report.stage_seconds.items() if v > 0)
    print(f"wrote {report.path}: {report.frames} frames {config.width}x{config.height} in "
          f"{report.wall_seconds:.1f} s ({report.frames_per_second:.1f} frames/s; setup "
          f"{report.setup_seconds:.1f}s; {stages})")
