"""How the page writes text: escaped, numbers formatted, long names shortened.

Every user-provided string (set names, labels, ids, warnings, extra facts) goes through
:func:`escaped` before it reaches the page. There are no font metrics without a
browser, so widths are estimated from the character count.
"""

from __future__ import annotations

import math
from html import escape

__all__ = ["coord", "escaped", "fmt", "shorten", "shorten_middle", "text_width"]


def escaped(value: object) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return escape(str(value), quote=True)


def fmt(value: float | int | str | None, digits: int = 4) -> str:
    """A number as the page prints it: ints with thousands separators, floats to
    ``digits`` significant digits, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def shorten(text: str, limit: int) -> str:
    """The text cut to at most ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def text_width(text: str, size: float = 11.0) -> float:
    """A rough rendered width in px (no font metrics without a browser)."""
    return len(text) * size * 0.56


def coord(value: float) -> str:
    """A coordinate for SVG: short, no exponent."""
    return f"{value:.1f}".rstrip("0").rstrip(".") if value == value else "0"


def shorten_middle(text: str, limit: int) -> str:
    """Shorten from the middle: set names differ at their ends (layers.3.output)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 3
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]
