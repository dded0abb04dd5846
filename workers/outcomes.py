"""How a job ends: succeeded, canceled or failed, and the problem a failed job carries.

Every error a task meets maps to the job's problem here, once: invalid input, a refused
path, no sandbox, the time limits, memory, a lost worker, and anything unexpected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded

from api_schemas import JobStatus, Problem
from api_schemas.problems import FieldError
from jobstate.data_paths import PathNotAllowedError
from jobstate.errors import AnalysisCanceled, InvalidInputError
from jobstate.memory_budget import is_allocation_failure
from jobstate.problems import job_problem
from jobstate.records import JobRecord, utc_now
from jobstate.store.results import PutResultOutcome
from workers.geometry import Analysis, EmbeddingSet
from workers.models.sandbox.runner import SandboxUnavailableError
from workers.results import discard_run_files, store_result
from workers.runtime import WorkerRuntime

logger = logging.getLogger(__name__)


def end_job(
    runtime: WorkerRuntime,
    job: JobRecord,
    status: JobStatus,
    *,
    attempt: int | None,
    error: Problem | None = None,
    result_id: str | None = None,
) -> bool:
    """Finish the job (if `attempt` still owns it) and drop its intermediate files.

    Returns whether this call ended it.
    """
    ended = runtime.store.finish_job(
        job, status=status, now=utc_now(), attempt=attempt, error=error, result_id=result_id
    )
    if not ended:
        current = runtime.store.get_job(job.tenant, job.id)
        if current is not None and current.status.finished:
            # Several blocks of a canceled job each notice the cancel; one ends it.
            logger.info("job %s already %s", job.id, current.status.value)
        else:
            logger.warning(
                "job %s: attempt %s no longer owns the job; its %s outcome was dropped",
                job.id,
                attempt,
                status.value,
            )
        return False
    try:
        discard_run_files(runtime, job)
    except Exception:
        logger.exception("job %s: removing its block files failed", job.id)
    return True


def succeed(
    runtime: WorkerRuntime,
    job: JobRecord,
    analysis: Analysis,
    *,
    attempt: int,
    sets: Sequence[EmbeddingSet] | None = None,
) -> None:
    """Store the result (report, graphs, maps, page, cache entry), then end the job.

    ``sets`` are the analysed sets when they are at hand; without them a ``sets`` job's
    inputs are read again for the maps (a sharded job's assembly). A stale attempt (its
    lease expired and the job was requeued) stores nothing and ends nothing.
    """
    stored = store_result(
        runtime,
        job,
        analysis,
        sets=job.spec.sets if sets is None else sets,
        attempt=attempt,
    )
    if stored is PutResultOutcome.stale:
        logger.warning(
            "job %s: attempt %d no longer owns the job; its result dropped", job.id, attempt
        )
        return
    end_job(runtime, job, JobStatus.succeeded, attempt=attempt, result_id=job.id)


@dataclass
class Ending:
    """How the block under `ending_job_on_error` ended the job, if it did."""

    status: JobStatus | None = None


@contextmanager
def ending_job_on_error(
    runtime: WorkerRuntime, job: JobRecord, *, attempt: int
) -> Iterator[Ending]:
    """Turn what the core raises into the job's final status (canceled or failed)."""
    ending = Ending()
    try:
        yield ending
    except AnalysisCanceled:
        ending.status = JobStatus.canceled
        end_job(runtime, job, JobStatus.canceled, attempt=attempt)
    except Exception as error:
        ending.status = JobStatus.failed
        end_job(
            runtime,
            job,
            JobStatus.failed,
            attempt=attempt,
            error=failure_problem(runtime, job, error, attempt=attempt),
        )


