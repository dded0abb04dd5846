"""The report as one self-contained HTML page, its plots drawn as inline SVG.

:func:`render_report_html` turns a :class:`api_schemas.Report` into a single HTML file
that loads nothing from anywhere: no script, no font, no image, no stylesheet link. The
page carries its own Content-Security-Policy (``default-src 'none'``), so a saved copy
stays offline too. Every plot is an ``<svg role="img">`` with a ``<title>`` and a
``<desc>`` drawn by the small helpers below; hovering a bar or point shows its value
(an SVG ``<title>``, no JavaScript).

What the page shows (DESIGN section 2 defines every metric):

- the headline numbers of every set side by side, and the four leave-one-out errors of
  every set as grouped bars;
- for several sets, the comparison as line charts over the sets in the order given;
- per set: the NNK degree histogram, homogeneity and LOO errors per class, a 2-D map of
  the embeddings coloured by label with the suspects ringed, and the suspects table.

The map (PCA of a seeded sample; a local report uses UMAP when ``umap`` is installed) is made by
:mod:`htmlreport.embedding_map`: given ready-made (the service's worker stores one per set), or
computed here from the embeddings when they are given (``nnkgeo analyze --html``).

Every user-provided string (set names, labels, ids, warnings, extra facts) is escaped.
Only numpy and the report models are needed, so the API process can render pages
without the analysis stack, and without reading any embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

import numpy as np

from api_schemas import ClassMetrics, Report, SetReport
from htmlreport.embedding_map import MAP_MAX_POINTS, EmbeddingMap, compute_embedding_map

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "MAP_MAX_POINTS",
    "NO_EMBEDDINGS_NOTE",
    "EmbeddingMap",
    "render_report_html",
]

CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
"""What the page may load: nothing but its own inline styles."""

MAX_CLASSES_SHOWN = 30
"""Per-class charts show at most this many classes: those with the highest LOO error."""

MAX_LEGEND_CLASSES = 20
"""The map's legend names at most this many labels."""

MAX_SUSPECT_ROWS = 500
"""The suspects table shows at most this many rows (the JSON report has them all)."""

LOO_SERIES: tuple[tuple[str, str, str], ...] = (
    ("nnk_weighted", "NNK weighted", "#2f6ea8"),
    ("nnk_unweighted", "NNK unweighted", "#8fbce6"),
    ("knn_weighted", "kNN weighted", "#e07b24"),
    ("knn_unweighted", "kNN majority", "#f6c28b"),
)
"""The four LOO errors: field, legend name, colour (NNK blues, kNN oranges)."""

LOO_LINE_STYLES = (("#2f6ea8", ""), ("#6a9fd4", "6 3"), ("#e07b24", ""), ("#eba061", "6 3"))
"""The LOO errors as lines: NNK blue, kNN orange; weighted solid, unweighted dashed."""

CLASS_COLOURS = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#79706e",
)
"""Label colours (Tableau 10); further labels get evenly spread hues."""

LINE_COLOURS = ("#2f6ea8", "#e07b24", "#3a9a5b", "#c0392b", "#7b5ea7", "#8c6d31")
LINE_DASHES = ("", "6 3", "2 3", "8 3 2 3", "4 4", "1 2")
"""Series of a line chart differ by dash pattern as well as colour."""

REGIME_TEXT = {
    "homogeneous": "homogeneous: NNK and its unweighted variant both interpolate the labels",
    "weighted": "weighted: NNK interpolates only with its weights",
    "not_interpolating": "not interpolating: NNK LOO error above 1 %",
}

