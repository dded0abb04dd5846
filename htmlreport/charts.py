"""The page's charts as inline SVG: grouped bars, lines over the sets, a 2-D scatter map;
and the frames the sections put them and their headline numbers in (figures, cards).

Each chart is one accessible ``<svg role="img">`` with a ``<title>`` and a ``<desc>``;
hovering a bar or point shows its value (an SVG ``<title>``, no JavaScript).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from htmlreport.svg import (
    ElementIds,
    Legend,
    LinearScale,
    accessible_svg,
    axis_titles,
    category_axis,
    legend_symbol,
    nice_ticks,
    tick_label,
    y_axis,
)
from htmlreport.text import coord, escaped, fmt, shorten

__all__ = [
    "LINE_COLOURS",
    "LINE_DASHES",
    "MAX_LEGEND_CLASSES",
    "bar_chart",
    "captioned_figure",
    "card",
    "line_chart",
    "scatter_map",
]

MAX_LEGEND_CLASSES = 20
"""The map's legend names at most this many labels."""

LINE_COLOURS = ("#2f6ea8", "#e07b24", "#3a9a5b", "#c0392b", "#7b5ea7", "#8c6d31")
LINE_DASHES = ("", "6 3", "2 3", "8 3 2 3", "4 4", "1 2")
"""Series of a line chart differ by dash pattern as well as colour."""


def bar_chart(
    ids: ElementIds,
    *,
    title: str,
    desc: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None], str]],
    x_title: str,
    y_title: str,
    y_max: float | None = None,
    marker: tuple[float, str] | None = None,
    width: float = 560,
    height: float = 300,
) -> str:
    """Vertical bars, grouped when there are several series.

    ``series`` holds (name, one value per category, colour); None draws no bar.
    ``marker`` = (position in category units, text) draws a dashed vertical line, such
    as the mean of a histogram. A legend is drawn when there is more than one series.
    """
    axis = category_axis(categories, 58.0, width - 14)
    left, right, band = axis.left, width - 14, axis.band
    legend = Legend(
        [(name, colour, "box") for name, _, colour in series] if len(series) > 1 else []
    )
    top = 12.0 + legend.row_height(right - left) + (14 if marker else 0)
    height += axis.room - 20  # rotated labels get room, the plot keeps its height
    bottom = height - axis.room - 26
    values = [v for _, vals, _ in series for v in vals if v is not None and math.isfinite(v)]
    high = max(values, default=0.0)
    if y_max is not None:
        high = max(high, y_max)
    ticks = nice_ticks(0.0, high if high > 0 else 1.0)
    scale = LinearScale(0.0, ticks[-1], bottom, top)
    body = [y_axis(scale, ticks, left, right)]
    inner = band * (0.8 if len(series) > 1 else 0.86)
    bar = inner / max(len(series), 1)
    for index, category in enumerate(categories):
        x0 = left + index * band + (band - inner) / 2
        for position, (name, vals, colour) in enumerate(series):
            value = vals[index]
            if value is None or not math.isfinite(value):
                continue
            y = scale(value)
            label = (
                f"{category}: {name} = {fmt(value)}"
                if len(series) > 1
                else (f"{category}: {fmt(value)}")
            )
            body.append(
                f'<rect x="{coord(x0 + position * bar)}" y="{coord(min(y, bottom))}" '
                f'width="{coord(max(bar - (1 if bar > 3 else 0), 0.6))}" '
                f'height="{coord(max(bottom - y, 0))}" fill="{colour}">'
                f"<title>{escaped(label)}</title></rect>"
            )
    body.append(
        f'<line class="axis-line" x1="{coord(left)}" x2="{coord(right)}" y1="{coord(bottom)}" '
        f'y2="{coord(bottom)}"/>'
    )
    body.append(axis.render(bottom))
    if marker is not None:
        position, text = marker
        x = left + (position + 0.5) * band
        body.append(
            f'<line x1="{coord(x)}" x2="{coord(x)}" y1="{coord(top - 4)}" y2="{coord(bottom)}" '
            f'stroke="#c0392b" stroke-width="1.5" stroke-dasharray="5 3"/>'
            f'<text x="{coord(x + 4)}" y="{coord(top - 6)}" font-size="11" '
            f'fill="#c0392b">{escaped(text)}</text>'
        )
    body.append(
        axis_titles(
            x_title, y_title, left=left, right=right, top=top, bottom=bottom, x_y=height - 8
        )
    )
    body.append(legend.render(left, 14, right - left))
    return accessible_svg(ids, width, height, title, desc, "".join(body))


