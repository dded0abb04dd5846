"""The parts every SVG chart of the page is built from.

Element ids, round ticks, a linear scale, the legend, the y axis and axis titles, the
category axis of bar and line charts, and the accessible ``<svg role="img">`` wrapper
(labelled by its own ``<title>`` and ``<desc>``). The charts themselves are in
:mod:`htmlreport.charts`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from htmlreport.text import coord, escaped, shorten, shorten_middle, text_width

__all__ = [
    "CategoryAxis",
    "ElementIds",
    "Legend",
    "LinearScale",
    "accessible_svg",
    "axis_titles",
    "category_axis",
    "legend_symbol",
    "nice_ticks",
    "tick_label",
    "y_axis",
]


@dataclass
class ElementIds:
    """Unique element ids within one page (for aria-labelledby)."""

    count: int = 0

    def next(self, prefix: str = "fig") -> str:
        self.count += 1
        return f"{prefix}{self.count}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2, 2.5 or 5 times a power of 10."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = magnitude
    for multiple in (1, 2, 2.5, 5, 10):
        step = multiple * magnitude
        if step >= raw * 0.999:
            break
    start = math.floor(low / step + 1e-9) * step
    ticks = []
    value = start
    while value < high + step * 0.5 and len(ticks) < 50:
        ticks.append(round(value, 12))
        if value >= high - 1e-12 * step:
            break
        value += step
    if ticks[-1] < high - 1e-9 * step:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def tick_label(value: float) -> str:
    """A tick value as an axis prints it: six significant digits, large ones grouped."""
    if value == 0:
        return "0"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.6g}"


@dataclass
class LinearScale:
    """A linear scale from a data domain onto a pixel range."""

    d0: float
    d1: float
    r0: float
    r1: float

    def __call__(self, value: float) -> float:
        span = self.d1 - self.d0
        t = 0.0 if span == 0 else (value - self.d0) / span
        return self.r0 + t * (self.r1 - self.r0)


@dataclass
class Legend:
    """Legend entries: (name, colour, kind) with kind "box", "line:<dash>", "dot" or "ring"."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)

    def row_height(self, width: float) -> int:
        """Height of the legend laid out in rows within ``width`` px."""
        return 0 if not self.entries else 20 * len(self._rows(width))

    def _rows(self, width: float) -> list[list[tuple[str, str, str]]]:
        rows: list[list[tuple[str, str, str]]] = [[]]
        used = 0.0
        for entry in self.entries:
            needed = 24 + text_width(shorten(entry[0], 28), 12) + 12
            if rows[-1] and used + needed > width:
                rows.append([])
                used = 0.0
            rows[-1].append(entry)
            used += needed
        return rows

    def render(self, x: float, y: float, width: float) -> str:
        parts = ['<g class="legend">']
        for row_index, row in enumerate(self._rows(width)):
            cx = x
            cy = y + row_index * 20
            for name, colour, kind in row:
                parts.append(legend_symbol(kind, colour, cx, cy))
                label = shorten(name, 28)
                parts.append(
                    f'<text x="{coord(cx + 22)}" y="{coord(cy + 4)}">{escaped(label)}'
                    + (f"<title>{escaped(name)}</title>" if label != name else "")
                    + "</text>"
                )
                cx += 24 + text_width(label, 12) + 12
        parts.append("</g>")
        return "".join(parts)


def legend_symbol(kind: str, colour: str, x: float, y: float) -> str:
    """The symbol of one legend entry at (x, y): ``kind`` as in :class:`Legend`."""
    if kind.startswith("line"):
        dash = kind.partition(":")[2]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        return (
            f'<line x1="{coord(x)}" y1="{coord(y)}" x2="{coord(x + 18)}" y2="{coord(y)}" '
            f'stroke="{colour}" stroke-width="2.5"{dash_attr}/>'
            f'<circle cx="{coord(x + 9)}" cy="{coord(y)}" r="3" fill="{colour}"/>'
        )
    if kind == "dot":
        return f'<circle cx="{coord(x + 9)}" cy="{coord(y)}" r="4.5" fill="{colour}"/>'
    if kind == "ring":
        return (
            f'<circle cx="{coord(x + 9)}" cy="{coord(y)}" r="6" fill="none" '
            f'stroke="{colour}" stroke-width="1.6"/>'
        )
    return (
        f'<rect x="{coord(x + 2)}" y="{coord(y - 6)}" width="14" height="12" rx="2" '
        f'fill="{colour}"/>'
    )


