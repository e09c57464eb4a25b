"""Progress of a run: each step announced, timed and numbered as it goes; inside the long steps (Feast retrieval
chunks, validation batches, training epochs, study trials) a :class:`Tracker`: a rich progress bar on a
terminal, plain lines in a log. What Ray workers report reaches the driver through :func:`relay`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

Mode = Literal["off", "lines", "bars"]


class Tracker:
    """Progress through ``total`` units of one step. ``advance(n, note)`` moves it; ``line(text)`` prints a line
    that stays (one per epoch or study point). ``bars``: a rich bar (notes shown beside it); ``lines``: a line at
    every tenth of the total (every unit when there are at most 10); ``off``: no progress, only the lines."""

    def __init__(self, progress: Callable[[str], None], what: str, total: int, unit: str, mode: Mode = "lines",
                 console=None):
        """``console``: the rich Console of the bar (default: stdout)."""
        self.progress, self.what, self.total, self.unit, self.mode = progress, what, max(int(total), 1), unit, mode
        self.done, self._bar, self._task, self._console = 0, None, None, console

    def __enter__(self) -> Tracker:
        if self.mode == "bars":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("    {task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(self.unit), TimeElapsedColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[note]}"), transient=True, console=self._console)
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total, note="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, n: int = 1, note: str = "", line: str | None = None) -> None:
        """Move by ``n``; ``line``: a line that stays (:meth:`line`) and stands for this advance's own line."""
        before, self.done = self.done, self.done + n
        if line is not None:
            self.line(line)
        if self.mode == "bars":
            self._bar.update(self._task, advance=n, note=note)
        elif self.mode == "lines" and line is None and (
                self.total <= 10 or before * 10 // self.total != self.done * 10 // self.total):
            self.progress(f"    {self.what}: {self.done:,}/{self.total:,} {self.unit}" + (f" ({note})" if note else ""))

    def line(self, text: str) -> None:
        """A line that stays (above the bar on a terminal); printed in every mode."""
        if self.mode == "bars":
            self._bar.console.print(f"    {text}", highlight=False)
        else:
            self.progress(f"    {text}")


class StepTimer:
    """Prints ``[n] what ...`` before a step and its wall time after; ``seconds`` keeps every step's time
    (logged to MLflow as ``step_seconds_<name>``). ``mode``: how the long steps show their progress
    (:class:`Tracker`); ``off`` also spares the :func:`relay` actors."""

    def __init__(self, progress: Callable[[str], None], mode: Mode = "off"):
        self.progress, self.mode = progress, mode
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, what: str):
        self.progress(f"[{len(self.seconds) + 1}] {what} ...")
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        self.progress(f"    done in {self.seconds[name]:.1f}s")

    def tracker(self, what: str, total: int, unit: str) -> Tracker:
        return Tracker(self.progress, what, total, unit, self.mode)


@contextmanager
def relay(handle: Callable[[Any], None] | None, poll_s: float = 0.2) -> Iterator[Any]:
    """A Ray queue (a zero-CPU actor) whose items, put by workers (a Train callback, a Ray Data actor), reach
    ``handle`` on the driver as they arrive; yields the queue (None, and no actor, when ``handle`` is None).
    Items still queued at exit are handled before it returns; a failing ``handle`` never fails the work."""
    if handle is None:
        yield None
        return
    import ray
    from ray.util.queue import Queue

    queue = Queue(actor_options={"num_cpus": 0})
    stop = threading.Event()

    def drain() -> None:
        for item in queue.get_nowait_batch(queue.qsize()):
            try:
                handle(item)
            except Exception:  # progress output must not break the run  # noqa: BLE001
                pass

    def loop() -> None:
        while not stop.wait(poll_s):
            try:
                drain()
            except ray.exceptions.RayError:  # the queue actor is gone: no more progress, the work goes on
                return

    thread = threading.Thread(target=loop, name="mixrec-progress", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        stop.set()
        thread.join()
        try:
            drain()
        except ray.exceptions.RayError:  # never hide the block's own outcome behind the queue's
            pass
        finally:
            ray.kill(queue.actor)
