"""One progress display across the pipeline's stages, with the stage's name and an overall ETA.

Each stage has a *weight*, its expected share of the run's time (from the
plan's step counts and measured per-step costs). The bar counts weighted
work from 0 to 100 %, so tqdm's rate and ETA describe the whole run, and
its label names the stage: ``[3/6] cameras: refine 120/300``.

The seconds per stage can be kept in a file (:meth:`StageProgress.keep_in`)
so that a resumed run reports each stage's time over all its attempts, not
only the resumed part.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from endo3d.core.fs import write_bytes_atomic


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
        self._log: Path | None = None
        self._bar: Any = tqdm(total=1000, disable=not enabled, dynamic_ncols=True,
                              bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        self._done = 0.0
        self._running: tuple[str, float] | None = None

    def _advance_to(self, value: float) -> None:
        if value > self._done:
            self._bar.update(value - self._done)
            self._done = value

    @contextmanager
    def stage(self, name: str, total: int = 1) -> Iterator[Callable[[int, str], None]]:
        """Run stage ``name`` of ``total`` units; yields ``update(units_done, note)``.

        On exit the bar jumps to the end of the stage (a stage that was
        already done on ``--resume`` takes no time). Its wall time is
        recorded in :attr:`seconds` however it exits, so an attempt that
        fails or is interrupted still counts.
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

        self._running = (name, started)
        try:
            yield update
            self._advance_to(start_value + share)
        finally:
            self._running = None
            self._add(name, time.perf_counter() - started)

    def so_far(self) -> dict[str, float]:
        """:attr:`seconds` with the running stage's time until now added (for a stage that reports on itself)."""
        out = dict(self.seconds)
        if self._running is not None:
            name, started = self._running
            out[name] = out.get(name, 0.0) + time.perf_counter() - started
        return out

    def record(self, name: str, seconds: float) -> None:
        """Mark stage ``name`` done outside the bar (work before the bar was drawn) and keep its time."""
        self._advance_to(sum(self.shares[n] for n in self.names[:self.names.index(name) + 1]))
        self._add(name, seconds)

    def keep_in(self, path: Path) -> None:
        """Add the seconds an earlier, interrupted attempt left in ``path`` (JSON) and keep the totals there
        after every stage from now on."""
        if path.is_file():
            for name, seconds in json.loads(path.read_text()).items():
                self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)
        self._log = path
        self._save()

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self._save()

    def _save(self) -> None:
        if self._log is not None:
            write_bytes_atomic(self._log, json.dumps(self.seconds).encode())

    def close(self) -> None:
        self._bar.close()
