"""The report page the service serves at ``GET /v1/jobs/{id}/report.html``.

The page itself is drawn by :mod:`nnkgeo.html_report`, the same renderer as
``nnkgeo analyze --html``: one self-contained file with inline SVG plots that loads
nothing from anywhere, served with a Content-Security-Policy that forbids it, so it can
be saved and opened offline.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from api_schemas import Report
from nnkgeo.html_report import CONTENT_SECURITY_POLICY
from nnkgeo.html_report import render_report_html as _render

__all__ = ["CONTENT_SECURITY_POLICY", "render_report_html"]


def render_report_html(
    report: Report,
    *,
    job_id: str,
    embeddings: Mapping[str, np.ndarray] | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
) -> str:
    """The page of job ``job_id``'s report.

    A cached job's report is the stored one, made for another job id: the page names
    the job that was asked for. ``embeddings`` and ``labels`` (by set name; memory-mapped
    arrays are fine, only a sample is read) add the 2-D map of each set; without them
    the page says the map is not available.
    """
    if report.job_id != job_id:
        report = report.model_copy(update={"job_id": job_id})
    return _render(report, embeddings=embeddings, labels=labels, title=f"nnkgeo report {job_id}")