_STYLE = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  margin: 0; color: #1f2328; background: #f6f7f9; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
header { margin-bottom: 8px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 2px solid #d8dce2; }
h3 { font-size: 15px; margin: 20px 0 8px; }
.meta { color: #59636e; margin: 2px 0; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; background: #eceef1;
  padding: 1px 4px; border-radius: 3px; }
nav { margin: 12px 0 0; }
nav a { color: #2f6ea8; margin-right: 14px; text-decoration: none; }
nav a:hover { text-decoration: underline; }
.card-row { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 12px; }
.card { background: #fff; border: 1px solid #d8dce2; border-radius: 8px; padding: 10px 14px;
  min-width: 150px; }
.card .value { font-size: 22px; font-weight: 600; }
.card .label { color: #59636e; font-size: 12px; }
.panel { background: #fff; border: 1px solid #d8dce2; border-radius: 8px; padding: 12px;
  overflow-x: auto; width: fit-content; max-width: 100%; }
th a { color: inherit; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(540px, 1fr)); gap: 16px;
  align-items: start; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.row > figure { flex: 1 1 560px; }
.grid > figure, .row > figure { margin: 0; background: #fff; border: 1px solid #d8dce2;
  border-radius: 8px; padding: 10px 12px; }
figcaption { font-weight: 600; margin: 0 0 4px; }
figure p.note { color: #59636e; font-size: 12px; margin: 4px 0 0; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font-family: inherit; fill: #1f2328; }
svg .tick text { font-size: 11px; fill: #59636e; }
svg .tick line, svg .grid-line { stroke: #e3e6ea; }
svg .axis-line { stroke: #8a939c; }
svg .axis-title { font-size: 12px; fill: #3d454d; }
svg .legend text { font-size: 12px; }
table { border-collapse: collapse; background: #fff; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e3e6ea; padding: 5px 12px; text-align: right; }
tbody th { white-space: nowrap; position: sticky; left: 0; background: #fff; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eef1f4; position: sticky; top: 0; }
tbody tr:hover, tbody tr:hover th { background: #f6f8fa; }
caption { text-align: left; font-weight: 600; padding: 0 0 6px; }
.scroll { max-height: 420px; overflow: auto; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600; }
.regime-homogeneous { background: #d8f0dd; color: #1d5f2e; }
.regime-weighted { background: #fdf0c8; color: #735300; }
.regime-not_interpolating { background: #fbdcd7; color: #8a2213; }
.warnings { background: #fff8e6; border: 1px solid #f0d48a; border-radius: 8px;
  padding: 8px 14px 8px 30px; }
dl.guide dt { font-weight: 600; margin-top: 8px; }
dl.guide dd { margin: 2px 0 0 18px; color: #3d454d; }
details summary { cursor: pointer; color: #2f6ea8; margin: 8px 0; }
footer { color: #59636e; font-size: 12px; margin-top: 36px; }
"""

_GUIDE: tuple[tuple[str, str], ...] = (
    (
        "NNK degree",
        "Number of NNK neighbours of each point, out of its k candidates: a proxy for the"
        " local intrinsic dimension.",
    ),
    (
        "LOO errors",
        "Leave-one-out label prediction from each point's neighbours (the point never its"
        " own candidate). NNK weighted uses the NNK weights; NNK unweighted a plain vote"
        " over the NNK neighbours; kNN weighted kernel weights over all k candidates; kNN"
        " majority a plain vote over all k. Soft NNK is the mean of 1 - p(true label).",
    ),
    (
        "Homogeneity",
        "Mean share of a point's NNK (or k) neighbours that carry its label. Pure patch"
        " fraction: share of points whose NNK neighbours all carry their label.",
    ),
    (
        "Cross-class edge fraction",
        "Weight of the symmetric graph's edges between different labels over all its"
        " weight (0 = perfectly smooth labels).",
    ),
    (
        "Reconstruction error",
        "How well each point is reconstructed from its NNK neighbours in the kernel space.",
    ),
    (
        "Intrinsic dimension",
        "Global estimates on the raw embeddings: TwoNN (Facco et al. 2017) and the"
        " Levina-Bickel MLE.",
    ),
    (
        "Regime",
        "homogeneous when both NNK LOO errors are at most 1 %; weighted when only the"
        " weighted one is; not interpolating otherwise.",
    ),
    (
        "Suspects",
        "Points whose NNK-weighted prediction disagrees with their label, ranked by"
        " 1 - p(label): candidates for label noise or ambiguous inputs.",
    ),
)


# --------------------------------------------------------------------------------------
# Formatting


def _e(value: object) -> str:
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


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text_width(text: str, size: float = 11.0) -> float:
    """A rough rendered width in px (no font metrics without a browser)."""
    return len(text) * size * 0.56


def _num(value: float) -> str:
    """A coordinate for SVG: short, no exponent."""
    return f"{value:.1f}".rstrip("0").rstrip(".") if value == value else "0"


def _class_colour(position: int) -> str:
    if position < len(CLASS_COLOURS):
        return CLASS_COLOURS[position]
    hue = (position * 137.508) % 360
    return f"hsl({hue:.0f},55%,50%)"


# --------------------------------------------------------------------------------------
# SVG helpers


@dataclass
class _Ids:
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


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.6g}"


@dataclass
class _Linear:
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
class _Legend:
    """Legend entries: (name, colour, kind) with kind "box", "line:<dash>", "dot" or "ring"."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)

    def row_height(self, width: float) -> int:
        """Height of the legend laid out in rows within ``width`` px."""
        return 0 if not self.entries else 20 * len(self._rows(width))

    def _rows(self, width: float) -> list[list[tuple[str, str, str]]]:
        rows: list[list[tuple[str, str, str]]] = [[]]
        used = 0.0
        for entry in self.entries:
            needed = 24 + _text_width(_short(entry[0], 28), 12) + 12
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
                parts.append(_legend_symbol(kind, colour, cx, cy))
                label = _short(name, 28)
                parts.append(
                    f'<text x="{_num(cx + 22)}" y="{_num(cy + 4)}">{_e(label)}'
                    + (f"<title>{_e(name)}</title>" if label != name else "")
                    + "</text>"
                )
                cx += 24 + _text_width(label, 12) + 12
        parts.append("</g>")
        return "".join(parts)


def _legend_symbol(kind: str, colour: str, x: float, y: float) -> str:
    if kind.startswith("line"):
        dash = kind.partition(":")[2]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        return (
            f'<line x1="{_num(x)}" y1="{_num(y)}" x2="{_num(x + 18)}" y2="{_num(y)}" '
            f'stroke="{colour}" stroke-width="2.5"{dash_attr}/>'
            f'<circle cx="{_num(x + 9)}" cy="{_num(y)}" r="3" fill="{colour}"/>'
        )
    if kind == "dot":
        return f'<circle cx="{_num(x + 9)}" cy="{_num(y)}" r="4.5" fill="{colour}"/>'
    if kind == "ring":
        return (
            f'<circle cx="{_num(x + 9)}" cy="{_num(y)}" r="6" fill="none" '
            f'stroke="{colour}" stroke-width="1.6"/>'
        )
    return (
        f'<rect x="{_num(x + 2)}" y="{_num(y - 6)}" width="14" height="12" rx="2" fill="{colour}"/>'
    )


def _svg(ids: _Ids, width: float, height: float, title: str, desc: str, body: str) -> str:
    """An accessible SVG: role img, labelled by its own <title> and <desc>."""
    ref = ids.next()
    return (
        f'<svg viewBox="0 0 {_num(width)} {_num(height)}" width="{_num(width)}" '
        f'height="{_num(height)}" role="img" aria-labelledby="{ref}-t {ref}-d">'
        f'<title id="{ref}-t">{_e(title)}</title><desc id="{ref}-d">{_e(desc)}</desc>'
        f"{body}</svg>"
    )


def _y_axis(scale: _Linear, ticks: Sequence[float], left: float, right: float) -> str:
    parts = []
    for tick in ticks:
        y = scale(tick)
        parts.append(
            f'<g class="tick"><line x1="{_num(left)}" x2="{_num(right)}" y1="{_num(y)}" '
            f'y2="{_num(y)}"/><text x="{_num(left - 6)}" y="{_num(y + 4)}" '
            f'text-anchor="end">{_e(_tick_label(tick))}</text></g>'
        )
    return "".join(parts)


def _axis_titles(
    x_title: str, y_title: str, *, left: float, right: float, top: float, bottom: float, x_y: float
) -> str:
    mid_x = (left + right) / 2
    mid_y = (top + bottom) / 2
    return (
        f'<text class="axis-title" x="{_num(mid_x)}" y="{_num(x_y)}" '
        f'text-anchor="middle">{_e(x_title)}</text>'
        f'<text class="axis-title" transform="translate(14 {_num(mid_y)}) rotate(-90)" '
        f'text-anchor="middle">{_e(y_title)}</text>'
    )


def _middle(text: str, limit: int) -> str:
    """Shorten from the middle: set names differ at their ends (layers.3.output)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 3
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


_ROTATION = 45
_TICK_CHARS = 18


@dataclass(frozen=True)
class _Categories:
    """The x axis of a band scale: where the plot starts and how the labels are set."""

    labels: Sequence[str]
    shown: list[str]
    left: float
    band: float
    rotate: bool
    every: int
    room: float

    def centre(self, index: int) -> float:
        return self.left + (index + 0.5) * self.band

    def render(self, y: float) -> str:
        """The tick labels below ``y``; shortened ones show their full text on hover."""
        parts = []
        for index, (label, full) in enumerate(zip(self.shown, self.labels, strict=True)):
            if index % self.every:
                continue
            x = self.centre(index)
            hover = f"<title>{_e(full)}</title>" if label != full else ""
            if self.rotate:
                parts.append(
                    f'<g class="tick"><text transform="translate({_num(x + 4)} {_num(y + 12)})'
                    f' rotate(-{_ROTATION})" text-anchor="end">{_e(label)}{hover}</text></g>'
                )
            else:
                parts.append(
                    f'<g class="tick"><text x="{_num(x)}" y="{_num(y + 14)}" '
                    f'text-anchor="middle">{_e(label)}{hover}</text></g>'
                )
        return "".join(parts)


def _categories(labels: Sequence[str], left: float, right: float) -> _Categories:
    """Lay out category labels: thinned when crowded, rotated when wider than a band.

    A rotated first label may need a wider left margin, which the plot then starts at.
    """
    count = max(len(labels), 1)
    shown = [_middle(label, _TICK_CHARS) for label in labels]
    widths = [_text_width(label) for label in shown]
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
    return _Categories(labels, shown, left, band, rotate, every, room)


def bar_chart(
    ids: _Ids,
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
    axis = _categories(categories, 58.0, width - 14)
    left, right, band = axis.left, width - 14, axis.band
    legend = _Legend(
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
    scale = _Linear(0.0, ticks[-1], bottom, top)
    body = [_y_axis(scale, ticks, left, right)]
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
                f'<rect x="{_num(x0 + position * bar)}" y="{_num(min(y, bottom))}" '
                f'width="{_num(max(bar - (1 if bar > 3 else 0), 0.6))}" '
                f'height="{_num(max(bottom - y, 0))}" fill="{colour}">'
                f"<title>{_e(label)}</title></rect>"
            )
    body.append(
        f'<line class="axis-line" x1="{_num(left)}" x2="{_num(right)}" y1="{_num(bottom)}" '
        f'y2="{_num(bottom)}"/>'
    )
    body.append(axis.render(bottom))
    if marker is not None:
        position, text = marker
        x = left + (position + 0.5) * band
        body.append(
            f'<line x1="{_num(x)}" x2="{_num(x)}" y1="{_num(top - 4)}" y2="{_num(bottom)}" '
            f'stroke="#c0392b" stroke-width="1.5" stroke-dasharray="5 3"/>'
            f'<text x="{_num(x + 4)}" y="{_num(top - 6)}" font-size="11" '
            f'fill="#c0392b">{_e(text)}</text>'
        )
    body.append(
        _axis_titles(
            x_title, y_title, left=left, right=right, top=top, bottom=bottom, x_y=height - 8
        )
    )
    body.append(legend.render(left, 14, right - left))
    return _svg(ids, width, height, title, desc, "".join(body))


def line_chart(
    ids: _Ids,
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
    axis = _categories(x_labels, 58.0, width - 18)
    left, right = axis.left, width - 18
    legend = _Legend(
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
    scale = _Linear(ticks[0], ticks[-1], bottom, top)
    body = [_y_axis(scale, ticks, left, right)]
    body.append(
        f'<line class="axis-line" x1="{_num(left)}" x2="{_num(right)}" y1="{_num(bottom)}" '
        f'y2="{_num(bottom)}"/>'
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
            path.append(f"{'L' if pen_down else 'M'}{_num(x)} {_num(y)}")
            pen_down = True
            points.append(
                f'<circle cx="{_num(x)}" cy="{_num(y)}" r="3.5" fill="{colour}">'
                f"<title>{_e(f'{x_labels[i]}: {name} = {fmt(value)}')}</title></circle>"
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
        _axis_titles(
            x_title, y_title, left=left, right=right, top=top, bottom=bottom, x_y=height - 8
        )
    )
    body.append(legend.render(left, 14, right - left))
    return _svg(ids, width, height, title, desc, "".join(body))


def scatter_map(
    ids: _Ids,
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
    sx = _Linear(x_ticks[0], x_ticks[-1], left, right)
    sy = _Linear(y_ticks[0], y_ticks[-1], bottom, top)
    body = [_y_axis(sy, y_ticks, left, right)]
    for tick in x_ticks:
        x = sx(tick)
        body.append(
            f'<g class="tick"><line x1="{_num(x)}" x2="{_num(x)}" y1="{_num(top)}" '
            f'y2="{_num(bottom)}"/><text x="{_num(x)}" y="{_num(bottom + 14)}" '
            f'text-anchor="middle">{_e(_tick_label(tick))}</text></g>'
        )
    body.append(
        f'<rect x="{_num(left)}" y="{_num(top)}" width="{_num(right - left)}" '
        f'height="{_num(bottom - top)}" fill="none" class="axis-line" stroke="#8a939c"/>'
    )
    by_colour: dict[str, list[str]] = {}
    for row in np.flatnonzero(finite & ~ringed):
        colour = colours[groups[row]]
        by_colour.setdefault(colour, []).append(
            f'<circle cx="{_num(sx(xy[row, 0]))}" cy="{_num(sy(xy[row, 1]))}" r="2.4"/>'
        )
    for colour, circles in by_colour.items():
        body.append(f'<g fill="{colour}" fill-opacity="0.75">{"".join(circles)}</g>')
    for row in np.flatnonzero(finite & ringed):
        x, y = _num(sx(xy[row, 0])), _num(sy(xy[row, 1]))
        body.append(
            f'<g><circle cx="{x}" cy="{y}" r="2.8" fill="{colours[groups[row]]}"/>'
            f'<circle cx="{x}" cy="{y}" r="6" fill="none" stroke="#111" stroke-width="1.5"/>'
            f"<title>{_e(ring_titles.get(int(row), 'suspect'))}</title></g>"
        )
    body.append(
        _axis_titles(
            x_title, y_title, left=left, right=right, top=top, bottom=bottom, x_y=height - 10
        )
    )
    present = set(groups)
    names = [name for name in colours if name in present]
    legend = ['<g class="legend">']
    y = top + 8
    for name in names[:MAX_LEGEND_CLASSES]:
        label = _short(name, 16)
        legend.append(_legend_symbol("dot", colours[name], right + 14, y))
        legend.append(
            f'<text x="{_num(right + 36)}" y="{_num(y + 4)}">{_e(label)}'
            + (f"<title>{_e(name)}</title>" if label != name else "")
            + "</text>"
        )
        y += 18
    if len(names) > MAX_LEGEND_CLASSES:
        legend.append(
            f'<text x="{_num(right + 14)}" y="{_num(y + 4)}">'
            f"+{len(names) - MAX_LEGEND_CLASSES} more labels</text>"
        )
        y += 18
    if ringed.any():
        y += 6
        legend.append(_legend_symbol("ring", "#111", right + 14, y))
        legend.append(f'<text x="{_num(right + 36)}" y="{_num(y + 4)}">suspect</text>')
    legend.append("</g>")
    body.append("".join(legend))
    return _svg(ids, width, height, title, desc, "".join(body))


# --------------------------------------------------------------------------------------
# The 2-D map of the embeddings


NO_EMBEDDINGS_NOTE = "Not available: the embeddings were not given when this page was rendered."
"""What a set's map figure says when the page was given neither its map nor its embeddings."""


def _map_of_embeddings(
    set_report: SetReport, embeddings: np.ndarray, labels: np.ndarray | None
) -> EmbeddingMap | str:
    """The map of a set computed here from its embeddings, or why it cannot be."""
    shape = getattr(embeddings, "shape", ())
    if len(shape) != 2 or shape[0] != set_report.n_points or shape[0] < 2:
        return (
            f"Not drawn: the embeddings given have shape {tuple(shape)}, the report"
            f" {set_report.n_points:,} points."
        )
    # A local report keeps using UMAP where the user installed it.
    return compute_embedding_map(
        embeddings, labels, suspects=[s.index for s in set_report.suspects], projection="auto"
    )


def _embedding_map(ids: _Ids, set_report: SetReport, embedding_map: EmbeddingMap | str) -> str:
    """The map figure of one set, or a short note (``embedding_map`` as a string) on why
    there is none."""
    n = set_report.n_points
    if isinstance(embedding_map, EmbeddingMap):
        rows = embedding_map.rows
        fits = (
            rows.ndim == 1
            and embedding_map.xy.shape == (rows.size, 2)
            and (embedding_map.labels is None or len(embedding_map.labels) == rows.size)
            and (rows.size == 0 or (int(rows.min()) >= 0 and int(rows.max()) < n))
        )
        if not fits:
            embedding_map = "Not drawn: the stored map names points the report does not have."
    if isinstance(embedding_map, str):
        return (
            '<figure><figcaption>2-D map of the embeddings</figcaption><p class="note">'
            f"{_e(embedding_map)}</p></figure>"
        )
    rows, xy, method = embedding_map.rows, embedding_map.xy, embedding_map.method
    x_title, y_title, note = embedding_map.x_title, embedding_map.y_title, embedding_map.note
    suspects = {s.index: s for s in set_report.suspects if 0 <= s.index < n}
    if embedding_map.labels is not None:
        groups = list(embedding_map.labels)
        order = [str(c.label) for c in set_report.per_class]
        order += sorted(set(groups) - set(order))
    else:
        groups = ["point"] * rows.size
        order = ["point"]
    colours = {name: _class_colour(i) for i, name in enumerate(order)}
    if embedding_map.labels is None:
        colours["point"] = "#7f8c99"
    ringed = np.isin(rows, list(suspects))
    ring_titles = {}
    for row in np.flatnonzero(ringed):
        suspect = suspects[int(rows[row])]
        ident = f" (id {suspect.id})" if suspect.id is not None else ""
        ring_titles[int(row)] = (
            f"suspect #{suspect.index}{ident}: label {suspect.label}, predicted"
            f" {suspect.predicted}, score {suspect.score:.3f}"
        )
    sampled = (
        f"a seeded sample of {rows.size:,} of {n:,} points"
        if rows.size < n
        else (f"all {n:,} points")
    )
    desc = (
        f"{method} projection of {sampled} of set {set_report.name}, coloured by label;"
        f" {int(ringed.sum())} suspects ringed in black."
    )
    svg = scatter_map(
        ids,
        title=f"2-D map ({method}) of set {set_report.name}",
        desc=desc,
        xy=xy,
        groups=groups,
        colours=colours,
        ringed=ringed,
        ring_titles=ring_titles,
        x_title=x_title,
        y_title=y_title,
    )
    return (
        f"<figure><figcaption>2-D map of the embeddings ({_e(method)})</figcaption>{svg}"
        f'<p class="note">{_e(note)}; {_e(sampled)}; suspects ringed (hover for details).'
        "</p></figure>"
    )


# --------------------------------------------------------------------------------------
# Page sections


def _figure(caption: str, svg: str, note: str = "") -> str:
    note_html = f'<p class="note">{_e(note)}</p>' if note else ""
    return f"<figure><figcaption>{_e(caption)}</figcaption>{svg}{note_html}</figure>"


def _headline_rows(set_report: SetReport) -> list[tuple[str, str]]:
    """(metric, formatted value) pairs of the headline table, in display order."""
    loo, homogeneity = set_report.loo_error, set_report.homogeneity
    degree, graph = set_report.nnk_degree, set_report.graph
    ident = set_report.intrinsic_dimension
    rows = [
        ("points", fmt(set_report.n_points)),
        ("dimension", fmt(set_report.dim)),
        ("classes", fmt(set_report.n_classes)),
        ("NNK degree, mean", fmt(degree.mean)),
        (
            "NNK degree, median [p10, p90]",
            f"{fmt(degree.median)} [{fmt(degree.p10)}, {fmt(degree.p90)}]",
        ),
        ("LOO error, NNK weighted", fmt(loo.nnk_weighted if loo else None)),
        ("LOO error, NNK unweighted", fmt(loo.nnk_unweighted if loo else None)),
        ("LOO error, kNN weighted", fmt(loo.knn_weighted if loo else None)),
        ("LOO error, kNN majority", fmt(loo.knn_unweighted if loo else None)),
        ("LOO error, soft NNK", fmt(loo.soft_nnk_weighted if loo else None)),
        ("pure patch fraction", fmt(homogeneity.pure_patch_fraction if homogeneity else None)),
        ("homogeneity, NNK", fmt(homogeneity.nnk_mean if homogeneity else None)),
        ("homogeneity, kNN", fmt(homogeneity.knn_mean if homogeneity else None)),
        (
            "cross-class edge fraction",
            fmt(
                set_report.label_smoothness.cross_class_edge_fraction
                if set_report.label_smoothness
                else None
            ),
        ),
        ("reconstruction error, mean", fmt(set_report.reconstruction_error.mean)),
        ("intrinsic dimension, TwoNN", fmt(ident.twonn, 3)),
        (f"intrinsic dimension, MLE (k={ident.mle_k})", fmt(ident.mle, 3)),
        ("regime", set_report.regime or "–"),
        (
            "edges, directed / symmetric",
            f"{fmt(graph.n_edges_directed)} / {fmt(graph.n_edges_symmetric)}",
        ),
        ("isolated points", fmt(graph.isolated)),
        ("duplicate pairs", fmt(graph.duplicate_pairs)),
    ]
    if graph.knn_recall is not None:
        rows.append(("kNN recall (sampled)", fmt(graph.knn_recall, 3)))
    timings = set_report.timings
    rows.append(("time, s", fmt(timings.knn_s + timings.solve_s + timings.metrics_s, 3)))
    rows.append(("warnings", fmt(len(set_report.warnings))))
    return rows


def _headline_table(report: Report) -> str:
    per_set = [dict(_headline_rows(s)) for s in report.sets]
    metrics = list(dict.fromkeys(name for rows in per_set for name in rows))
    extra_names = list(dict.fromkeys(name for s in report.sets for name in s.extra))
    header = "".join(
        f'<th scope="col"><a href="#set-{i + 1}">{_e(s.name)}</a></th>'
        for i, s in enumerate(report.sets)
    )
    body = []
    for metric in metrics:
        cells = []
        for rows in per_set:
            value = rows.get(metric, "–")
            if metric == "regime" and value in REGIME_TEXT:
                value_html = f'<span class="badge regime-{_e(value)}">{_e(value)}</span>'
            else:
                value_html = _e(value)
            cells.append(f"<td>{value_html}</td>")
        body.append(f'<tr><th scope="row">{_e(metric)}</th>{"".join(cells)}</tr>')
    for name in extra_names:
        cells = "".join(
            f"<td>{_e(fmt(s.extra.get(name)) if name in s.extra else '–')}</td>"
            for s in report.sets
        )
        body.append(f'<tr><th scope="row">{_e(name)}</th>{cells}</tr>')
    return (
        '<div class="panel"><table><caption>Headline numbers per set</caption>'
        f'<thead><tr><th scope="col">metric</th>{header}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _loo_overview(ids: _Ids, report: Report) -> str:
    labelled = [s for s in report.sets if s.loo_error is not None]
    if not labelled:
        return '<p class="note">No set has labels: no leave-one-out errors to show.</p>'
    series = [
        (name, [float(getattr(s.loo_error, key)) for s in labelled], colour)  # type: ignore[arg-type]
        for key, name, colour in LOO_SERIES
    ]
    text = "; ".join(
        f"{s.name}: "
        + ", ".join(f"{name} {fmt(getattr(s.loo_error, key))}" for key, name, _ in LOO_SERIES)
        for s in labelled
    )
    svg = bar_chart(
        ids,
        title="The four leave-one-out errors of each set",
        desc=f"Grouped bars, one group per set. {text}.",
        categories=[s.name for s in labelled],
        series=series,
        x_title="set",
        y_title="LOO error",
        width=max(560.0, min(1180.0, 120.0 * len(labelled) + 120)),
    )
    return (
        "<figure><figcaption>Leave-one-out errors, side by side</figcaption>"
        f'{svg}<p class="note">Lower is better. NNK interpolates each point from its NNK'
        " neighbours; kNN from all k candidates; weighted uses the weights, the others a"
        " plain vote.</p></figure>"
    )


def _series(report: Report, path: str) -> list[float | None]:
    """A numeric comparison series (None where a set has no value or a non-number)."""
    assert report.comparison is not None
    values = report.comparison.series.get(path)
    if values is None:
        return [None] * len(report.comparison.sets)
    return [
        float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None for v in values
    ]


def _comparison_section(ids: _Ids, report: Report) -> str:
    comparison = report.comparison
    if comparison is None:
        return ""
    names = list(comparison.sets)

    def chart(
        caption: str,
        paths: Sequence[tuple[str, str]],
        y_title: str,
        *,
        from_zero: bool = True,
        styles: Sequence[tuple[str, str]] | None = None,
    ) -> str:
        series = [(label, _series(report, path)) for path, label in paths]
        if not any(v is not None for _, vals in series for v in vals):
            return ""
        text = "; ".join(
            f"{label}: " + ", ".join(f"{n} {fmt(v)}" for n, v in zip(names, vals, strict=True))
            for label, vals in series
        )
        svg = line_chart(
            ids,
            title=f"{caption} across the sets",
            desc=f"Line chart over the sets in the order given. {text}.",
            x_labels=names,
            series=series,
            x_title="set (in the order given)",
            y_title=y_title,
            from_zero=from_zero,
            styles=styles,
        )
        return _figure(caption, svg)

    figures = [
        chart(
            "Leave-one-out errors",
            [(f"loo_error.{key}", name) for key, name, _ in LOO_SERIES],
            "LOO error",
            styles=LOO_LINE_STYLES,
        ),
        chart(
            "Pure patch fraction and homogeneity",
            [
                ("homogeneity.pure_patch_fraction", "pure patch fraction"),
                ("homogeneity.nnk_mean", "NNK homogeneity"),
            ],
            "fraction",
        ),
        chart(
            "NNK degree",
            [
                ("nnk_degree.mean", "mean"),
                ("nnk_degree.p10", "p10"),
                ("nnk_degree.p90", "p90"),
            ],
            "NNK neighbours",
        ),
        chart(
            "Intrinsic dimension",
            [("intrinsic_dimension.twonn", "TwoNN"), ("intrinsic_dimension.mle", "MLE")],
            "dimension",
        ),
    ]
    for path in comparison.series:
        if path.startswith("extra."):
            name = path.removeprefix("extra.")
            figures.append(chart(name, [(path, name)], name, from_zero=False))
    regimes = comparison.series.get("regime")
    regime_row = ""
    if regimes and any(regimes):
        cells = "".join(
            f'<td><span class="badge regime-{_e(r)}">{_e(r)}</span></td>'
            if r in REGIME_TEXT
            else f"<td>{_e(r if r is not None else '–')}</td>"
            for r in regimes
        )
        head = "".join(f'<th scope="col">{_e(n)}</th>' for n in names)
        regime_row = (
            '<div class="panel" style="margin-top:16px"><table><caption>Regime per set'
            f'</caption><thead><tr><th scope="col"></th>{head}</tr></thead><tbody><tr>'
            f'<th scope="row">regime</th>{cells}</tr></tbody></table></div>'
        )
    return (
        '<section id="comparison"><h2>Comparison across sets</h2>'
        f'<div class="grid">{"".join(f for f in figures if f)}</div>{regime_row}</section>'
    )


def _cards(set_report: SetReport) -> str:
    loo, homogeneity = set_report.loo_error, set_report.homogeneity
    cards = [
        ("LOO error, NNK weighted", fmt(loo.nnk_weighted if loo else None)),
        ("pure patch fraction", fmt(homogeneity.pure_patch_fraction if homogeneity else None)),
        ("mean NNK degree", fmt(set_report.nnk_degree.mean)),
        ("intrinsic dim. (TwoNN)", fmt(set_report.intrinsic_dimension.twonn, 3)),
    ]
    html = [
        f'<div class="card"><div class="value">{_e(value)}</div>'
        f'<div class="label">{_e(label)}</div></div>'
        for label, value in cards
    ]
    if set_report.regime is not None:
        html.append(
            f'<div class="card"><div class="value"><span class="badge regime-'
            f'{_e(set_report.regime)}">{_e(set_report.regime)}</span></div>'
            f'<div class="label">{_e(REGIME_TEXT.get(set_report.regime, "regime"))}</div></div>'
        )
    return f'<div class="card-row">{"".join(html)}</div>'


def _degree_histogram(ids: _Ids, set_report: SetReport) -> str:
    degree = set_report.nnk_degree
    counts = list(degree.histogram)
    # Trailing empty degrees up to k say nothing; keep one past the maximum.
    last = max((d for d, c in enumerate(counts) if c), default=0)
    counts = counts[: max(last + 2, 2)]
    text = ", ".join(f"{d}: {c:,}" for d, c in enumerate(counts) if c)
    svg = bar_chart(
        ids,
        title=f"NNK degree histogram of set {set_report.name}",
        desc=(
            f"Number of points per NNK degree; mean {fmt(degree.mean)}, median"
            f" {fmt(degree.median)}. Counts: {text}."
        ),
        categories=[str(d) for d in range(len(counts))],
        series=[("points", [float(c) for c in counts], "#4e79a7")],
        x_title="NNK degree (neighbours per point)",
        y_title="points",
        marker=(degree.mean, f"mean {fmt(degree.mean, 3)}"),
    )
    return _figure(
        "NNK degree histogram",
        svg,
        f"median {fmt(degree.median)}, p10 {fmt(degree.p10)}, p90 {fmt(degree.p90)},"
        f" max {fmt(degree.max)}",
    )


def _shown_classes(set_report: SetReport) -> tuple[list[ClassMetrics], str]:
    classes = list(set_report.per_class)
    if len(classes) <= MAX_CLASSES_SHOWN:
        return classes, ""
    worst = sorted(
        range(len(classes)),
        key=lambda i: (-classes[i].loo_error.nnk_weighted, -classes[i].n, i),
    )[:MAX_CLASSES_SHOWN]
    note = (
        f"Showing the {MAX_CLASSES_SHOWN} of {len(classes):,} classes with the highest NNK"
        " LOO error."
    )
    return [classes[i] for i in sorted(worst)], note


def _per_class_charts(ids: _Ids, set_report: SetReport) -> list[str]:
    if not set_report.per_class:
        return []
    classes, note = _shown_classes(set_report)
    names = [str(c.label) for c in classes]
    homogeneity_svg = bar_chart(
        ids,
        title=f"Homogeneity per class of set {set_report.name}",
        desc="NNK homogeneity and pure patch fraction per class: "
        + "; ".join(
            f"{n}: {fmt(c.homogeneity.nnk_mean)}, {fmt(c.homogeneity.pure_patch_fraction)}"
            for n, c in zip(names, classes, strict=True)
        )
        + ".",
        categories=names,
        series=[
            ("NNK homogeneity", [c.homogeneity.nnk_mean for c in classes], "#59a14f"),
            (
                "pure patch fraction",
                [c.homogeneity.pure_patch_fraction for c in classes],
                "#b6d7a8",
            ),
        ],
        x_title="class label",
        y_title="fraction",
        y_max=1.0,
    )
    loo_svg = bar_chart(
        ids,
        title=f"Leave-one-out errors per class of set {set_report.name}",
        desc="The four LOO errors per class: "
        + "; ".join(
            f"{n}: "
            + ", ".join(f"{name} {fmt(getattr(c.loo_error, key))}" for key, name, _ in LOO_SERIES)
            for n, c in zip(names, classes, strict=True)
        )
        + ".",
        categories=names,
        series=[
            (name, [getattr(c.loo_error, key) for c in classes], colour)
            for key, name, colour in LOO_SERIES
        ],
        x_title="class label",
        y_title="LOO error",
    )
    return [
        _figure("Homogeneity per class", homogeneity_svg, note),
        _figure("Leave-one-out errors per class", loo_svg, note),
    ]


def _per_class_table(set_report: SetReport) -> str:
    if not set_report.per_class:
        return ""
    rows = "".join(
        f'<tr><th scope="row">{_e(c.label)}</th><td>{fmt(c.n)}</td>'
        f"<td>{fmt(c.loo_error.nnk_weighted)}</td><td>{fmt(c.loo_error.nnk_unweighted)}</td>"
        f"<td>{fmt(c.loo_error.knn_weighted)}</td><td>{fmt(c.loo_error.knn_unweighted)}</td>"
        f"<td>{fmt(c.homogeneity.nnk_mean)}</td><td>{fmt(c.homogeneity.pure_patch_fraction)}</td>"
        f"<td>{fmt(c.mean_degree)}</td></tr>"
        for c in set_report.per_class
    )
    return (
        f"<details><summary>Per-class numbers ({len(set_report.per_class):,} classes)"
        '</summary><div class="panel scroll"><table><thead><tr><th scope="col">label</th>'
        '<th scope="col">n</th><th scope="col">LOO NNK w.</th><th scope="col">LOO NNK u.</th>'
        '<th scope="col">LOO kNN w.</th><th scope="col">LOO kNN maj.</th>'
        '<th scope="col">homogeneity</th><th scope="col">pure patch</th>'
        f'<th scope="col">mean degree</th></tr></thead><tbody>{rows}</tbody></table></div>'
        "</details>"
    )


def _suspects_table(set_report: SetReport, *, asked: int) -> str:
    """The suspects, ranked, at most :data:`MAX_SUSPECT_ROWS` rows; ``asked`` is the
    job's ``suspects_top``."""
    suspects = set_report.suspects
    if not suspects:
        if set_report.loo_error is None:
            reason = "no labels were given"
        elif asked == 0:
            reason = "the job asked for none (suspects_top=0)"
        else:
            reason = "no point's NNK prediction disagrees with its label"
        return f'<h3>Suspects</h3><p class="note">None: {reason}.</p>'
    cut = ""
    if len(suspects) > MAX_SUSPECT_ROWS:
        cut = (
            f'<p class="note">The first {MAX_SUSPECT_ROWS:,} of {len(suspects):,}; the JSON'
            " report lists them all.</p>"
        )
        suspects = suspects[:MAX_SUSPECT_ROWS]
    rows = "".join(
        f"<tr><td>{rank}</td><td>{s.index}</td><td>{_e(s.id if s.id is not None else '–')}"
        f"</td><td>{_e(s.label)}</td><td>{_e(s.predicted)}</td><td>{s.score:.3f}</td></tr>"
        for rank, s in enumerate(suspects, start=1)
    )
    return (
        f"<h3>Suspects ({len(set_report.suspects):,})</h3>"
        '<p class="meta">Points whose NNK-weighted prediction disagrees with their label,'
        " ranked by score = 1 - p(label).</p>"
        '<div class="panel scroll"><table><thead><tr><th scope="col">rank</th>'
        '<th scope="col">index</th><th scope="col">id</th><th scope="col">label</th>'
        '<th scope="col">predicted</th><th scope="col">score</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div>{cut}"
    )


def _warnings_list(set_report: SetReport) -> str:
    if not set_report.warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in set_report.warnings)
    return f'<ul class="warnings" aria-label="warnings">{items}</ul>'


def _set_section(
    ids: _Ids,
    position: int,
    set_report: SetReport,
    embedding_map: EmbeddingMap | str,
    *,
    suspects_asked: int,
) -> str:
    """One set's section: cards, warnings, plots, suspects and per-class numbers."""
    figures = [_degree_histogram(ids, set_report), *_per_class_charts(ids, set_report)]
    figures.append(_embedding_map(ids, set_report, embedding_map))
    extra = ""
    if set_report.extra:
        extra = (
            '<p class="meta">'
            + " · ".join(f"{_e(k)}: {_e(fmt(v))}" for k, v in set_report.extra.items())
            + "</p>"
        )
    return (
        f'<section id="set-{position}"><h2>Set {position}: {_e(set_report.name)}</h2>'
        f'<p class="meta">{set_report.n_points:,} points × {set_report.dim:,} dimensions'
        + (f" · {set_report.n_classes:,} classes" if set_report.n_classes is not None else "")
        + f"</p>{extra}{_cards(set_report)}{_warnings_list(set_report)}"
        f'<div class="grid">{"".join(figures)}</div>'
        f"{_suspects_table(set_report, asked=suspects_asked)}"
        f"{_per_class_table(set_report)}</section>"
    )


def _guide() -> str:
    items = "".join(f"<dt>{_e(term)}</dt><dd>{_e(text)}</dd>" for term, text in _GUIDE)
    return (
        '<section id="guide"><h2>How to read this report</h2>'
        f'<dl class="guide">{items}</dl></section>'
    )


def _map_of_set(
    set_report: SetReport,
    *,
    maps: Mapping[str, EmbeddingMap] | None,
    map_notes: Mapping[str, str] | None,
    embeddings: Mapping[str, np.ndarray] | None,
    labels: Mapping[str, np.ndarray] | None,
) -> EmbeddingMap | str:
    """What the set's map figure shows: its given map, else one computed from its given
    embeddings, else the note on why there is none."""
    name = set_report.name
    if maps is not None and name in maps:
        return maps[name]
    if embeddings is not None and name in embeddings:
        return _map_of_embeddings(
            set_report, embeddings[name], None if labels is None else labels.get(name)
        )
    return (map_notes or {}).get(name, NO_EMBEDDINGS_NOTE)


def render_report_html(
    report: Report,
    *,
    maps: Mapping[str, EmbeddingMap] | None = None,
    map_notes: Mapping[str, str] | None = None,
    embeddings: Mapping[str, np.ndarray] | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
    title: str | None = None,
) -> str:
    """The report as one self-contained HTML page (a string, UTF-8 when written).

    Parameters
    ----------
    report : Report
        The analysis report.
    maps : mapping of set name to EmbeddingMap, optional
        Each set's 2-D map, computed beforehand
        (:func:`htmlreport.embedding_map.compute_embedding_map`;
        the service's worker stores one per set with the report).
    map_notes : mapping of set name to str, optional
        For a set with neither a map nor embeddings: the note its map figure shows
        instead (default :data:`NO_EMBEDDINGS_NOTE`).
    embeddings : mapping of set name to an (N, d) array, optional
        The embeddings of each set without a map in ``maps``, to compute its map here
        (a seeded sample of at most :data:`MAP_MAX_POINTS` points; memory-mapped arrays
        are read only there). A set whose row count differs from the report's gets a
        note instead of a map.
    labels : mapping of set name to an (N,) array, optional
        Labels to colour those maps by; without them the points are grey.
    title : str, optional
        The page title; default "nnkgeo report" with the job id when there is one.

    Returns
    -------
    str
        The HTML document. It loads nothing (no script, font, image or external
        stylesheet) and declares a Content-Security-Policy that forbids it.
    """
    ids = _Ids()
    page_title = title or (f"nnkgeo report {report.job_id}" if report.job_id else "nnkgeo report")
    params = " ".join(
        f"<code>{_e(name)}={_e(value)}</code>" for name, value in report.params.model_dump().items()
    )
    nav = ['<a href="#overview">Overview</a>']
    if report.comparison is not None:
        nav.append('<a href="#comparison">Comparison</a>')
    nav += [
        f'<a href="#set-{i + 1}">{_e(_short(s.name, 32))}</a>' for i, s in enumerate(report.sets)
    ]
    nav.append('<a href="#guide">How to read</a>')
    all_warnings = "".join(
        f"<li><strong>{_e(s.name)}</strong>: {_e(w)}</li>" for s in report.sets for w in s.warnings
    )
    warnings_html = (
        f'<h3>Warnings</h3><ul class="warnings">{all_warnings}</ul>' if all_warnings else ""
    )
    job = f"job <code>{_e(report.job_id)}</code> · " if report.job_id else ""
    sections = "".join(
        _set_section(
            ids,
            i + 1,
            s,
            _map_of_set(s, maps=maps, map_notes=map_notes, embeddings=embeddings, labels=labels),
            suspects_asked=report.params.suspects_top,
        )
        for i, s in enumerate(report.sets)
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CONTENT_SECURITY_POLICY)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(page_title)}</title><style>{_STYLE}</style></head><body><main>"
        f"<header><h1>{_e(page_title)}</h1>"
        f'<p class="meta">{job}{len(report.sets)} embedding set'
        f"{'s' if len(report.sets) != 1 else ''} · algorithm version"
        f" {_e(report.algorithm_version)} · report schema {_e(report.schema_version)}</p>"
        f'<p class="meta">parameters: {params}</p>'
        f'<nav aria-label="contents">{" ".join(nav)}</nav></header>'
        f'<section id="overview"><h2>Overview</h2><div class="row">{_headline_table(report)}'
        f"{_loo_overview(ids, report)}</div>{warnings_html}</section>"
        f"{_comparison_section(ids, report)}{sections}{_guide()}"
        "<footer>Made by nnkgeo. This page is self-contained: it loads nothing from the"
        " network. Metric definitions: DESIGN section 2.</footer>"
        "</main></body></html>\n"
    )
