"""range-test --seeds N progress: bars on a terminal, one plain line per seed otherwise."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from clrctl.track import progress as progress_module
from clrctl.track.progress import SeedProgress


@pytest.mark.parametrize("flags", [["-q"], []])  # captured stdout is not a terminal: plain lines either way
def test_range_test_seeds_print_one_plain_line_per_seed(cli, tiny_config, tmp_path, capsys, flags):
    config = tiny_config("tiny-range-test", range_test={"steps": 30, "eval_every": 5})
    assert cli("range-test", config, "--seeds", "0,1", "--run-dir", tmp_path / "rt", *flags) in (0, 1)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("seed ")]
    assert len(lines) == 2
    assert re.match(r"seed 0 \(1/2\): 30/30 steps, lr [\d.e-]+  loss [\d.e-]+  val_acc [\d.]+, [\d.]+ s$", lines[0])
    assert lines[1].startswith("seed 1 (2/2): 30/30 steps")
    assert "━━━━━━━━━━ " not in out.split("suggestion")[0]  # no bar drawn into the log before the table


def test_on_a_terminal_an_overall_bar_counts_the_seeds(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(progress_module, "console", Console(file=buffer, force_terminal=True, width=120))
    shown = SeedProgress([3, 4], quiet=False)
    assert not shown.plain
    for seed in (3, 4):
        reporter = shown.reporter(seed)
        reporter.start(10, 0)
        for step in range(1, 11):
            reporter.advance(step, 0.01 * step)
        reporter.metrics(10, 0.5, 0.9)
        reporter.close()
    tasks = {t.description: t for t in shown.progress.tasks}
    assert tasks["seeds"].completed == 2 and tasks["seeds"].total == 2
    assert tasks["seed 3"].completed == tasks["seed 4"].completed == 10
    text = buffer.getvalue()
    assert "seeds" in text and "val_acc 0.9000" in text and "(1/2)" not in text  # bars, not plain lines