def line_chart(
    ids: ElementIds,
    *,
    title: str,
    desc: str,
    x_labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    x_title: str,
    y_title: str,
    from_zero: bool = True,
    styles: Sequence[tuple[str, str]] | None = None,
    width: float = 560,
    height: float = 300,
) -> str:
    """Lines over categories in order (the sets), one per series; None leaves a gap.

    ``styles`` gives each series its (colour, dash pattern); by default they cycle
    through :data:`LINE_COLOURS` and :data:`LINE_DASHES`.
    """
    if styles is None:
        styles = [
            (LINE_COLOURS[i % len(LINE_COLOURS)], LINE_DASHES[i % len(LINE_DASHES)])
            for i in range(len(series))
        ]
    axis = category_axis(x_labels, 58.0, width - 18)
    left, right = axis.left, width - 18
    legend = Legend(
        [
            (name, colour, f"line:{dash}")
            for (name, _), (colour, dash) in zip(series, styles, strict=True)
        ]
        if len(series) > 1
        else []
    )
    top = 14.0 + legend.row_height(right - left)
    height += axis.room - 20  # rotated labels get room, the plot keeps its height
    bottom = height - axis.room - 26
    values = [v for _, vals in series for v in vals if v is not None and math.isfinite(v)]
    low = min(values, default=0.0)
    high = max(values, default=1.0)
    if from_zero:
        low = min(low, 0.0)
    ticks = nice_ticks(low, high if high > low else low + 1.0)
    scale = LinearScale(ticks[0], ticks[-1], bottom, top)
    body = [y_axis(scale, ticks, left, right)]
    body.append(
        f'<line class="axis-line" x1="{coord(left)}" x2="{coord(right)}" y1="{coord(bottom)}" '
        f'y2="{coord(bottom)}"/>'
    )

    centre = axis.centre
    for index, (name, vals) in enumerate(series):
        colour, dash = styles[index]
        path: list[str] = []
        pen_down = False
        points = []
        for i, value in enumerate(vals):
            if value is None or not math.isfinite(value):
                pen_down = False
                continue
            x, y = centre(i), scale(value)
            path.append(f"{'L' if pen_down else 'M'}{coord(x)} {coord(y)}")
            pen_down = True
            points.append(
                f'<circle cx="{coord(x)}" cy="{coord(y)}" r="3.5" fill="{colour}">'
                f"<title>{escaped(f'{x_labels[i]}: {name} = {fmt(value)}')}</title></circle>"
            )
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        if path:
            body.append(
                f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" '
                f'stroke-width="2.2"{dash_attr}/>'
            )
        body.extend(points)
    body.append(axis.render(bottom))
    body.append(
        axis_titles(
            x_title, y_title, left=left, right=right, top=top, bottom=bottom, x_y=height - 8
        )
    )
    body.append(legend.render(left, 14, right - left))
    return accessible_svg(ids, width, height, title, desc, "".join(body))


