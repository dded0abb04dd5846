"""The study: metrics against model size with interval bands, and a verdict per claim.

Only a study's report has one (:attr:`api_schemas.Report.study`). The charts put the
parameter count on a log axis and draw each metric's mean over the fitted seeds as a
line, its 95 % t-interval as a band; leave-one-out and held-out errors sit side by side
on one scale. A metric that is the same for every model gets no chart (its value is in
the table), and the fitted flag is a column of the table, never a line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from api_schemas import Report
from api_schemas.study import Study, StudyClaim, StudyModelSummary
from htmlreport.charts import LINE_COLOURS, LINE_DASHES, captioned_figure
from htmlreport.svg import (
    ElementIds,
    Legend,
    LinearScale,
    accessible_svg,
    axis_titles,
    nice_ticks,
    tick_label,
    y_axis,
)
from htmlreport.text import coord, escaped, fmt

__all__ = ["study_section"]

METRIC_NAMES = {
    "homogeneity.pure_patch_fraction": "Pure patch fraction",
    "loo_error.nnk_weighted": "NNK weighted",
    "loo_error.nnk_unweighted": "NNK unweighted",
    "loo_error.knn_unweighted": "kNN majority",
    "out_of_sample.error.nnk_weighted": "NNK weighted",
    "out_of_sample.error.nnk_unweighted": "NNK unweighted",
    "out_of_sample.error.knn_unweighted": "kNN majority",
    "nnk_degree.mean": "Training points",
    "out_of_sample.nnk_degree.mean": "Held-out points",
    "extra.test_accuracy": "Test accuracy",
}
"""How the page names each headline metric in a chart's legend."""

_TABLE_NAMES = {
    "homogeneity.pure_patch_fraction": "pure patches",
    "loo_error.nnk_weighted": "LOO NNK w.",
    "loo_error.nnk_unweighted": "LOO NNK unw.",
    "loo_error.knn_unweighted": "LOO kNN maj.",
    "out_of_sample.error.nnk_weighted": "held-out NNK w.",
    "out_of_sample.error.nnk_unweighted": "held-out NNK unw.",
    "out_of_sample.error.knn_unweighted": "held-out kNN maj.",
    "nnk_degree.mean": "NNK degree",
    "out_of_sample.nnk_degree.mean": "held-out degree",
    "extra.test_accuracy": "test accuracy",
}

_ERROR_PATHS = ("nnk_weighted", "nnk_unweighted", "knn_unweighted")
_ERROR_STYLES = (("#2f6ea8", ""), ("#6a9fd4", "6 3"), ("#e07b24", "2 3"))

VERDICT_TEXT = {
    "supported": "supported",
    "partly": "partly supported",
    "not_supported": "not supported",
}
_VERDICT_CLASS = {
    "supported": "regime-homogeneous",
    "partly": "regime-weighted",
    "not_supported": "regime-not_interpolating",
}
CLAIM_TITLES = {
    "pure_patches_grow": "Pure patches grow with model size",
    "unweighted_catches_up": "Unweighted NNK catches up with weighted NNK",
}


@dataclass(frozen=True)
class _Band:
    """One metric over the models: its name, style, and per model (x, mean, low, high)."""

    name: str
    colour: str
    dash: str
    points: list[tuple[float, float, float | None, float | None]]


def _bands(
    models: Sequence[StudyModelSummary], paths: Sequence[str], styles: Sequence[tuple[str, str]]
) -> list[_Band]:
    bands = []
    for path, (colour, dash) in zip(paths, styles, strict=True):
        points = []
        for model in models:
            metric = model.metrics.get(path)
            if metric is None or metric.mean is None or model.parameters <= 0:
                continue
            low, high = (None, None) if metric.ci95 is None else metric.ci95
            points.append((float(model.parameters), metric.mean, low, high))
        if points:
            bands.append(_Band(METRIC_NAMES.get(path, path), colour, dash, points))
    return bands


def _varies(bands: Sequence[_Band]) -> bool:
    """Whether any value differs from another: a constant metric gets no chart."""
    values = {round(v, 12) for band in bands for p in band.points for v in p[1:] if v is not None}
    return len(values) > 1


