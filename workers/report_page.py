"""The report page of a job, drawn once by the worker at the end of the job.

Each set's 2-D map is computed here, where the embeddings are (those of an embed or
study job exist only in this process), and the page is drawn by :mod:`htmlreport`, the
renderer of ``nnkgeo analyze --html``. The API serves the stored page and never reads
embeddings nor imports the renderer.

The page names the job that made it (``report.job_id``, the id of its result). A cached
job shows another job's result: the API puts the requested id in place of that one.
Both are job ids, made of ``[a-z0-9_]`` (`jobstate.records.JOB_ID_PATTERN`), so the swap
needs no escaping, and the maker's id cannot otherwise occur in the page: it was drawn
at random after the job's inputs and set names were fixed.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from api_schemas import Report
from api_schemas.report import REPORT_MAP_MAX_POINTS
from htmlreport import render_report_html
from htmlreport.embedding_map import compute_embedding_map, read_embedding_map, write_embedding_map
from jobstate.blobs import BlobStore
from jobstate.errors import InvalidInputError
from jobstate.records import SetInput
from workers.geometry import EmbeddingSet
from workers.inputs import load_set

NO_MAP_NOTE = "Not available: the 2-D map of this set could not be computed."

logger = logging.getLogger(__name__)


def embedding_map_files(
    report: Report,
    sets: Sequence[EmbeddingSet | SetInput],
    *,
    blobs: BlobStore,
    max_array_bytes: int,
) -> dict[str, bytes]:
    """Each reported set's 2-D map, as the bytes of its map file.

    Parameters
    ----------
    report : Report
        The job's report; its suspects are always drawn.
    sets : sequence of EmbeddingSet or SetInput
        The analysed sets, or their inputs to read again (a sharded job's assembly). A
        ``SetInput`` is loaded memory-mapped, one set at a time: only the sampled rows are
        read.
    blobs : BlobStore
        Where the inputs are.
    max_array_bytes : int
        The most one input array may hold (NNKGEO_MAX_ARRAY_BYTES).

    Returns
    -------
    dict of set name to bytes
        Files that :func:`htmlreport.embedding_map.read_embedding_map` reads. A set whose
        map cannot be made is logged and left out: its page then says so, and the job's
        numbers stand.
    """
    reports = {set_report.name: set_report for set_report in report.sets}
    files: dict[str, bytes] = {}
    for item in sets:
        set_report = reports.get(item.name)
        if set_report is None:
            continue
        try:
            embedding_set = (
                item
                if isinstance(item, EmbeddingSet)
                else load_set(blobs, item, max_array_bytes=max_array_bytes)
            )
            embedding_map = compute_embedding_map(
                embedding_set.embeddings,
                embedding_set.labels,
                suspects=[suspect.index for suspect in set_report.suspects],
                max_points=REPORT_MAP_MAX_POINTS,
            )
        except (InvalidInputError, OSError, ValueError, np.linalg.LinAlgError) as error:
            logger.warning("job %s: set %s gets no 2-D map: %s", report.job_id, item.name, error)
            continue
        file = io.BytesIO()
        write_embedding_map(file, embedding_map)
        files[item.name] = file.getvalue()
    return files


def render_report_page(report: Report, map_files: Mapping[str, bytes]) -> bytes:
    """The job's page (UTF-8 HTML), drawing each set's map from its file.

    The maps are drawn as read back from their files, not as computed: the page is then
    exactly the one that the stored map blobs give.

    Parameters
    ----------
    report : Report
        The job's report; ``job_id`` names the job that made it.
    map_files : mapping of set name to bytes
        What :func:`embedding_map_files` made; a set without one shows
        :data:`NO_MAP_NOTE`.

    Returns
    -------
    bytes
        The page, self-contained (see :func:`htmlreport.render_report_html`).
    """
    maps = {name: read_embedding_map(io.BytesIO(data)) for name, data in map_files.items()}
    notes = {s.name: NO_MAP_NOTE for s in report.sets if s.name not in maps}
    page = render_report_html(
        report, maps=maps, map_notes=notes, title=f"nnkgeo report {report.job_id}"
    )
    return page.encode("utf-8")
