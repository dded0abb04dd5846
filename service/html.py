"""The report page the service serves at ``GET /v1/jobs/{id}/report.html``.

The worker draws the page once, at the end of the job (`workers.report_page`), and
stores it as a blob that the result names (`ResultRecord.page`): the API reads that
blob, and neither reads embeddings nor imports the renderer. The page is one
self-contained file with inline SVG plots that loads nothing from anywhere, served with
a Content-Security-Policy that forbids it, so it can be saved and opened offline.

A cached job's result was made by another job: its page names that job, and the page
served names the job that was asked for.
"""

from __future__ import annotations

from api_schemas.report import REPORT_PAGE_CONTENT_SECURITY_POLICY
from jobstate.blobs import BlobStore
from jobstate.records import ResultRecord
from service.errors import ProblemError

# The header the page is served with: the policy it also declares in its own <meta>.
CONTENT_SECURITY_POLICY = REPORT_PAGE_CONTENT_SECURITY_POLICY

PAGE_NOT_STORED_SLUG = "report-page-not-stored"


def read_report_page(result: ResultRecord, blobs: BlobStore, *, job_id: str) -> bytes:
    """The stored page of ``result``, naming job ``job_id`` (UTF-8 HTML).

    Parameters
    ----------
    result : ResultRecord
        The result of job ``job_id`` (made by job ``result.id``).
    blobs : BlobStore
        Where the page is.
    job_id : str
        The job asked for; a job id (`jobstate.records.JOB_ID_PATTERN`), as is
        ``result.id``, so that one stands in for the other with no escaping.

    Returns
    -------
    bytes

    Raises
    ------
    ProblemError
        404 when the result was stored without a page (before the worker drew them);
        410 when the page's file has expired.
    """
    if result.page is None:
        raise ProblemError(
            404,
            f"The report page of job {job_id} was not stored: its result was made before "
            "the service stored report pages. Submit the job again for a page; its JSON "
            "report is still served.",
            slug=PAGE_NOT_STORED_SLUG,
            title="Report page not stored",
        )
    try:
        page = blobs.read_bytes(result.page)
    except FileNotFoundError:
        raise ProblemError(
            410, f"The report page of job {job_id} has expired.", slug="result-expired"
        ) from None
    if result.id == job_id:
        return page
    # The page names the job that made the result; the maker's id was drawn at random
    # after its inputs were fixed, so it occurs in the page only where it names the job.
    return page.replace(result.id.encode("ascii"), job_id.encode("ascii"))