def accessible_svg(
    ids: ElementIds, width: float, height: float, title: str, desc: str, body: str
) -> str:
    """An accessible SVG: role img, labelled by its own <title> and <desc>."""
    ref = ids.next()
    return (
        f'<svg viewBox="0 0 {coord(width)} {coord(height)}" width="{coord(width)}" '
        f'height="{coord(height)}" role="img" aria-labelledby="{ref}-t {ref}-d">'
        f'<title id="{ref}-t">{escaped(title)}</title><desc id="{ref}-d">{escaped(desc)}</desc>'
        f"{body}</svg>"
    )


def y_axis(scale: LinearScale, ticks: Sequence[float], left: float, right: float) -> str:
    """The y axis: a labelled grid line across the plot from ``left`` to ``right`` per tick."""
    parts = []
    for tick in ticks:
        y = scale(tick)
        parts.append(
            f'<g class="tick"><line x1="{coord(left)}" x2="{coord(right)}" y1="{coord(y)}" '
            f'y2="{coord(y)}"/><text x="{coord(left - 6)}" y="{coord(y + 4)}" '
            f'text-anchor="end">{escaped(tick_label(tick))}</text></g>'
        )
    return "".join(parts)


def axis_titles(
    x_title: str, y_title: str, *, left: float, right: float, top: float, bottom: float, x_y: float
) -> str:
    """The axis titles: the x title centred below the plot at ``x_y``, the y title
    rotated along its left edge."""
    mid_x = (left + right) / 2
    mid_y = (top + bottom) / 2
    return (
        f'<text class="axis-title" x="{coord(mid_x)}" y="{coord(x_y)}" '
        f'text-anchor="middle">{escaped(x_title)}</text>'
        f'<text class="axis-title" transform="translate(14 {coord(mid_y)}) rotate(-90)" '
        f'text-anchor="middle">{escaped(y_title)}</text>'
    )


_ROTATION = 45
_TICK_CHARS = 18


@dataclass(frozen=True)
class CategoryAxis:
    """The x axis of a band scale: where the plot starts and how the labels are set."""

    labels: Sequence[str]
    shown: list[str]
    left: float
    band: float
    rotate: bool
    every: int
    room: float

    def centre(self, index: int) -> float:
        """The x coordinate of the middle of category ``index``'s band."""
        return self.left + (index + 0.5) * self.band

    def render(self, y: float) -> str:
        """The tick labels below ``y``; shortened ones show their full text on hover."""
        parts = []
        for index, (label, full) in enumerate(zip(self.shown, self.labels, strict=True)):
            if index % self.every:
                continue
            x = self.centre(index)
            hover = f"<title>{escaped(full)}</title>" if label != full else ""
            if self.rotate:
                parts.append(
                    f'<g class="tick"><text transform="translate({coord(x + 4)} {coord(y + 12)})'
                    f' rotate(-{_ROTATION})" text-anchor="end">{escaped(label)}{hover}</text></g>'
                )
            else:
                parts.append(
                    f'<g class="tick"><text x="{coord(x)}" y="{coord(y + 14)}" '
                    f'text-anchor="middle">{escaped(label)}{hover}</text></g>'
                )
        return "".join(parts)


def category_axis(labels: Sequence[str], left: float, right: float) -> CategoryAxis:
    """Lay out category labels: thinned when crowded, rotated when wider than a band.

    A rotated first label may need a wider left margin, which the plot then starts at.
    """
    count = max(len(labels), 1)
    shown = [shorten_middle(label, _TICK_CHARS) for label in labels]
    widths = [text_width(label) for label in shown]
    widest = max(widths, default=0.0)
    band = (right - left) / count
    rotate = widest > band * 0.95
    slant = math.cos(math.radians(_ROTATION))
    if rotate:
        left = max(left, widths[0] * slant - band / 2 + 2)
        band = (right - left) / count
        every = max(1, math.ceil(19 / band))
        room = widest * slant + 20
    else:
        every = max(1, math.ceil((widest + 6) / band)) if widest else 1
        room = 20.0
    return CategoryAxis(labels, shown, left, band, rotate, every, room)
