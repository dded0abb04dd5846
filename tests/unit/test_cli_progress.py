"""The progress bar that ``nnkgeo analyze``, ``study`` and a waited-on job draw."""

from __future__ import annotations

import io
import re

from nnkgeo.client.progress import BAR_WIDTH, ProgressLine


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_stage_or_ten_percent() -> None:
    log = io.StringIO()

    with ProgressLine(log) as progress:
        for stage, fraction in [("knn", 0.0), ("knn", 0.05), ("knn", 0.12), ("solve", 0.12)]:
            progress(stage, fraction)

    lines = log.getvalue().splitlines()
    assert [line.split("] ")[1].split(" (")[0] for line in lines] == [
        "  0% knn",
        " 12% knn",
        " 12% solve",
    ]
    assert re.fullmatch(r"\[#{2}\.{22}\]  12% solve \(\d+\.\d s\)", lines[-1]), lines[-1]


def test_a_terminal_line_is_redrawn_in_place_and_ended_on_close() -> None:
    terminal = _Terminal()

    with ProgressLine(terminal) as progress:
        progress("solve", 0.5)
        progress("solve", 0.505)  # the same percentage: nothing redrawn
        progress("solve", 0.51)

    drawn = terminal.getvalue()
    assert drawn.count("\r\x1b[2K") == 2
    assert " 51% solve" in drawn and drawn.endswith("\n")


def test_a_job_line_starts_with_its_id_and_status() -> None:
    log = io.StringIO()

    progress = ProgressLine(log, label="job_abc")
    progress.update("queued", 0.0, status="queued")
    progress.update("digits:metrics", 1.7, status="succeeded")
    progress.close()

    first, last = log.getvalue().splitlines()
    assert first.startswith("job_abc queued    [" + "." * BAR_WIDTH + "]   0% queued (")
    assert last.startswith("job_abc succeeded [" + "#" * BAR_WIDTH + "] 100% digits:metrics (")


def test_a_disabled_line_draws_nothing() -> None:
    terminal = _Terminal()

    with ProgressLine(terminal, enabled=False) as progress:
        progress("solve", 0.5)

    assert terminal.getvalue() == ""
