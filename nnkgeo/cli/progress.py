"""One progress bar on a text stream, for the engine's stages and a service job's alike.

``nnkgeo analyze`` and ``nnkgeo study`` draw the engine's ``progress(stage, fraction)``
with it; a job waited on through the client draws the same line with the job's id and
status in front. The module imports only the standard library: the client can use it.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

__all__ = ["BAR_WIDTH", "ProgressLine", "is_terminal"]

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
        line = (
            f"{prefix}[{bar}] {int(fraction * 100):3d}% {stage} "
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
