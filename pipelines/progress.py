"""Progress of a run: each step announced, timed and numbered as it goes."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager


class StepTimer:
    """Prints ``[n] what ...`` before a step and its wall time after; ``seconds`` keeps every step's time
    (logged to MLflow as ``step_seconds_<name>``)."""

    def __init__(self, progress: Callable[[str], None]):
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, what: str):
        self.progress(f"[{len(self.seconds) + 1}] {what} ...")
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        self.progress(f"    done in {self.seconds[name]:.1f}s")