def _log_ticks(low: float, high: float) -> list[float]:
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    if last - first <= 2:
        return [m * 10.0**e for e in range(first, last + 1) for m in (1, 2, 5)]
    return [10.0**e for e in range(first, last + 1)]


def _band_chart(
    ids: ElementIds,
    *,
    title: str,
    bands: Sequence[_Band],
    y_title: str,
    y_range: tuple[float, float] | None = None,
    width: float = 560,
    height: float = 300,
) -> str:
    """Lines of means over log10(parameters), each with its interval as a shaded band."""
    xs = [p[0] for band in bands for p in band.points]
    x_low, x_high = min(xs), max(xs)
    ticks_x = [t for t in _log_ticks(x_low, x_high) if x_low / 1.5 <= t <= x_high * 1.5]
    log_low = math.log10(min([x_low, *ticks_x]))
    log_high = math.log10(max([x_high, *ticks_x]))
    if log_high == log_low:
        log_low, log_high = log_low - 0.5, log_high + 0.5
    legend = Legend([(band.name, band.colour, f"line:{band.dash}") for band in bands])
    left, right = 58.0, width - 18
    top = 14.0 + legend.row_height(right - left)
    bottom = height - 46
    if y_range is None:
        values = [v for band in bands for p in band.points for v in p[1:] if v is not None]
        y_range = (min(values), max(values))
    ticks_y = nice_ticks(*y_range)
    sy = LinearScale(ticks_y[0], ticks_y[-1], bottom, top)
    sx = LinearScale(log_low, log_high, left + 12, right - 12)
    body = [y_axis(sy, ticks_y, left, right)]
    for tick in ticks_x:
        x = sx(math.log10(tick))
        body.append(
            f'<g class="tick"><line x1="{coord(x)}" x2="{coord(x)}" y1="{coord(top)}" '
            f'y2="{coord(bottom)}"/><text x="{coord(x)}" y="{coord(bottom + 14)}" '
            f'text-anchor="middle">{escaped(tick_label(tick))}</text></g>'
        )
    body.append(
        f'<line class="axis-line" x1="{coord(left)}" x2="{coord(right)}" y1="{coord(bottom)}" '
        f'y2="{coord(bottom)}"/>'
    )
    for band in bands:
        ranged = [p for p in band.points if p[2] is not None and p[3] is not None]
        if len(ranged) >= 2:
            upper = [f"{coord(sx(math.log10(x)))} {coord(sy(high))}" for x, _, _, high in ranged]
            lower = [f"{coord(sx(math.log10(x)))} {coord(sy(low))}" for x, _, low, _ in ranged]
            body.append(
                f'<polygon points="{" ".join(upper + lower[::-1])}" fill="{band.colour}" '
                'fill-opacity="0.16" stroke="none"/>'
            )
        path = " ".join(
            f"{'L' if i else 'M'}{coord(sx(math.log10(x)))} {coord(sy(mean))}"
            for i, (x, mean, _, _) in enumerate(band.points)
        )
        dash = f' stroke-dasharray="{band.dash}"' if band.dash else ""
        body.append(
            f'<path d="{path}" fill="none" stroke="{band.colour}" stroke-width="2.2"{dash}/>'
        )
        for x, mean, low, high in band.points:
            cx, cy = coord(sx(math.log10(x))), coord(sy(mean))
            interval = "" if low is None else f", 95 % interval [{fmt(low)}, {fmt(high)}]"
            if low is not None and high is not None:
                body.append(
                    f'<line x1="{cx}" x2="{cx}" y1="{coord(sy(low))}" y2="{coord(sy(high))}" '
                    f'stroke="{band.colour}" stroke-width="1.2"/>'
                )
            body.append(
                f'<circle cx="{cx}" cy="{cy}" r="3.5" fill="{band.colour}"><title>'
                f"{escaped(f'{fmt(int(x))} parameters: {band.name} = {fmt(mean)}{interval}')}"
                "</title></circle>"
            )
    body.append(
        axis_titles(
            "parameters (log scale)",
            y_title,
            left=left,
            right=right,
            top=top,
            bottom=bottom,
            x_y=height - 10,
        )
    )
    body.append(legend.render(left, 14, right - left))
    text = "; ".join(
        f"{band.name}: "
        + ", ".join(
            f"{fmt(int(x))} parameters {fmt(mean)}"
            + ("" if low is None else f" [{fmt(low)}, {fmt(high)}]")
            for x, mean, low, high in band.points
        )
        for band in bands
    )
    desc = (
        f"Means over the fitted seeds against the parameter count (log scale), with 95 % "
        f"t-intervals as bands. {text}."
    )
    return accessible_svg(ids, width, height, title, desc, "".join(body))


