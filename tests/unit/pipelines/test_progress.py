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


def test_few_units_print_every_unit_and_lines_stay():
    out = []
    with StepTimer(out.append, "lines").tracker("training", 3, "epochs") as t:
        for epoch in range(3):
            t.line(f"epoch {epoch + 1}/3")
            t.advance()
    assert out == ["    epoch 1/3", "    training: 1/3 epochs", "    epoch 2/3", "    training: 2/3 epochs",
                   "    epoch 3/3", "    training: 3/3 epochs"]


def test_off_prints_nothing():
    out = []
    with StepTimer(out.append).tracker("validation", 1000, "rows") as t:
        t.advance(1000)
        t.line("epoch 1/1")
    assert out == []


def test_bars_mode_keeps_epoch_lines_on_the_console():
    buffer = io.StringIO()
    with Tracker(print, "training", 2, "epochs", "bars", console=Console(file=buffer, width=100)) as t:
        t.line("epoch 1/2: train loss 0.5")
        t.advance(1)
    assert "epoch 1/2: train loss 0.5" in buffer.getvalue() and t.done == 1