def failure_problem(
    runtime: WorkerRuntime, job: JobRecord, error: Exception, *, attempt: int
) -> Problem:
    """The problem a failed job carries for what the core raised (logged here)."""
    job_id = job.id
    if isinstance(error, InvalidInputError):
        # A refused path is a 403: the roots may have changed since submission, or a
        # link inside them now points out.
        refused_path = isinstance(error, PathNotAllowedError)
        return job_problem(
            job_id,
            status=403 if refused_path else 422,
            title="Path not allowed" if refused_path else "Invalid input",
            slug="path-not-allowed" if refused_path else "invalid-input",
            detail=f"{error.field}: {error.message}",
            errors=[FieldError(field=error.field, message=error.message)],
        )
    if isinstance(error, SandboxUnavailableError):
        logger.error("job %s: %s", job_id, error)
        return job_problem(
            job_id,
            status=503,
            title="Model sandbox unavailable",
            slug="sandbox-unavailable",
            detail=str(error),
        )
    if isinstance(error, SoftTimeLimitExceeded):
        return job_problem(
            job_id,
            status=500,
            title="Time limit exceeded",
            slug="time-limit",
            detail=f"A task of the job ran longer than "
            f"{runtime.settings.task_soft_time_limit_s} s "
            "(NNKGEO_TASK_SOFT_TIME_LIMIT_S); use fewer points, a smaller k, "
            "knn='approximate', or smaller blocks (NNKGEO_SHARD_ROWS).",
        )
    if is_allocation_failure(error):
        # torch and faiss report a failed allocation as a RuntimeError.
        logger.error("job %s of %s ran out of memory: %s", job_id, job.tenant, error)
        return memory_problem(
            runtime,
            job_id,
            what="an allocation failed",
            estimate_bytes=runtime.store.attempt_memory(
                job.tenant, job_id, attempt=attempt
            ).estimate_bytes,
        )
    logger.exception("job %s of %s failed", job_id, job.tenant)
    return job_problem(
        job_id,
        status=500,
        title="Analysis failed",
        slug="internal",
        detail="The analysis failed unexpectedly; the error has been logged.",
    )


def hard_time_limit_problem(job_id: str, timeout: float) -> Problem:
    """A task of the job was killed at the hard time limit (its process could not say)."""
    return job_problem(
        job_id,
        status=500,
        title="Time limit exceeded",
        slug="time-limit",
        detail=f"A task of the job was stopped after {timeout} s (NNKGEO_TASK_TIME_LIMIT_S).",
    )


def worker_lost_problem(job_id: str, deliveries: int, what: str) -> Problem:
    """The process running ``what`` died on each of its ``deliveries``."""
    return job_problem(
        job_id,
        status=500,
        title="Worker lost",
        slug="worker-lost",
        detail=f"The worker running {what} died {deliveries} times; the job was given up. "
        "Try fewer points per set, or ask the operator about worker memory.",
    )


def lease_lost_problem(job_id: str, attempts: int) -> Problem:
    """The lease of each of the job's ``attempts`` expired: its worker died or stalled."""
    return job_problem(
        job_id,
        status=500,
        title="Worker lost",
        slug="worker-lost",
        detail=f"The worker running this job died, or stalled until its lease expired, on "
        f"each of its {attempts} attempts; the job was given up.",
    )


def memory_problem(
    runtime: WorkerRuntime, job_id: str, *, what: str, estimate_bytes: int | None
) -> Problem:
    """The job ran out of its memory budget (``what`` says how it showed)."""
    budget = runtime.settings.worker_memory_bytes
    estimated = (
        f"; it was estimated to need {estimate_bytes / 2**20:.0f} MiB"
        if estimate_bytes is not None
        else ""
    )
    return job_problem(
        job_id,
        status=422,
        title="Out of memory",
        slug="memory",
        detail=f"The job ran out of memory: {what}{estimated}, within the budget of "
        f"{budget / 2**20:.0f} MiB (NNKGEO_WORKER_MEMORY_BYTES). Use fewer points, fewer "
        "dimensions or a smaller k; an operator can raise the budget or, if estimates run "
        "low on this platform, NNKGEO_MEMORY_ESTIMATE_SCALE.",
    )
