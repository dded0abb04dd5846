"""The report as a self-contained HTML page: headline numbers of each set in a table.

Every value is escaped; the page loads nothing from anywhere (served with a CSP that
forbids it), so it can be saved and opened offline.
"""

from __future__ import annotations

from html import escape

from api_schemas import Report, SetReport

CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'"

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
caption { text-align: left; font-weight: bold; margin-bottom: .5em; }
.meta { color: #666; }
"""


def _number(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _headline(set_report: SetReport) -> dict[str, str]:
    loo, homogeneity = set_report.loo_error, set_report.homogeneity
    return {
        "points": _number(set_report.n_points),
        "dim": _number(set_report.dim),
        "classes": _number(set_report.n_classes),
        "edges (directed)": _number(set_report.graph.n_edges_directed),
        "edges (symmetric)": _number(set_report.graph.n_edges_symmetric),
        "mean NNK degree": _number(set_report.nnk_degree.mean),
        "LOO error, NNK weighted": _number(loo.nnk_weighted if loo else None),
        "LOO error, kNN majority": _number(loo.knn_unweighted if loo else None),
        "NNK homogeneity": _number(homogeneity.nnk_mean if homogeneity else None),
        "pure patches": _number(homogeneity.pure_patch_fraction if homogeneity else None),
        "mean reconstruction error": _number(set_report.reconstruction_error.mean),
        "intrinsic dim. (TwoNN)": _number(set_report.intrinsic_dimension.twonn, 3),
        "regime": set_report.regime or "–",
    }


def render_report_html(report: Report, *, job_id: str) -> str:
    rows = [_headline(set_report) for set_report in report.sets]
    columns = list(rows[0]) if rows else []
    header = "".join(f"<th>{escape(column)}</th>" for column in ["set", *columns])
    body = "".join(
        "<tr><td>"
        + escape(set_report.name)
        + "</td>"
        + "".join(f"<td>{escape(row[column])}</td>" for column in columns)
        + "</tr>"
        for set_report, row in zip(report.sets, rows, strict=True)
    )
    warnings = [
        f"<li>{escape(s.name)}: {escape(warning)}</li>"
        for s in report.sets
        for warning in s.warnings
    ]
    warnings_html = f"<h2>Warnings</h2><ul>{''.join(warnings)}</ul>" if warnings else ""
    params = ", ".join(
        f"{escape(name)}={escape(str(value))}" for name, value in report.params.model_dump().items()
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>nnkgeo report {escape(job_id)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>NNK geometry report</h1>"
        f'<p class="meta">job {escape(job_id)} · algorithm version '
        f"{escape(report.algorithm_version)} · schema {escape(report.schema_version)}</p>"
        f'<p class="meta">params: {params}</p>'
        f"<table><caption>Headline numbers per set</caption>"
        f"<thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"
        f"{warnings_html}"
        "</body></html>\n"
    )
