"""The report as one self-contained HTML page: the document, its stylesheet, its policy.

The page loads nothing from anywhere: no script, no font, no image, no stylesheet link.
It carries its own Content-Security-Policy (``default-src 'none'``), so a saved copy
stays offline too. The sections it stacks are in :mod:`htmlreport.sections`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from api_schemas import Report
from api_schemas.params import ReportedParams
from api_schemas.report import REPORT_PAGE_CONTENT_SECURITY_POLICY
from htmlreport.embedding_map import EmbeddingMap
from htmlreport.sections.compare import (
    compare_section,
    drift_section,
    overlap_consecutive_figure,
)
from htmlreport.sections.comparison import comparison_section
from htmlreport.sections.guide import guide_section
from htmlreport.sections.map_figure import map_of_set
from htmlreport.sections.overview import overview_section
from htmlreport.sections.set_detail import set_section
from htmlreport.sections.study import study_section
from htmlreport.svg import ElementIds
from htmlreport.text import escaped, shorten

__all__ = ["ALGORITHM_DOC", "CONTENT_SECURITY_POLICY", "param_chip_value", "render_report_html"]

CONTENT_SECURITY_POLICY = REPORT_PAGE_CONTENT_SECURITY_POLICY

ALGORITHM_DOC = "docs/ALGORITHM.md"
"""Where every metric is defined: a file of the nnkgeo repository (the page links nowhere,
so it names the file)."""

# What an unset parameter means, in the words of its default rather than Python's None.
_UNSET_MEANS = {"sigma": "auto"}


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


def param_chip_value(name: str, value: object) -> str:
    """A parameter's value as its chip shows it: in words, not as a Python literal.

    None is what the parameter does when unset (``sigma``: "auto"; anything else:
    "default"), booleans are "yes" or "no", lists are comma-separated ("none" when
    empty), and everything else is its plain text.

    Examples
    --------
    >>> param_chip_value("sigma", None), param_chip_value("ignore_identical", False)
    ('auto', 'no')
    >>> param_chip_value("baselines", []), param_chip_value("k", 30)
    ('none', '30')
    """
    if value is None:
        return _UNSET_MEANS.get(name, "default")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(param_chip_value(name, item) for item in value) or "none"
    return str(value)


def _param_chips(report: Report) -> str:
    """One ``<code>`` chip per parameter, with its meaning as a tooltip.

    A parameter that cannot apply is left out: ``sigma`` under the cosine kernel.
    """
    values = report.params.model_dump()
    chips = []
    for name, value in values.items():
        if name == "sigma" and values.get("kernel") != "gaussian" and value is None:
            continue
        field = ReportedParams.model_fields.get(name)
        tooltip = f' title="{escaped(field.description)}"' if field and field.description else ""
        chips.append(
            f"<code{tooltip}>{escaped(name)}={escaped(param_chip_value(name, value))}</code>"
        )
    return " ".join(chips)


def _provenance(inputs: Sequence[tuple[str, str]] | None, generated_at: datetime | None) -> str:
    """The line that says what the page was made from and when (local reports)."""
    parts = [f"{escaped(role)}: <code>{escaped(name)}</code>" for role, name in inputs or ()]
    if generated_at is not None:
        when = generated_at if generated_at.tzinfo else generated_at.replace(tzinfo=UTC)
        stamp = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        parts.append(
            f'generated <time datetime="{when.astimezone(UTC).isoformat()}">{stamp}</time>'
        )
    return f'<p class="meta">{" · ".join(parts)}</p>' if parts else ""


def render_report_html(
    report: Report,
    *,
    maps: Mapping[str, EmbeddingMap] | None = None,
    map_notes: Mapping[str, str] | None = None,
    embeddings: Mapping[str, np.ndarray] | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
    title: str | None = None,
    inputs: Sequence[tuple[str, str]] | None = None,
    generated_at: datetime | None = None,
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
        instead (default :data:`~htmlreport.sections.map_figure.NO_EMBEDDINGS_NOTE`).
    embeddings : mapping of set name to an (N, d) array, optional
        The embeddings of each set without a map in ``maps``, to compute its map here
        (a seeded sample of at most :data:`~htmlreport.embedding_map.MAP_MAX_POINTS`
        points; memory-mapped arrays are read only there). A set whose row count
        differs from the report's gets a note instead of a map.
    labels : mapping of set name to an (N,) array, optional
        Labels to colour those maps by; without them the points are grey.
    title : str, optional
        The page title; default "nnkgeo report" with the job id when there is one.
    inputs : sequence of (str, str), optional
        What the report was computed from, as (role, name) pairs shown under the title:
        ``[("embeddings", "layer4.npy"), ("labels", "y.npy")]``. A local run names its
        files; a job's page has its job id instead.
    generated_at : datetime, optional
        When the report was made, shown under the title in UTC (a naive datetime is
        taken as UTC). Left out by default, so that the same report renders to the same
        bytes.

    Returns
    -------
    str
        The HTML document. It loads nothing (no script, font, image or external
        stylesheet) and declares a Content-Security-Policy that forbids it.
    """
    ids = ElementIds()
    page_title = title or (f"nnkgeo report {report.job_id}" if report.job_id else "nnkgeo report")
    params = _param_chips(report)
    nav = ['<a href="#overview">Overview</a>']
    if report.comparison is not None:
        nav.append('<a href="#comparison">Comparison</a>')
    if report.study is not None:
        nav.append('<a href="#study">Study</a>')
    if report.compare is not None:
        nav.append('<a href="#compare">Compare</a>')
    if report.drift is not None:
        nav.append('<a href="#drift">Drift</a>')
    nav += [
        f'<a href="#set-{i + 1}">{escaped(shorten(s.name, 32))}</a>'
        for i, s in enumerate(report.sets)
    ]
    nav.append('<a href="#guide">How to read</a>')
    job = f"job <code>{escaped(report.job_id)}</code> · " if report.job_id else ""
    sections = "".join(
        set_section(
            ids,
            i + 1,
            s,
            map_of_set(s, maps=maps, map_notes=map_notes, embeddings=embeddings, labels=labels),
            suspects_asked=report.params.suspects_top,
        )
        for i, s in enumerate(report.sets)
    )
    # The set sections take their figure ids first, then the overview, then the
    # comparison: the order the page has always numbered them in, so that the same
    # report renders to the same bytes.
    overview = overview_section(ids, report)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{escaped(CONTENT_SECURITY_POLICY)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escaped(page_title)}</title><style>{_STYLE}</style></head><body><main>"
        f"<header><h1>{escaped(page_title)}</h1>"
        f'<p class="meta">{job}{len(report.sets)} embedding set'
        f"{'s' if len(report.sets) != 1 else ''} · algorithm version"
        f" {escaped(report.algorithm_version)} · report schema {escaped(report.schema_version)}</p>"
        f"{_provenance(inputs, generated_at)}"
        f'<p class="meta">parameters: {params}</p>'
        f'<nav aria-label="contents">{" ".join(nav)}</nav></header>'
        f"{overview}{comparison_section(ids, report)}{study_section(ids, report)}"
        # Their figures take ids after the comparison's and the study's (f-strings run left
        # to right), so pages without these sections keep their bytes.
        f"{compare_section(ids, report)}{drift_section(ids, report)}"
        f"{overlap_consecutive_figure(ids, report)}{sections}"
        f"{guide_section()}"
        "<footer>Made by nnkgeo. This page is self-contained: it loads nothing from the"
        f" network. Every metric is defined in {ALGORITHM_DOC} in the nnkgeo repository."
        "</footer>"
        "</main></body></html>\n"
    )
