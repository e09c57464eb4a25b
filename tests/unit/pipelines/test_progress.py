"""Progress inside a long step: lines at every tenth in a log, one line per epoch, nothing when off; the rich bar
on a terminal keeps the per-epoch lines."""

from __future__ import annotations

import io

from rich.console import Console

from mixrec.pipelines.progress import StepTimer, Tracker


def test_lines_mode_prints_each_tenth_once():
    out = []
    with Tracker(out.append, "retrieval", 40, "chunks", "lines") as t:
        for _ in range(40):
            t.advance(1, "500 rows")
    assert len(out) == 10 and out[0] == "    retrieval: 4/40 chunks (500 rows)" and out[-1].startswith("    retrieval: 40/40")


def test_few_units_print_every_unit_and_an_advance_line_stands_for_its_own():
    out = []
    with StepTimer(out.append, "lines").tracker("training", 3, "epochs") as t:
        t.advance()
        for epoch in (2, 3):
            t.advance(1, line=f"epoch {epoch}/3")
    assert out == ["    training: 1/3 epochs", "    epoch 2/3", "    epoch 3/3"]


def test_off_prints_no_progress_only_the_lines():
    out = []
    with StepTimer(out.append).tracker("validation", 1000, "rows") as t:
        t.advance(1000)
        t.line("point 1: finished")
    assert out == ["    point 1: finished"]


def test_bars_mode_keeps_epoch_lines_on_the_console():
    buffer = io.StringIO()
    with Tracker(print, "training", 2, "epochs", "bars", console=Console(file=buffer, width=100)) as t:
        t.line("epoch 1/2: train loss 0.5")
        t.advance(1)
    assert "epoch 1/2: train loss 0.5" in buffer.getvalue() and t.done == 1
