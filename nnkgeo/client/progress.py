"""The progress bar: ``wait`` draws it while a job runs, ``nnkgeo analyze`` and
``nnkgeo study`` while the engine runs.

rich draws a job's bar where installed and the stream is a terminal; elsewhere (logs,
CI, notebooks capturing stderr) the plain text `ProgressLine` writes a line per change.
The local commands draw the same `ProgressLine` with the engine's ``progress(stage,
fraction)``.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Protocol, TextIO, TypeAlias

from api_schemas import JobOut

ProgressOption: TypeAlias = "bool | TextIO"
"""``True``: a bar on stderr; a text stream: a bar there; ``False``: none."""


BAR_WIDTH = 24


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (a captured stream may lack isatty)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressLine:
    """A text bar: redrawn in place on a terminal; in logs, a line per stage or 10 %.

    Parameters
    ----------
    stream : text stream, optional
        Where to draw (default: ``sys.stderr`` when the line is made).
    label : str, optional
        Printed first on every line (a job's id).
    enabled : bool, default True
        False draws nothing (``--quiet``), so that callers need no branch.

    Examples
    --------
    >>> import io
    >>> stream = io.StringIO()
    >>> with ProgressLine(stream) as progress:
    ...     progress("solve", 0.5)
    >>> stream.getvalue().startswith("[############............]  50% solve")
    True
    """

    def __init__(
        self, stream: TextIO | None = None, *, label: str = "", enabled: bool = True
    ) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._label = label
        self._enabled = enabled
        self._interactive = is_terminal(self._stream)
        self._started = time.monotonic()
        self._last: tuple[str | None, str, int] | None = None
        self._drawn = False

    def __call__(self, stage: str, fraction: float) -> None:
        """The engine's progress callback: ``progress(stage, fraction)``."""
        self.update(stage, fraction)

    def update(self, stage: str, fraction: float, *, status: str | None = None) -> None:
        """Draw ``stage`` at ``fraction`` (clipped to [0, 1]), after ``status`` if given.

        Nothing is drawn when neither the status, the stage nor the shown percentage
        changed: a terminal's percentage moves by 1 %, a log's by 10 %.
        """
        if not self._enabled:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        step = int(fraction * 100) if self._interactive else int(fraction * 10) * 10
        key = (status, stage, step)
        if key == self._last:
            return
        self._last = key
        filled = int(fraction * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        prefix = f"{self._label} " if self._label else ""
        if status is not None:
            prefix += f"{status:<9} "
        stage_text = f" {stage}" if stage else ""
        line = (
            f"{prefix}[{bar}] {int(fraction * 100):3d}%{stage_text} "
            f"({time.monotonic() - self._started:.1f} s)"
        )
        if self._interactive:
            # Carriage return, then erase the line: a shorter stage leaves no tail behind.
            self._stream.write("\r\x1b[2K" + line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the line drawn in place on a terminal, so that what follows starts afresh."""
        if self._interactive and self._drawn:
            self._stream.write("\n")
            self._stream.flush()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class ProgressDisplay(Protocol):
    """Shows a job's state each time it is polled."""

    def update(self, job: JobOut) -> None: ...

    def close(self) -> None: ...


class _NoProgress:
    def update(self, job: JobOut) -> None:
        pass

    def close(self) -> None:
        pass


def job_stage(job: JobOut) -> str:
    """The job's stage, or nothing where it only repeats the status (``queued``, ``succeeded``)."""
    stage = job.progress.stage
    return "" if stage == job.status.value else stage


class _LineProgress:
    """A job's `ProgressLine`: its id and status in front of the stage."""

    def __init__(self, stream: TextIO, job_id: str) -> None:
        self._line = ProgressLine(stream, label=job_id)

    def update(self, job: JobOut) -> None:
        self._line.update(job_stage(job), job.progress.fraction, status=job.status.value)

    def close(self) -> None:
        self._line.close()


class _RichProgress:
    """rich's live bar, on terminals where rich is installed."""

    def __init__(self, stream: TextIO, job_id: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.fields[job_id]}"),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=Console(file=stream),
        )
        self._task = self._progress.add_task("queued", total=1.0, job_id=job_id)
        self._progress.start()

    def update(self, job: JobOut) -> None:
        self._progress.update(
            self._task,
            completed=job.progress.fraction,
            description=f"{job.status.value} {job_stage(job)}".rstrip(),
        )

    def close(self) -> None:
        self._progress.stop()


def progress_display(progress: ProgressOption, job_id: str) -> ProgressDisplay:
    """No display, or a bar on stderr (``True``) or the given stream."""
    if progress is False:
        return _NoProgress()
    stream: TextIO = sys.stderr if progress is True else progress
    if is_terminal(stream):
        try:
            return _RichProgress(stream, job_id)
        except ImportError:
            pass
    return _LineProgress(stream, job_id)
