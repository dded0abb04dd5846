"""Point-by-point comparisons: a compare job's two sets, consecutive sets, a drift job.

- ``compare`` (:attr:`api_schemas.Report.compare`): the overlap of each point's NNK
  neighbourhoods in set a and in set b, per class, the most changed points, linear CKA;
- ``comparison.overlap_consecutive``: the mean Jaccard overlap of each set with the next;
- ``drift`` (:attr:`api_schemas.Report.drift`): the current points' scores against the
  reference, the Kolmogorov-Smirnov test and its verdict, per-class shifts, the most
  drifted points.

Each renders to nothing for a report without its section.
"""

from __future__ import annotations

from collections.abc import Sequence

from api_schemas import Report
from htmlreport.charts import LINE_COLOURS, bar_chart, captioned_figure, card
from htmlreport.svg import ElementIds
from htmlreport.text import escaped, fmt, shorten

__all__ = ["compare_section", "drift_section", "overlap_consecutive_figure"]

# Rows of the changed / drifted tables shown (the report keeps up to 100; the table
# scrolls).
_TABLE_ROWS = 100
_NEIGHBOURS_SHOWN = 12


def _table(caption: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A scrolling table; cells are already escaped HTML."""
    header = "".join(f'<th scope="col">{escaped(h)}</th>' for h in head)
    body = "".join(
        f'<tr><th scope="row">{row[0]}</th>{"".join(f"<td>{c}</td>" for c in row[1:])}</tr>'
        for row in rows
    )
    return (
        f'<div class="panel scroll"><table><caption>{escaped(caption)}</caption>'
        f"<thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _neighbours(values: Sequence[int]) -> str:
    shown = ", ".join(str(v) for v in values[:_NEIGHBOURS_SHOWN])
    more = len(values) - _NEIGHBOURS_SHOWN
    return escaped(shown + (f" … (+{more})" if more > 0 else "")) or "–"


def overlap_consecutive_figure(ids: ElementIds, report: Report) -> str:
    """Bars of the mean Jaccard overlap between each set and the next; "" without it."""
    comparison = report.comparison
    if comparison is None or not comparison.overlap_consecutive:
        return ""
    if report.compare is not None and len(comparison.sets) == 2:
        return ""  # the compare section's Jaccard mean is this one number
    values = comparison.overlap_consecutive
    pairs = [
        f"{shorten(first, 14)} → {shorten(second, 14)}"
        for first, second in zip(comparison.sets, comparison.sets[1:], strict=False)
    ]
    text = ", ".join(f"{pair} {fmt(v)}" for pair, v in zip(pairs, values, strict=True))
    svg = bar_chart(
        ids,
        title="Neighbourhood overlap between consecutive sets",
        desc=f"Mean Jaccard overlap of each point's NNK neighbours in a set and the next: {text}.",
        categories=pairs,
        series=[("mean Jaccard", list(values), LINE_COLOURS[0])],
        x_title="consecutive sets",
        y_title="mean Jaccard overlap",
        y_max=1.0,
    )
    return (
        '<section id="overlap-consecutive"><h2>Neighbourhoods across consecutive sets</h2>'
        '<div class="grid">'
        + captioned_figure(
            "Mean Jaccard overlap, each set with the next",
            svg,
            "1 means every point keeps exactly its NNK neighbours from one set to the next.",
        )
        + "</div></section>"
    )


def compare_section(ids: ElementIds, report: Report) -> str:
    """A compare job's section: overlaps, per class, the most changed points, CKA.

    Parameters
    ----------
    ids : ElementIds
        The page's element ids; each chart takes the next one.
    report : Report

    Returns
    -------
    str
        ``<section id="compare">``, or an empty string when ``report.compare`` is None.
    """
    section = report.compare
    if section is None:
        return ""
    jaccard, weighted = section.overlap.jaccard, section.overlap.weighted
    cards = "".join(
        [
            card("Jaccard overlap, mean", fmt(jaccard.mean, 3), "shared / all NNK neighbours"),
            card(
                "Jaccard, median [p10, p90]",
                f"{fmt(jaccard.median, 3)} [{fmt(jaccard.p10, 3)}, {fmt(jaccard.p90, 3)}]",
            ),
            card(
                "weighted overlap, mean",
                fmt(weighted.mean, 3),
                "sum of min(θa, θb) of the normalised NNK weights",
            ),
            card(
                "weighted, median [p10, p90]",
                f"{fmt(weighted.median, 3)} [{fmt(weighted.p10, 3)}, {fmt(weighted.p90, 3)}]",
            ),
            card("linear CKA", fmt(section.cka_linear, 3), "Kornblith et al. 2019"),
            card("points", fmt(section.n_points)),
        ]
    )
    figures = []
    if section.per_class:
        labels = [shorten(str(c.label), 16) for c in section.per_class]
        svg = bar_chart(
            ids,
            title="Neighbourhood overlap per class",
            desc="Mean overlaps per class: "
            + "; ".join(
                f"{c.label}: Jaccard {fmt(c.jaccard)}, weighted {fmt(c.weighted)}"
                for c in section.per_class
            )
            + ".",
            categories=labels,
            series=[
                ("Jaccard", [c.jaccard for c in section.per_class], LINE_COLOURS[0]),
                ("weighted", [c.weighted for c in section.per_class], LINE_COLOURS[1]),
            ],
            x_title="class",
            y_title="mean overlap",
            y_max=1.0,
        )
        figures.append(captioned_figure("Overlap per class", svg))
    changed_rows = [
        [
            escaped(p.index),
            escaped(p.id if p.id is not None else "–"),
            fmt(p.jaccard, 3),
            fmt(p.weighted, 3),
            _neighbours(p.neighbours_a),
            _neighbours(p.neighbours_b),
        ]
        for p in section.changed[:_TABLE_ROWS]
    ]
    changed = (
        _table(
            f"The {len(changed_rows)} points whose neighbourhoods changed most",
            ["point", "id", "Jaccard", "weighted", f"neighbours in {section.a}", f"in {section.b}"],
            changed_rows,
        )
        if changed_rows
        else ""
    )
    return (
        f'<section id="compare"><h2>Compare: {escaped(section.a)} vs {escaped(section.b)}</h2>'
        '<p class="meta">The same points in both sets: how much of each point\'s NNK '
        "neighbourhood survives from one set to the other.</p>"
        f'<div class="card-row">{cards}</div>'
        f'<div class="grid">{"".join(figures)}</div>{changed}</section>'
    )


def drift_section(ids: ElementIds, report: Report) -> str:
    """A drift job's section: verdict, KS test, scores, per-class shifts, drifted points.

    Returns
    -------
    str
        ``<section id="drift">``, or an empty string when ``report.drift`` is None.
    """
    section = report.drift
    if section is None:
        return ""
    badge = "regime-not_interpolating" if section.verdict == "drift" else "regime-homogeneous"
    verdict = section.verdict.replace("_", " ")
    cards = "".join(
        [
            card("KS statistic", fmt(section.ks.statistic, 3)),
            card("KS p-value", fmt(section.ks.p_value, 3)),
            card(
                "score mean (p90, p99)",
                f"{fmt(section.score.mean, 3)} ({fmt(section.score.p90, 3)}, "
                f"{fmt(section.score.p99, 3)})",
                "under no drift about 0.5 (0.9, 0.99)",
            ),
            card(
                "current error, mean",
                fmt(section.current_reconstruction_error.mean, 3),
                "out-of-sample reconstruction error",
            ),
            card("current NNK degree, mean", fmt(section.current_nnk_degree.mean, 3)),
            card("points, reference / current", f"{section.n_reference:,} / {section.n_current:,}"),
        ]
    )
    figures = []
    scored = [c for c in section.per_class if c.score_mean is not None]
    if scored:
        labels = [shorten(str(c.label), 16) for c in scored]
        svg = bar_chart(
            ids,
            title="Mean drift score per class",
            desc="Mean score of each class's current points (0.5 under no drift): "
            + "; ".join(f"{c.label}: {fmt(c.score_mean)}" for c in scored)
            + ".",
            categories=labels,
            series=[("mean score", [c.score_mean for c in scored], LINE_COLOURS[3])],
            x_title="class",
            y_title="mean score",
            y_max=1.0,
            marker=None,
        )
        figures.append(
            captioned_figure(
                "Mean score per class", svg, "0.5 is the reference's own; near 1, off it."
            )
        )
    class_rows = [
        [
            escaped(c.label),
            fmt(c.n_reference),
            fmt(c.n_current),
            fmt(c.reference_error_mean, 3),
            fmt(c.current_error_mean, 3),
            fmt(c.error_shift, 3),
            fmt(c.score_mean, 3),
            fmt(c.centroid_shift, 3),
        ]
        for c in section.per_class
    ]
    per_class = (
        _table(
            "Per class",
            [
                "class",
                "reference points",
                "current points",
                "reference error",
                "current error",
                "error shift",
                "mean score",
                "centroid shift",
            ],
            class_rows,
        )
        if class_rows
        else ""
    )
    drifted_rows = [
        [
            escaped(p.index),
            escaped(p.id if p.id is not None else "–"),
            fmt(p.score, 3),
            fmt(p.reconstruction_error, 3),
            fmt(p.nnk_degree),
        ]
        for p in section.drifted[:_TABLE_ROWS]
    ]
    drifted = (
        _table(
            f"The {len(drifted_rows)} most drifted points",
            ["point", "id", "score", "reconstruction error", "NNK degree"],
            drifted_rows,
        )
        if drifted_rows
        else ""
    )
    return (
        f'<section id="drift"><h2>Drift: {escaped(section.current)} against '
        f"{escaped(section.reference)}</h2>"
        f'<p><span class="badge {badge}">{escaped(verdict)}</span> '
        f"Kolmogorov-Smirnov p = {escaped(fmt(section.ks.p_value, 3))}; the verdict is drift "
        f"when p &lt; {escaped(fmt(section.threshold))}. A point's score is the share of "
        "reference points whose leave-one-out error is at or below its error.</p>"
        f'<div class="card-row">{cards}</div>'
        f'<div class="grid">{"".join(figures)}</div>{per_class}{drifted}</section>'
    )
