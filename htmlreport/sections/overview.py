"""The page's overview: every set's headline numbers side by side, their LOO errors as
grouped bars, and every set's warnings."""

from __future__ import annotations

from api_schemas import Report, SetReport
from htmlreport.charts import bar_chart
from htmlreport.sections.vocabulary import (
    LOO_SERIES,
    REGIME_TEXT,
    fact_name,
    fact_value,
    regime_badge,
)
from htmlreport.svg import ElementIds
from htmlreport.text import escaped, fmt

__all__ = ["overview_section"]


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
        # Exact search reports recall 1.0 with no sample: say "exact", not a measured 1.000.
        sampled = graph.knn_recall_sample or 0
        rows.append(
            ("kNN recall", f"{fmt(graph.knn_recall, 3)} on {sampled:,} queries")
            if sampled
            else ("kNN search", "exact")
        )
    timings = set_report.timings
    rows.append(("time, s", fmt(timings.knn_s + timings.solve_s + timings.metrics_s, 3)))
    rows.append(("warnings", fmt(len(set_report.warnings))))
    return rows


def _headline_table(report: Report) -> str:
    per_set = [dict(_headline_rows(s)) for s in report.sets]
    metrics = list(dict.fromkeys(name for rows in per_set for name in rows))
    extra_names = list(dict.fromkeys(name for s in report.sets for name in s.extra))
    header = "".join(
        f'<th scope="col"><a href="#set-{i + 1}">{escaped(s.name)}</a></th>'
        for i, s in enumerate(report.sets)
    )
    body = []
    for metric in metrics:
        cells = []
        for rows in per_set:
            value = rows.get(metric, "–")
            if metric == "regime" and value in REGIME_TEXT:
                value_html = regime_badge(value)
            else:
                value_html = escaped(value)
            cells.append(f"<td>{value_html}</td>")
        body.append(f'<tr><th scope="row">{escaped(metric)}</th>{"".join(cells)}</tr>')
    for name in extra_names:
        cells = "".join(
            f"<td>{escaped(fact_value(name, s.extra.get(name)) if name in s.extra else '–')}</td>"
            for s in report.sets
        )
        body.append(f'<tr><th scope="row">{escaped(fact_name(name))}</th>{cells}</tr>')
    return (
        '<div class="panel"><table><caption>Headline numbers per set</caption>'
        f'<thead><tr><th scope="col">metric</th>{header}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _loo_overview(ids: ElementIds, report: Report) -> str:
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


def overview_section(ids: ElementIds, report: Report) -> str:
    """The overview: the headline table, the LOO overview and every set's warnings.

    Parameters
    ----------
    ids : ElementIds
        The page's element ids; the LOO chart takes the next one.
    report : Report
        The analysis report.

    Returns
    -------
    str
        The ``<section id="overview">`` element.
    """
    all_warnings = "".join(
        f"<li><strong>{escaped(s.name)}</strong>: {escaped(w)}</li>"
        for s in report.sets
        for w in s.warnings
    )
    warnings_html = (
        f'<h3>Warnings</h3><ul class="warnings">{all_warnings}</ul>' if all_warnings else ""
    )
    return (
        f'<section id="overview"><h2>Overview</h2><div class="row">{_headline_table(report)}'
        f"{_loo_overview(ids, report)}</div>{warnings_html}</section>"
    )
