"""The report page the service serves at ``GET /v1/jobs/{id}/report.html``.

The page itself is drawn by :mod:`htmlreport`, the same renderer as
``nnkgeo analyze --html``: one self-contained file with inline SVG plots that loads
nothing from anywhere, served with a Content-Security-Policy that forbids it, so it can
be saved and opened offline.

Each set's 2-D map was computed once by the worker at the end of the job and stored as
a small blob next to the set's graphs (:mod:`htmlreport.embedding_map`, at most a few thousand
points): the API reads that blob and never a set's embeddings. The page is rendered on
each request rather than stored whole because a cached job's page names the job that
was asked for, not the one that made the result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from api_schemas import Report
from htmlreport import CONTENT_SECURITY_POLICY, EmbeddingMap
from htmlreport import render_report_html as _render
from htmlreport.embedding_map import read_embedding_map
from jobstate.blobs import BlobStore
from jobstate.records import GraphFiles

__all__ = ["CONTENT_SECURITY_POLICY", "ReportPage", "load_report_page", "render_report_html"]

NO_STORED_MAP_NOTE = (
    "Not available: no 2-D map was stored with this report (reports made before the"
    " service stored maps have none)."
)
MAP_GONE_NOTE = "Not available: the file of this set's 2-D map has expired."
MAP_UNREADABLE_NOTE = "Not available: the stored 2-D map could not be read."

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportPage:
    """What the page of one report draws: the report, and each set's map or a note."""

    report: Report
    maps: dict[str, EmbeddingMap]
    map_notes: dict[str, str]


def load_report_page(
    report: Report, graphs: Mapping[str, GraphFiles], blobs: BlobStore
) -> ReportPage:
    """The report with the stored 2-D map of each of its sets, or the note on why a set
    has none.

    Parameters
    ----------
    report : Report
        The job's report.
    graphs : mapping of set name to GraphFiles
        The result's blobs by set; ``map`` names the set's map blob.
    blobs : BlobStore
        Where the blobs are.

    Returns
    -------
    ReportPage
        ``maps`` holds the sets with a readable map; ``map_notes`` the note each other
        set's map figure shows instead.
    """
    maps: dict[str, EmbeddingMap] = {}
    notes: dict[str, str] = {}
    for set_report in report.sets:
        name = set_report.name
        files = graphs.get(name)
        if files is None or files.map is None:
            notes[name] = NO_STORED_MAP_NOTE
            continue
        try:
            # read_embedding_map bounds what it inflates (MAP_FILE_MAX_BYTES).
            with blobs.path_of(files.map).open("rb") as file:
                maps[name] = read_embedding_map(file)
        except FileNotFoundError:
            notes[name] = MAP_GONE_NOTE
        except (OSError, ValueError) as error:
            logger.error("the map blob %s of set %r cannot be read: %s", files.map, name, error)
            notes[name] = MAP_UNREADABLE_NOTE
    return ReportPage(report=report, maps=maps, map_notes=notes)


def render_report_html(page: ReportPage, *, job_id: str) -> str:
    """The page of job ``job_id``'s report.

    A cached job's report is the stored one, made for another job id: the page names
    the job that was asked for.
    """
    report = page.report
    if report.job_id != job_id:
        report = report.model_copy(update={"job_id": job_id})
    return _render(
        report, maps=page.maps, map_notes=page.map_notes, title=f"nnkgeo report {job_id}"
    )
