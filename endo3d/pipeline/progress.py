"""One progress display across the pipeline's stages, with the stage's name and an overall ETA.

Each stage has a *weight*, its expected share of the run's time (from the
plan's step counts and measured per-step costs). The bar counts weighted
work from 0 to 100 %, so tqdm's rate and ETA describe the whole run, and
its label names the stage: ``[3/6] cameras: refine 120/300``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class StageProgress:
    """Weighted progress over named stages (``enabled=False``: no output, timings still kept).

    Args:
        weights: stage name -> expected relative cost, in running order.
        enabled: draw the bar.
    """

    def __init__(self, weights: dict[str, float], *, enabled: bool = True) -> None:
        from tqdm import tqdm

        total = sum(weights.values())
        self.shares = {k: 1000.0 * v / total for k, v in weights.items()}
        self.names = list(weights)
        self.seconds: dict[str, float] = {}
        self._bar: Any = tqdm(total=1000, disable=not enabled, dynamic_ncols=True,
                              bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        self._done = 0.0

    def _advance_to(self, value: float) -> None:
        if value > self._done:
            self._bar.update(value - self._done)
            self._done = value

    @contextmanager
    def stage(self, name: str, total: int = 1) -> Iterator[Callable[[int, str], None]]:
        """Run stage ``name`` of ``total`` units; yields ``update(units_done, note)``.

        On exit the bar jumps to the end of the stage (a stage that was
        already done on ``--resume`` takes no time) and its wall time is
        recorded in :attr:`seconds`.
        """
        k = self.names.index(name)
        start_value = sum(self.shares[n] for n in self.names[:k])
        share = self.shares[name]
        label = f"[{k + 1}/{len(self.names)}] {name}"
        self._bar.set_description_str(label)
        started = time.perf_counter()

        def update(done: int, note: str = "") -> None:
            self._advance_to(start_value + share * min(done, total) / max(total, 1))
            self._bar.set_description_str(f"{label}: {note}" if note else label, refresh=False)

        yield update
        self._advance_to(start_value + share)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def record(self, name: str, seconds: float) -> None:
        """Mark stage ``name`` done outside the bar (work before the bar was drawn) and keep its time."""
        self._advance_to(sum(self.shares[n] for n in self.names[:self.names.index(name) + 1]))
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def close(self) -> None:
        self._bar.close()
