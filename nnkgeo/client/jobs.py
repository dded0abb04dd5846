"""Jobs: the body of a submit, checked before it is sent, and the calls on a job.

A job's sets are given in the API's form or as the shorthand ``{name: (embeddings,
labels)}``; either way the body is validated here with the API's own models, so that a
mistake is named (as the 422 the service would answer) before anything is sent.
:func:`wait_plan` polls a job until it finishes, as the service's ``Retry-After`` says.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import httpx
from pydantic import ValidationError

from api_schemas import (
    AnalysisParams,
    DatasetOut,
    DatasetRef,
    EmbeddingSetSpec,
    JobCreate,
    JobList,
    JobOut,
    JobStatus,
    Problem,
)
from api_schemas.problems import FieldError
from nnkgeo.client.calls import Call, Plan, Sleep, parse_model, path_segment
from nnkgeo.client.progress import ProgressOption, progress_display
from nnkgeo.client.transport import retry_after_s
from nnkgeo.errors import (
    Hint,
    JobCanceledError,
    JobFailedError,
    JobTimeoutError,
    UsageError,
    ValidationProblem,
)

# Used between polls when the service sends no Retry-After.
DEFAULT_POLL_INTERVAL_S = 1.0
# A job queued this long while waited on gets one look at /readyz, and a hint: with no
# worker running, a job stays queued for ever and nothing else would say why.
QUEUED_HINT_AFTER_S = 10.0
START_WORKER = "celery -A workers.celery_app worker"

logger = logging.getLogger("nnkgeo.client")
DatasetLike: TypeAlias = "str | DatasetOut | DatasetRef"
SetInputs: TypeAlias = (
    "str | DatasetOut | DatasetRef | tuple[DatasetLike, DatasetLike | None] "
    "| tuple[DatasetLike, DatasetLike | None, DatasetLike | None]"
)
"""One set in the shorthand: embeddings, or (embeddings, labels[, ids]); each a dataset id,
a DatasetOut, or a DatasetRef naming an array."""
JobSets: TypeAlias = (
    "JobCreate | Sequence[Mapping[str, Any] | EmbeddingSetSpec] | Mapping[str, SetInputs]"
)
ParamsLike: TypeAlias = "AnalysisParams | Mapping[str, Any] | None"


# --------------------------------------------------------------------------- the body


def job_create(sets: JobSets, params: ParamsLike) -> JobCreate:
    """The job body, validated here so that mistakes are named before anything is sent.

    Raises
    ------
    UsageError
        When ``sets`` has none of the accepted forms.
    ValidationProblem
        When the body or the params are invalid: the 422 the service would answer.
    """
    if isinstance(sets, JobCreate):
        if params is not None:
            raise UsageError("pass params inside the JobCreate, not beside it")
        return sets
    if isinstance(sets, Mapping):
        if "embeddings" in sets:
            raise UsageError(
                "sets is one set's spec; pass a list of them, or {name: (embeddings_id, labels_id)}"
            )
        set_specs: list[Any] = [
            _set_from_shorthand(set_name, inputs) for set_name, inputs in sets.items()
        ]
    elif isinstance(sets, str) or not isinstance(sets, Sequence):
        raise UsageError(
            "sets must be a list of set specs, or {name: (embeddings_id, labels_id)}, "
            f"not {type(sets).__name__}"
        )
    else:
        set_specs = list(sets)
    try:
        checked_params = AnalysisParams.model_validate({} if params is None else params)
    except ValidationError as error:
        raise _local_validation_problem(error, prefix="params") from None
    try:
        return JobCreate(sets=set_specs, params=checked_params)
    except ValidationError as error:
        raise _local_validation_problem(error) from None


def _set_from_shorthand(set_name: str, inputs: SetInputs) -> dict[str, Any]:
    parts = list(inputs) if isinstance(inputs, tuple | list) else [inputs]
    if not 1 <= len(parts) <= 3:
        raise UsageError(
            f"set {set_name!r}: give (embeddings, labels) or (embeddings, labels, ids), "
            f"got {len(parts)} items"
        )
    spec: dict[str, Any] = {"name": set_name}
    for role, part in zip(("embeddings", "labels", "ids"), parts, strict=False):
        if part is not None:
            spec[role] = _dataset_ref(part, what=f"set {set_name!r} {role}")
    if "embeddings" not in spec:
        raise UsageError(f"set {set_name!r}: the embeddings dataset is missing")
    return spec


def _dataset_ref(value: object, *, what: str) -> dict[str, Any]:
    if isinstance(value, DatasetRef):
        return value.model_dump(exclude_none=True)
    if isinstance(value, DatasetOut):
        return {"dataset": value.id}
    if isinstance(value, str):
        return {"dataset": value}
    raise UsageError(
        f"{what}: expected a dataset id, a DatasetOut or a DatasetRef, got {type(value).__name__}"
    )


def _local_validation_problem(error: ValidationError, *, prefix: str = "") -> ValidationProblem:
    """A pydantic error as the 422 problem the service would have answered."""
    field_errors = [
        FieldError(
            field=".".join(str(part) for part in (prefix, *item["loc"]) if part != "") or "body",
            message=item["msg"],
        )
        for item in error.errors()
    ]
    return ValidationProblem(
        Problem(
            title="Unprocessable Content",
            status=422,
            detail="The job was refused before it was sent.",
            errors=field_errors,
        )
    )


# --------------------------------------------------------------------------- calls


def submit_call(sets: JobSets, params: ParamsLike, idempotency_key: str | None) -> Call[JobOut]:
    """``POST /v1/jobs`` with the checked body, always under an Idempotency-Key."""
    job = job_create(sets, params)
    # Always keyed: a retried submit (lost answer, 503) must not start a second job.
    key = idempotency_key or f"nnkgeo-python-{uuid.uuid4()}"
    return Call(
        "POST",
        "/v1/jobs",
        parse_model(JobOut),
        json=job.model_dump(mode="json", exclude_unset=True),
        headers={"Idempotency-Key": key},
    )


def job_call(job_id: str) -> Call[JobOut]:
    """``GET /v1/jobs/{id}``."""
    return Call("GET", f"/v1/jobs/{path_segment(job_id)}", parse_model(JobOut))


def _poll_call(job_id: str) -> Call[tuple[JobOut, float | None]]:
    def parse(response: httpx.Response) -> tuple[JobOut, float | None]:
        job = JobOut.model_validate_json(response.content)
        return job, retry_after_s(response.headers.get("Retry-After"))

    return Call("GET", f"/v1/jobs/{path_segment(job_id)}", parse)


def jobs_call(limit: int, cursor: str | None) -> Call[JobList]:
    """``GET /v1/jobs``: one page, newest first."""
    params: dict[str, str | int] = {"limit": limit}
    if cursor:
        params["cursor"] = cursor
    return Call("GET", "/v1/jobs", parse_model(JobList), params=params)


def cancel_call(job_id: str) -> Call[JobOut]:
    """``POST /v1/jobs/{id}/cancel``."""
    return Call("POST", f"/v1/jobs/{path_segment(job_id)}/cancel", parse_model(JobOut))


# --------------------------------------------------------------------------- waiting


def readiness_call() -> Call[tuple[int, dict[str, Any]]]:
    """``GET /readyz`` as a probe: its status and JSON body, whatever the status."""

    def parse(response: httpx.Response) -> tuple[int, dict[str, Any]]:
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    return Call("GET", "/readyz", parse, probe=True)


def queued_hint(job_id: str, waited_s: float, readiness: tuple[int, dict[str, Any]]) -> str:
    """Why a job may still be queued, from what ``/readyz`` answered (status, body)."""
    status, body = readiness
    said = f"job {job_id} is still queued after {waited_s:.0f} s"
    if status == 200 and body.get("workers"):
        workers = ", ".join(str(name) for name in body["workers"])
        return (
            f"{said}; workers answer /readyz ({workers}), so it waits behind other jobs, "
            "or for a worker that serves its queue"
        )
    problems = "; ".join(
        f"{error.get('field')}: {error.get('message')}"
        for error in body.get("errors") or []
        if isinstance(error, dict)
    )
    if status == 503 and "workers" in problems:
        return (
            f"{said}: no worker seems to have taken it (/readyz: {problems}); "
            f"start one with `{START_WORKER}`"
        )
    return (
        f"{said}: /readyz answered {status}{f' ({problems})' if problems else ''}; "
        f"a worker may be missing: /readyz lists the live ones, `{START_WORKER}` starts one"
    )


def wait_plan(
    job_id: str,
    *,
    timeout: float | None,
    progress: ProgressOption,
    poll_interval: float,
    queued_hint_after: float = QUEUED_HINT_AFTER_S,
) -> Plan[JobOut]:
    """Poll until the job finishes, sleeping as its Retry-After says; raise unless it succeeded.

    A job still queued after ``queued_hint_after`` seconds of waiting is explained once,
    from ``/readyz``, as a warning of the ``nnkgeo.client`` logger.

    Raises
    ------
    JobTimeoutError
        When ``timeout`` seconds pass first.
    JobFailedError, JobCanceledError
        When the job ends without succeeding.
    """
    started = time.monotonic()
    hinted = False
    display = progress_display(progress, job_id)
    try:
        while True:
            job, retry_after = yield _poll_call(job_id)
            display.update(job)
            if job.status.finished:
                break
            waited = time.monotonic() - started
            if job.status is JobStatus.queued and not hinted and waited >= queued_hint_after:
                hinted = True
                readiness = yield readiness_call()
                logger.warning("%s", queued_hint(job_id, waited, readiness))
            delay = retry_after if retry_after is not None else poll_interval
            if timeout is not None:
                remaining = timeout - (time.monotonic() - started)
                if remaining <= 0:
                    raise JobTimeoutError(
                        f"job {job_id} is still {job.status.value} after {timeout:g} s "
                        "(it goes on running)",
                        job=job,
                        hint=Hint(
                            python="wait again, or cancel it with Client.cancel",
                            cli=f"`nnkgeo wait {job_id}` again, or `nnkgeo cancel {job_id}`",
                        ),
                    )
                delay = min(delay, remaining)
            yield Sleep(delay)
    finally:
        display.close()
    _raise_unless_succeeded(job)
    return job


def _raise_unless_succeeded(job: JobOut) -> None:
    if job.status is JobStatus.failed:
        problem = job.error or Problem(
            title="Job failed", status=500, detail=f"job {job.id} failed without a reason"
        )
        raise JobFailedError(job, problem)
    if job.status is JobStatus.canceled:
        raise JobCanceledError(
            job,
            Problem(
                type="about:blank",
                title="Job canceled",
                status=409,
                detail=f"job {job.id} was canceled before it finished",
                instance=f"/v1/jobs/{job.id}",
            ),
        )
