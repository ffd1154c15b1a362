"""``endo3d``: one entry point, one subcommand per job.

Subcommands are named in :data:`COMMANDS`; a name with a space (``"depth
train"``) is a subcommand of a group (``endo3d depth train``). Each is a
typed config dataclass (tyro turns its fields and docstrings into flags and
``--help``) and a runner that is imported only
when the subcommand runs, so ``--help`` does not load torch. A user-facing
problem (:class:`~endo3d.core.errors.Endo3dError`) prints one line and exits
with status 2.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Callable, Sequence, Union

from endo3d.depth.config import DepthEvalConfig, DepthFinetuneConfig, DepthPredictConfig, DepthTrainConfig
from endo3d.gs.config import ReconstructConfig, RenderConfig
from endo3d.kernels.config import KernelsBuildConfig, KernelsStatusConfig
from endo3d.pbr.config import PbrFitConfig, PbrRenderConfig
from endo3d.sim.config import SimulateConfig


def _simulate(config: SimulateConfig) -> None:
    from endo3d.cli.simulate import run

    run(config)


def _reconstruct(config: ReconstructConfig) -> None:
    from endo3d.cli.reconstruct import run_reconstruct

    run_reconstruct(config)


def _render(config: RenderConfig) -> None:
    from endo3d.cli.reconstruct import run_render

    run_render(config)


def _depth_train(config: DepthTrainConfig) -> None:
    from endo3d.cli.depth import run_train

    run_train(config)


def _depth_finetune(config: DepthFinetuneConfig) -> None:
    from endo3d.cli.depth import run_finetune

    run_finetune(config)


def _depth_eval(config: DepthEvalConfig) -> None:
    from endo3d.cli.depth import run_eval

    run_eval(config)


def _depth_predict(config: DepthPredictConfig) -> None:
    from endo3d.cli.depth import run_predict

    run_predict(config)


def _pbr_fit(config: PbrFitConfig) -> None:
    from endo3d.cli.pbr import run_fit

    run_fit(config)


def _pbr_render(config: PbrRenderConfig) -> None:
    from endo3d.cli.pbr import run_render

    run_render(config)


def _kernels_build(config: KernelsBuildConfig) -> None:
    from endo3d.kernels.build import build_command

    build_command(config.verbose)


def _kernels_status(config: KernelsStatusConfig) -> None:
    from endo3d.kernels.build import status_command

    status_command(config.build)


COMMANDS: dict[str, tuple[type, Callable]] = {
    "simulate": (SimulateConfig, _simulate),
    "reconstruct": (ReconstructConfig, _reconstruct),
    "render": (RenderConfig, _render),
    "pbr fit": (PbrFitConfig, _pbr_fit),
    "pbr render": (PbrRenderConfig, _pbr_render),
    "depth train": (DepthTrainConfig, _depth_train),
    "depth finetune": (DepthFinetuneConfig, _depth_finetune),
    "depth eval": (DepthEvalConfig, _depth_eval),
    "depth predict": (DepthPredictConfig, _depth_predict),
    "kernels build": (KernelsBuildConfig, _kernels_build),
    "kernels status": (KernelsStatusConfig, _kernels_status),
}

GROUPS: dict[str, str] = {
    "pbr": "Material and lighting estimation with physically based rendering; photorealistic re-rendering.",
    "depth": "Self-supervised depth, pose and intrinsics with a LoRA-adapted foundation model.",
    "kernels": "The CUDA kernels of the hot paths: build them ahead of time, or see which path runs.",
}
"""One-line descriptions of the command groups (the first word of a two-word command)."""


def _summary(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def command_union() -> Any:
    """The tyro type of the whole command line: a union of subcommands, groups nested."""
    import tyro

    def option(name: str, cls: Any, description: str) -> Any:
        return Annotated[cls, tyro.conf.subcommand(name, description=description)]

    top: dict[str, Any] = {}
    groups: dict[str, list[Any]] = {}
    for name, (cls, _) in COMMANDS.items():
        group, _, sub = name.partition(" ")
        if sub:
            groups.setdefault(group, []).append(option(sub, cls, _summary(cls)))
            top.setdefault(group, None)
        else:
            top[group] = option(group, cls, _summary(cls))
    for group, members in groups.items():
        top[group] = option(group, Union[tuple(members)] if len(members) > 1 else members[0], GROUPS.get(group, ""))
    return Union[tuple(top.values())]


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    from endo3d.core.errors import Endo3dError

    config = tyro.cli(command_union(), prog="endo3d", args=argv,
                      description="endo3d: differentiable simulation and 3D reconstruction in endoscopy.")
    runner = next(run for cls, run in COMMANDS.values() if type(config) is cls)
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
