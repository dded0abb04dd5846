"""One set's section of the page: cards, warnings, plots, suspects and per-class numbers."""

from __future__ import annotations

from api_schemas import ClassMetrics, SetReport
from htmlreport.charts import bar_chart, captioned_figure, card
from htmlreport.embedding_map import EmbeddingMap
from htmlreport.sections.map_figure import map_figure
from htmlreport.sections.vocabulary import LOO_SERIES, REGIME_TEXT, fact_name, fact_value
from htmlreport.svg import ElementIds
from htmlreport.text import escaped, fmt

__all__ = ["MAX_CLASSES_SHOWN", "MAX_SUSPECT_ROWS", "set_section"]

MAX_CLASSES_SHOWN = 30
"""Per-class charts show at most this many classes: those with the highest LOO error."""

MAX_SUSPECT_ROWS = 500
"""The suspects table shows at most this many rows (the JSON report has them all)."""


def _cards(set_report: SetReport) -> str:
    loo, homogeneity = set_report.loo_error, set_report.homogeneity
    cards = [
        ("LOO error, NNK weighted", fmt(loo.nnk_weighted if loo else None)),
        ("pure patch fraction", fmt(homogeneity.pure_patch_fraction if homogeneity else None)),
        ("mean NNK degree", fmt(set_report.nnk_degree.mean)),
        ("intrinsic dim. (TwoNN)", fmt(set_report.intrinsic_dimension.twonn, 3)),
    ]
    html = [card(label, value) for label, value in cards]
    if set_report.regime is not None:
        html.append(
            f'<div class="card"><div class="value"><span class="badge regime-'
            f'{escaped(set_report.regime)}">{escaped(set_report.regime)}</span></div>'
            f'<div class="label">{escaped(REGIME_TEXT.get(set_report.regime, "regime"))}'
            "</div></div>"
        )
    return f'<div class="card-row">{"".join(html)}</div>'


def _interval(bounds: list[float] | None) -> str:
    return "" if bounds is None else f" [{fmt(bounds[0], 3)}, {fmt(bounds[1], 3)}]"


def _errors_table(set_report: SetReport) -> str:
    """LOO errors (with Wilson 95 % intervals) beside the held-out ones, then the facts
    beside them: McNemar on the queries, NC1, the linear probe."""
    loo, held_out = set_report.loo_error, set_report.out_of_sample
    held_errors = held_out.error if held_out is not None else None
    notes: list[str] = []
    if set_report.regime_uncertain:
        notes.append(
            "The regime is uncertain: a 95 % interval of an NNK LOO error contains the "
            "threshold 0.01."
        )
    if held_out is not None and held_out.mcnemar is not None:
        test = held_out.mcnemar.weighted_vs_unweighted
        notes.append(
            f"Held-out McNemar, NNK weighted vs unweighted: {test.b:,} queries only weighted "
            f"gets right, {test.c:,} only unweighted; exact p = {fmt(test.p_value, 3)}."
        )
    if held_out is not None:
        notes.append(
            f"{held_out.n:,} query points; mean NNK degree {fmt(held_out.nnk_degree.mean)}, "
            f"mean reconstruction error {fmt(held_out.reconstruction_error.mean)}."
        )
    collapse = set_report.neural_collapse
    if collapse is not None:
        notes.append(f"Neural collapse NC1 = tr(Σ_W Σ_B⁺)/C: {fmt(collapse.nc1)}.")
    probe = set_report.baselines.linear_probe if set_report.baselines is not None else None
    if probe is not None:
        how = "on the query points" if probe.method == "held_out" else "by 5-fold cross-validation"
        notes.append(f"Linear-probe error (logistic regression), {how}: {fmt(probe.error)}.")
    if loo is None and held_errors is None and not notes:
        return ""
    table = ""
    if loo is not None or held_errors is not None:
        intervals = {
            "nnk_weighted": loo.nnk_weighted_ci95 if loo is not None else None,
            "nnk_unweighted": loo.nnk_unweighted_ci95 if loo is not None else None,
        }
        rows = "".join(
            f'<tr><th scope="row">{escaped(name)}</th>'
            f"<td>{fmt(getattr(loo, key) if loo is not None else None)}"
            f"{escaped(_interval(intervals.get(key)))}</td>"
            f"<td>{fmt(getattr(held_errors, key) if held_errors is not None else None)}</td></tr>"
            for key, name, _ in LOO_SERIES
        )
        table = (
            '<div class="panel"><table><caption>Prediction errors: leave-one-out (95 % '
            'interval) and held-out queries</caption><thead><tr><th scope="col">rule</th>'
            '<th scope="col">LOO</th><th scope="col">held-out</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>"
        )
    paragraphs = "".join(f'<p class="meta">{escaped(note)}</p>' for note in notes)
    return f"<h3>Errors</h3>{table}{paragraphs}"


def _degree_histogram(ids: ElementIds, set_report: SetReport) -> str:
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
    return captioned_figure(
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


def _per_class_charts(ids: ElementIds, set_report: SetReport) -> list[str]:
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
        captioned_figure("Homogeneity per class", homogeneity_svg, note),
        captioned_figure("Leave-one-out errors per class", loo_svg, note),
    ]


def _per_class_table(set_report: SetReport) -> str:
    if not set_report.per_class:
        return ""
    rows = "".join(
        f'<tr><th scope="row">{escaped(c.label)}</th><td>{fmt(c.n)}</td>'
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
        f"<tr><td>{rank}</td><td>{s.index}</td><td>{escaped(s.id if s.id is not None else '–')}"
        f"</td><td>{escaped(s.label)}</td><td>{escaped(s.predicted)}</td><td>{s.score:.3f}</td></tr>"
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
    items = "".join(f"<li>{escaped(w)}</li>" for w in set_report.warnings)
    return f'<ul class="warnings" aria-label="warnings">{items}</ul>'


def set_section(
    ids: ElementIds,
    position: int,
    set_report: SetReport,
    embedding_map: EmbeddingMap | str,
    *,
    suspects_asked: int,
) -> str:
    """One set's section: cards, warnings, plots, suspects and per-class numbers.

    Parameters
    ----------
    ids : ElementIds
        The page's element ids; each plot takes the next one.
    position : int
        The set's 1-based position in the report (its anchor is ``set-<position>``).
    set_report : SetReport
        The set's report.
    embedding_map : EmbeddingMap or str
        The set's 2-D map, or the note its map figure shows instead.
    suspects_asked : int
        The job's ``suspects_top``, to say why a set has no suspects.

    Returns
    -------
    str
        The ``<section id="set-<position>">`` element.
    """
    figures = [_degree_histogram(ids, set_report), *_per_class_charts(ids, set_report)]
    figures.append(map_figure(ids, set_report, embedding_map))
    extra = ""
    if set_report.extra:
        extra = (
            '<p class="meta">'
            + " · ".join(
                f"{escaped(fact_name(k))}: {escaped(fact_value(k, v))}"
                for k, v in set_report.extra.items()
            )
            + "</p>"
        )
    return (
        f'<section id="set-{position}"><h2>Set {position}: {escaped(set_report.name)}</h2>'
        f'<p class="meta">{set_report.n_points:,} points × {set_report.dim:,} dimensions'
        + (f" · {set_report.n_classes:,} classes" if set_report.n_classes is not None else "")
        + f"</p>{extra}{_cards(set_report)}{_warnings_list(set_report)}"
        f'<div class="grid">{"".join(figures)}</div>'
        f"{_errors_table(set_report)}"
        f"{_suspects_table(set_report, asked=suspects_asked)}"
        f"{_per_class_table(set_report)}</section>"
    )
