"""/v1/jobs: submit, poll, list, cancel, and fetch reports and graphs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response, status
from fastapi.responses import HTMLResponse, StreamingResponse

from api_schemas import JobCreate, JobList, JobOut, Report
from api_schemas.report import REPORT_MAP_MAX_POINTS
from jobstate.problems import problem_type
from service.deps import CurrentTenant, JobServiceDep
from service.errors import media_type_of, problem_responses, unsupported_media_type
from service.html import CONTENT_SECURITY_POLICY, PAGE_NOT_STORED_SLUG
from service.jobs import RETRY_AFTER_S, GraphKind

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(description="A job id, as returned when it was submitted.")]
_CACHE_CONTROL = "private, max-age=0, must-revalidate"


def require_json(
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    media_type = media_type_of(content_type)
    if not (media_type == "application/json" or media_type.endswith("+json")):
        raise unsupported_media_type(expected="application/json", got=content_type)


def _job_headers(job: JobOut) -> dict[str, str]:
    headers = {"Location": job.links.self}
    if not job.status.finished:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return headers


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    candidates = [candidate.strip() for candidate in if_none_match.split(",")]
    # If-None-Match uses the weak comparison (RFC 9110, 13.1.2).
    return "*" in candidates or etag in (c.removeprefix("W/") for c in candidates)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    summary="Submit an analysis job",
    description=(
        "Validates the whole request against the uploaded datasets before queueing. When "
        "the same inputs and params were analysed before (same bytes, same algorithm "
        "version), the answer is a job that has already succeeded, with `cached: true`. "
        "With an `Idempotency-Key`, repeating the same body returns the first job."
    ),
    dependencies=[Depends(require_json)],
    responses=problem_responses(400, 401, 403, 409, 413, 415, 422, 429, 503),
)
def submit_job(
    body: JobCreate,
    response: Response,
    tenant: CurrentTenant,
    jobs: JobServiceDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Makes retries safe: the same key and body return the same job.",
        ),
    ] = None,
) -> JobOut:
    submission = jobs.submit(tenant=tenant, request=body, idempotency_key=idempotency_key)
    response.headers.update(_job_headers(submission.job))
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return submission.job


@router.get(
    "",
    response_model=JobList,
    summary="The tenant's jobs, newest first",
    responses=problem_responses(401, 422),
)
def list_jobs(
    tenant: CurrentTenant,
    jobs: JobServiceDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=64, description="`next_cursor` of the previous page.")
    ] = None,
) -> JobList:
    return jobs.list(tenant=tenant, limit=limit, cursor=cursor or None)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="A job's status and progress",
    description="Carries `Retry-After` while the job is queued or running.",
    responses=problem_responses(401, 404),
)
def get_job(
    job_id: JobId, response: Response, tenant: CurrentTenant, jobs: JobServiceDep
) -> JobOut:
    job = jobs.get(tenant=tenant, job_id=job_id)
    response.headers.update(_job_headers(job))
    return job


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    summary="Cancel a job",
    description=(
        "A queued job is canceled at once; a running job stops at its next progress "
        "checkpoint (poll it until `canceled`). 409 once it has succeeded or failed."
    ),
    responses=problem_responses(401, 404, 409),
)
def cancel_job(
    job_id: JobId, response: Response, tenant: CurrentTenant, jobs: JobServiceDep
) -> JobOut:
    job = jobs.cancel(tenant=tenant, job_id=job_id)
    response.headers.update(_job_headers(job))
    return job


@router.get(
    "/{job_id}/report",
    response_model=Report,
    summary="The JSON report of a succeeded job",
    description="Carries a strong `ETag`; send it as `If-None-Match` to get 304 when unchanged.",
    responses={
        304: {"description": "Not modified (If-None-Match matched the ETag)."},
        **problem_responses(401, 404, 409, 410),
    },
)
def get_report(
    job_id: JobId,
    tenant: CurrentTenant,
    jobs: JobServiceDep,
    if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    report = jobs.report(tenant=tenant, job_id=job_id)
    headers = {"ETag": report.etag, "Cache-Control": _CACHE_CONTROL}
    if _etag_matches(if_none_match, report.etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    # The stored bytes are served as they are: re-serialising would change the ETag.
    return Response(content=report.json, media_type="application/json", headers=headers)


_REPORT_PAGE_PROBLEMS = problem_responses(401, 404, 409, 410)
# The page's 404 has a second cause, which the client can remedy.
_REPORT_PAGE_PROBLEMS[404]["description"] = (
    f"No such job for this tenant; or (`{problem_type(PAGE_NOT_STORED_SLUG)}`) its result "
    "was stored without a page, before the service stored report pages: submit the job again."
)


@router.get(
    "/{job_id}/report.html",
    response_class=HTMLResponse,
    summary="The report as a self-contained HTML page",
    description=(
        "Drawn once by the worker at the end of the job, from the report and each set's 2-D"
        f" map (a seeded sample of at most {REPORT_MAP_MAX_POINTS:,} points), and stored with"
        " the result."
    ),
    responses=_REPORT_PAGE_PROBLEMS,
)
def get_report_html(job_id: JobId, tenant: CurrentTenant, jobs: JobServiceDep) -> HTMLResponse:
    return HTMLResponse(
        jobs.report_page(tenant=tenant, job_id=job_id),
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": _CACHE_CONTROL,
        },
    )


@router.get(
    "/{job_id}/graphs/{set_name}",
    response_class=StreamingResponse,
    summary="A set's NNK graph as a scipy.sparse CSR .npz file",
    description=(
        "`symmetric` (default) is the graph A, `directed` the weights W (row i holds theta_i)."
        " Load with `scipy.sparse.load_npz`."
    ),
    responses={
        200: {
            "description": "The graph, as written by scipy.sparse.save_npz.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        **problem_responses(401, 404, 409, 410),
    },
)
def get_graph(
    job_id: JobId,
    set_name: Annotated[str, Path(description="The set's name, as given in the job.")],
    tenant: CurrentTenant,
    jobs: JobServiceDep,
    kind: Annotated[GraphKind, Query(description="Which graph.")] = "symmetric",
) -> StreamingResponse:
    graph = jobs.graph_file(tenant=tenant, job_id=job_id, set_name=set_name, kind=kind)
    # Streamed from the blob store (S3 or a local directory); the API keeps no copy.
    return StreamingResponse(
        graph.chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(graph.size),
            "Content-Disposition": f'attachment; filename="{job_id}-{set_name}-{kind}.npz"',
            "Cache-Control": _CACHE_CONTROL,
        },
    )