def _charts(ids: ElementIds, models: Sequence[StudyModelSummary]) -> str:
    if len({model.parameters for model in models}) < 2:
        return ""
    figures = []
    loo = _bands(models, [f"loo_error.{p}" for p in _ERROR_PATHS], _ERROR_STYLES)
    held_out = _bands(models, [f"out_of_sample.error.{p}" for p in _ERROR_PATHS], _ERROR_STYLES)
    if _varies(loo + held_out):
        # One scale for both, so that training and held-out errors compare by eye.
        values = [v for band in loo + held_out for p in band.points for v in p[1:] if v is not None]
        shared = (min(0.0, min(values)), max(values))
        for caption, bands, where in (
            ("Leave-one-out errors", loo, "training points, leave-one-out"),
            ("Held-out errors", held_out, "held-out points against the training graph"),
        ):
            if bands:
                figures.append(
                    captioned_figure(
                        caption,
                        _band_chart(
                            ids,
                            title=f"{caption} against model size",
                            bands=bands,
                            y_title="error",
                            y_range=shared,
                        ),
                        f"Error rates on {where}; bands: 95 % t-intervals over fitted seeds.",
                    )
                )
    singles = (
        ("Pure patch fraction", ["homogeneity.pure_patch_fraction"], "fraction"),
        ("NNK degree", ["nnk_degree.mean", "out_of_sample.nnk_degree.mean"], "NNK neighbours"),
        ("Test accuracy", ["extra.test_accuracy"], "accuracy"),
    )
    for caption, paths, y_title in singles:
        styles = [(LINE_COLOURS[i], LINE_DASHES[i]) for i in range(len(paths))]
        bands = _bands(models, paths, styles)
        if bands and _varies(bands):
            figures.append(
                captioned_figure(
                    caption,
                    _band_chart(
                        ids, title=f"{caption} against model size", bands=bands, y_title=y_title
                    ),
                )
            )
    return f'<div class="grid">{"".join(figures)}</div>' if figures else ""


def _interval_cell(model: StudyModelSummary, path: str) -> str:
    metric = model.metrics.get(path)
    if metric is None or metric.mean is None:
        return "<td>–</td>"
    interval = (
        ""
        if metric.ci95 is None
        else f"<br><small>[{fmt(metric.ci95[0], 3)}, {fmt(metric.ci95[1], 3)}]</small>"
    )
    return f"<td>{fmt(metric.mean)}{interval}</td>"


