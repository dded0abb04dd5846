"""The comparison across sets: line charts over the sets in the order given.

Only a report of several sets has one (:attr:`api_schemas.Report.comparison`).
"""

from __future__ import annotations

from collections.abc import Sequence

from api_schemas import Report
from htmlreport.charts import captioned_figure, line_chart
from htmlreport.sections.vocabulary import (
    FLAG_FACTS,
    LOO_LINE_STYLES,
    LOO_SERIES,
    REGIME_TEXT,
    UNCHARTED_FACTS,
    fact_name,
    fact_value,
    regime_badge,
)
from htmlreport.svg import ElementIds
from htmlreport.text import escaped, fmt

__all__ = ["comparison_section"]


def _series(report: Report, path: str) -> list[float | None]:
    """A numeric comparison series (None where a set has no value or a non-number)."""
    assert report.comparison is not None
    values = report.comparison.series.get(path)
    if values is None:
        return [None] * len(report.comparison.sets)
    return [
        float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None for v in values
    ]


def comparison_section(ids: ElementIds, report: Report) -> str:
    """The comparison across sets, or nothing for a report without one.

    Parameters
    ----------
    ids : ElementIds
        The page's element ids; each chart takes the next one.
    report : Report
        The analysis report.

    Returns
    -------
    str
        The ``<section id="comparison">`` element: a line chart per group of metrics
        that has a value (and one per numeric extra fact that varies across the sets),
        and a table of each set's regime and flags (a study's ``fitted``, its training
        seed); an empty string when ``report.comparison`` is None.
    """
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
        return captioned_figure(caption, svg)

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
        # A fact that is the same for every set, a seed, a size of the architecture or a
        # 0/1 flag is no line to follow: the table below (or the headline table) has it.
        fact = path.removeprefix("extra.")
        if not path.startswith("extra.") or fact in UNCHARTED_FACTS:
            continue
        if len({value for value in _series(report, path) if value is not None}) < 2:
            continue
        name = fact_name(fact)
        figures.append(chart(name[:1].upper() + name[1:], [(path, name)], name, from_zero=False))
    return (
        '<section id="comparison"><h2>Comparison across sets</h2>'
        f'<div class="grid">{"".join(f for f in figures if f)}</div>'
        f"{_per_set_table(report)}</section>"
    )


def _per_set_table(report: Report) -> str:
    """The regime of each set, and its flags and seed, as a table: marks, not lines."""
    assert report.comparison is not None
    comparison = report.comparison
    rows = []
    regimes = comparison.series.get("regime")
    if regimes and any(regimes):
        cells = "".join(
            f"<td>{regime_badge(r)}</td>"
            if r in REGIME_TEXT
            else f"<td>{escaped(r if r is not None else '–')}</td>"
            for r in regimes
        )
        rows.append(f'<tr><th scope="row">regime</th>{cells}</tr>')
    for fact in (*sorted(FLAG_FACTS), "seed"):
        values = comparison.series.get(f"extra.{fact}")
        if values is None or all(value is None for value in values):
            continue
        cells = "".join(f"<td>{escaped(fact_value(fact, value))}</td>" for value in values)
        rows.append(f'<tr><th scope="row">{escaped(fact_name(fact))}</th>{cells}</tr>')
    if not rows:
        return ""
    head = "".join(f'<th scope="col">{escaped(n)}</th>' for n in comparison.sets)
    caption = "Regime per set" if len(rows) == 1 and regimes else "Per set"
    return (
        '<div class="panel" style="margin-top:16px"><table><caption>'
        f'{caption}</caption><thead><tr><th scope="col"></th>{head}</tr></thead><tbody>'
        f"{''.join(rows)}</tbody></table></div>"
    )