def scatter_map(
    ids: ElementIds,
    *,
    title: str,
    desc: str,
    xy: np.ndarray,
    groups: Sequence[str],
    colours: Mapping[str, str],
    ringed: np.ndarray,
    ring_titles: Mapping[int, str],
    x_title: str,
    y_title: str,
    width: float = 560,
    height: float = 440,
) -> str:
    """Points coloured by group, the ``ringed`` ones (a boolean mask) circled in black.

    ``colours`` maps each group to its colour, in legend order; ``ring_titles`` maps a
    row of ``xy`` to its hover text. The legend lists the groups present (at most
    :data:`MAX_LEGEND_CLASSES`) and the ring.
    """
    left, right, top = 58.0, width - 150, 14.0
    bottom = height - 46
    finite = np.isfinite(xy).all(axis=1)
    shown = xy[finite] if finite.any() else np.zeros((1, 2))
    x_ticks = nice_ticks(float(shown[:, 0].min()), float(shown[:, 0].max()), 7)
    y_ticks = nice_ticks(float(shown[:, 1].min()), float(shown[:, 1].max()), 7)
    sx = LinearScale(x_ticks[0], x_ticks[-1], left, right)
    sy = LinearScale(y_ticks[0], y_ticks[-1], bottom, top)
    body = [y_axis(sy, y_ticks, left, right)]
    for tick in x_ticks:
        x = sx(tick)
        body.append(
            f'<g class="tick"><line x1="{coord(x)}" x2="{coord(x)}" y1="{coord(top)}" '
            f'y2="{coord(bottom)}"/><text x="{coord(x)}" y="{coord(bottom + 14)}" '
            f'text-anchor="middle">{escaped(tick_label(tick))}</text></g>'
        )
    body.append(
        f'<rect x="{coord(left)}" y="{coord(top)}" width="{coord(right - left)}" '
        f'height="{coord(bottom - top)}" fill="none" class="axis-line" stroke="#8a939c"/>'
    )
    by_colour: dict[str, list[str]] = {}
    for row in np.flatnonzero(finite & ~ringed):
        colour = colours[groups[row]]
        by_colour.setdefault(colour, []).append(
            f'<circle cx="{coord(sx(xy[row, 0]))}" cy="{coord(sy(xy[row, 1]))}" r="2.4"/>'
        )
    for colour, circles in by_colour.items():
        body.append(f'<g fill="{colour}" fill-opacity="0.75">{"".join(circles)}</g>')
    for row in np.flatnonzero(finite & ringed):
        x, y = coord(sx(xy[row, 0])), coord(sy(xy[row, 1]))
        body.append(
            f'<g><circle cx="{x}" cy="{y}" r="2.8" fill="{colours[groups[row]]}"/>'
            f'<circle cx="{x}" cy="{y}" r="6" fill="none" stroke="#111" stroke-width="1.5"/>'
            f"<title>{escaped(ring_titles.get(int(row), 'suspect'))}</title></g>"
        )
    body.append(
        axis_titles(
            x_title, y_title, left=left, right=right, top=top, bottom=bottom, x_y=height - 10
        )
    )
    present = set(groups)
    names = [name for name in colours if name in present]
    legend = ['<g class="legend">']
    y = top + 8
    for name in names[:MAX_LEGEND_CLASSES]:
        label = shorten(name, 16)
        legend.append(legend_symbol("dot", colours[name], right + 14, y))
        legend.append(
            f'<text x="{coord(right + 36)}" y="{coord(y + 4)}">{escaped(label)}'
            + (f"<title>{escaped(name)}</title>" if label != name else "")
            + "</text>"
        )
        y += 18
    if len(names) > MAX_LEGEND_CLASSES:
        legend.append(
            f'<text x="{coord(right + 14)}" y="{coord(y + 4)}">'
            f"+{len(names) - MAX_LEGEND_CLASSES} more labels</text>"
        )
        y += 18
    if ringed.any():
        y += 6
        legend.append(legend_symbol("ring", "#111", right + 14, y))
        legend.append(f'<text x="{coord(right + 36)}" y="{coord(y + 4)}">suspect</text>')
    legend.append("</g>")
    body.append("".join(legend))
    return accessible_svg(ids, width, height, title, desc, "".join(body))


def card(label: str, value: str, title: str = "") -> str:
    """One headline number: its value over its label, ``title`` as a tooltip when given."""
    tooltip = f' title="{escaped(title)}"' if title else ""
    return (
        f'<div class="card"{tooltip}><div class="value">{escaped(value)}</div>'
        f'<div class="label">{escaped(label)}</div></div>'
    )


def captioned_figure(caption: str, svg: str, note: str = "") -> str:
    """A chart in a ``<figure>`` with its caption and, when given, a note below it."""
    note_html = f'<p class="note">{escaped(note)}</p>' if note else ""
    return f"<figure><figcaption>{escaped(caption)}</figcaption>{svg}{note_html}</figure>"