def _models_table(study: Study) -> str:
    paths = [path for path in study.metrics if any(path in m.metrics for m in study.models)]
    head = "".join(f'<th scope="col">{escaped(_TABLE_NAMES.get(p, p))}</th>' for p in paths)
    rows = []
    for model in study.models:
        unfitted = [seed for seed in model.seed_values if seed not in model.fitted_seeds]
        fitted = f"{len(model.fitted_seeds)} of {model.seeds}"
        if unfitted:
            fitted += f"<br><small>unfitted: {escaped(', '.join(map(str, unfitted)))}</small>"
        cells = "".join(_interval_cell(model, path) for path in paths)
        rows.append(
            f'<tr><th scope="row">{escaped(model.name)}</th><td>{fmt(model.parameters)}</td>'
            f"<td>{fitted}</td>{cells}</tr>"
        )
    return (
        '<div class="panel scroll"><table><caption>Per model: mean over the fitted seeds, '
        '95 % t-interval below</caption><thead><tr><th scope="col">model</th>'
        f'<th scope="col">parameters</th><th scope="col">fitted seeds</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _interval_text(ci95: Sequence[float] | None) -> str:
    return "–" if ci95 is None else f"[{fmt(ci95[0], 3)}, {fmt(ci95[1], 3)}]"


def _claim_evidence(claim: StudyClaim) -> str:
    evidence = claim.evidence
    if "reason" in evidence:
        return f"<p>{escaped(evidence['reason'])}.</p>"
    if claim.id == "pure_patches_grow":
        steps = [*evidence.get("steps", [])]
        if "overall" in evidence and len(steps) > 1:
            steps.append({**evidence["overall"], "overall": True})
        rows = "".join(
            f'<tr><th scope="row">{escaped(step["from"])} → {escaped(step["to"])}'
            f"{' (smallest to largest)' if step.get('overall') else ''}</th>"
            f"<td>{fmt(step.get('mean_difference'))}</td>"
            f"<td>{_interval_text(step.get('ci95'))}</td><td>{fmt(step.get('n_pairs'))}</td></tr>"
            for step in steps
        )
        return (
            '<div class="panel"><table><thead><tr><th scope="col">size step</th>'
            '<th scope="col">mean paired difference</th><th scope="col">95 % interval</th>'
            f'<th scope="col">seed pairs</th></tr></thead><tbody>{rows}</tbody></table></div>'
        )
    rows = []
    for kind, label in (("train", "training points (LOO)"), ("held_out", "held-out points")):
        part = evidence.get(kind)
        if not isinstance(part, dict):
            continue
        for size in ("smallest", "largest"):
            numbers = part.get(size, {})
            rows.append(
                f'<tr><th scope="row">{escaped(label)}, {size}</th>'
                f"<td>{fmt(numbers.get('n'))}</td><td>{fmt(numbers.get('error_weighted'))}</td>"
                f"<td>{fmt(numbers.get('error_unweighted'))}</td>"
                f"<td>{fmt(numbers.get('b'))} / {fmt(numbers.get('c'))}</td>"
                f"<td>{fmt(numbers.get('p_value'), 3)}</td>"
                f"<td>{escaped(str(part.get('status', '')).replace('_', ' '))}</td></tr>"
            )
    return (
        '<div class="panel"><table><thead><tr><th scope="col">points, size</th>'
        '<th scope="col">pooled points</th><th scope="col">NNK weighted error</th>'
        '<th scope="col">NNK unweighted error</th><th scope="col">McNemar b / c</th>'
        '<th scope="col">p-value</th><th scope="col">status</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _claims(study: Study) -> str:
    several_layers = len({claim.layer for claim in study.claims}) > 1
    parts = []
    for claim in study.claims:
        title = CLAIM_TITLES.get(claim.id, claim.id.replace("_", " ").capitalize())
        layer = f" (layer {escaped(claim.layer)})" if several_layers else ""
        badge = (
            f'<span class="badge {_VERDICT_CLASS.get(claim.verdict, "")}">'
            f"{escaped(VERDICT_TEXT.get(claim.verdict, claim.verdict))}</span>"
        )
        parts.append(
            f"<h3>{escaped(title)}{layer}: {badge}</h3><p>{escaped(claim.rule)}</p>"
            f"{_claim_evidence(claim)}"
        )
    return "".join(parts)


def study_section(ids: ElementIds, report: Report) -> str:
    """The study section, or nothing for a report without one.

    Parameters
    ----------
    ids : ElementIds
        The page's element ids; each chart takes the next one.
    report : Report

    Returns
    -------
    str
        ``<section id="study">``: charts of the headline metrics against the parameter
        count (per layer when several are read), the per-model table with intervals and
        fitted seeds, and each claim with its verdict, rule and evidence; an empty string
        when ``report.study`` is None.
    """
    study = report.study
    if study is None:
        return ""
    layers = list(dict.fromkeys(model.layer for model in study.models))
    charts = []
    for layer in layers:
        models = [model for model in study.models if model.layer == layer]
        figures = _charts(ids, models)
        if figures and len(layers) > 1:
            figures = f"<h3>Layer {escaped(layer)}</h3>{figures}"
        charts.append(figures)
    return (
        '<section id="study"><h2>Study over seeds</h2>'
        '<p class="meta">Each model trained once per seed; only the seeds whose model met '
        "its stopping rule (fitted) count. Lines: means; bands and bars: 95 % t-intervals."
        f"</p>{''.join(charts)}{_models_table(study)}<h3>Claims</h3>{_claims(study)}</section>"
    )
