"""``endo3d``: one entry point, one subcommand per job.

Each subcommand is a typed config dataclass (tyro turns its fields and
docstrings into flags and ``--help``) and a runner that is imported only
when the subcommand runs, so ``--help`` does not load torch. A user-facing
problem (:class:`~endo3d.core.errors.Endo3dError`) prints one line and exits
with status 2.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from endo3d.sim.config import SimulateConfig


def _simulate(config: SimulateConfig) -> None:
    from endo3d.cli.simulate import run

    run(config)


COMMANDS: dict[str, tuple[type, Callable]] = {
    "simulate": (SimulateConfig, _simulate),
}


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    from endo3d.core.errors import Endo3dError

    config = tyro.extras.subcommand_cli_from_dict(
        {name: cls for name, (cls, _) in COMMANDS.items()}, prog="endo3d",
        description="endo3d: differentiable simulation and 3D reconstruction in endoscopy.", args=argv)
    runner = next(run for cls, run in COMMANDS.values() if isinstance(config, cls))
    try:
        runner(config)
    except Endo3dError as e:
        print(f"endo3d: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("endo3d: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
