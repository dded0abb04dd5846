"""Celery tasks: load a job's inputs, run the numeric core, store what it made.

Tasks stay thin: the job record (`service.store`) says what to read and where the job
stands, `workers.geometry.analyze` does the work, and the results go back to the
store and the blob store. A task is idempotent: a message for a finished job does
nothing, and a job whose worker died is claimed again and finishes once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import scipy.sparse as sp
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request

from api_schemas import JobStatus
from api_schemas.problems import FieldError
from service.blobs import BlobStore
from service.problems import job_problem
from service.records import GraphFiles, JobRecord, ResultRecord, SetInput, utc_now
from service.retention import sweep_expired_graphs
from service.settings import Settings, get_settings
from service.store import ClaimOutcome, ProgressVerdict, Store
from workers.arrayfiles import load_array
from workers.celery_app import ANALYZE_SETS_TASK, app
from workers.geometry import Analysis, AnalysisCanceled, EmbeddingSet, InvalidInputError, analyze

PROGRESS_INTERVAL_S = 0.5

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRuntime:
    settings: Settings
    store: Store
    blobs: BlobStore


_runtime: WorkerRuntime | None = None
_runtime_pid: int | None = None


def worker_runtime() -> WorkerRuntime:
    """This process's store and blob store.

    Made on first use in each process: a Redis connection opened in the prefork parent
    and inherited by a child would be shared by two processes.
    """
    global _runtime, _runtime_pid
    if _runtime is None or _runtime_pid != os.getpid():
        settings = get_settings()
        _runtime = WorkerRuntime(
            settings=settings,
            store=Store.from_settings(settings),
            blobs=BlobStore(settings.data_dir),
        )
        _runtime_pid = os.getpid()
    return _runtime


class JobProgressReporter:
    """The progress callback handed to `analyze`: records progress, relays cancels.

    Redis is touched at most every PROGRESS_INTERVAL_S (and on each new stage), since
    the core calls this often.
    """

    def __init__(self, store: Store, job: JobRecord, *, attempt: int) -> None:
        self._store = store
        self._job = job
        self._attempt = attempt
        self._last_stage: str | None = None
        self._last_write = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage == self._last_stage and now - self._last_write < PROGRESS_INTERVAL_S:
            return
        self._last_stage, self._last_write = stage, now
        verdict = self._store.record_progress(
            self._job.tenant, self._job.id, attempt=self._attempt, stage=stage, fraction=fraction
        )
        if verdict is ProgressVerdict.cancel_requested:
            raise AnalysisCanceled(f"job {self._job.id} was canceled")
        if verdict is ProgressVerdict.superseded:
            raise AnalysisCanceled(f"job {self._job.id} is no longer this run's")


def _load_set(blobs: BlobStore, set_input: SetInput) -> EmbeddingSet:
    def load(which: str) -> Any:
        array_input = getattr(set_input, which)
        if array_input is None:
            return None
        path = blobs.path_of(array_input.sha256)
        if not path.is_file():
            raise InvalidInputError(
                f"sets[{set_input.name}].{which}",
                f"dataset {array_input.dataset} was deleted before the job ran; upload it again",
            )
        return load_array(path, fmt=array_input.format, name=array_input.array, mmap=True)

    return EmbeddingSet(
        name=set_input.name,
        embeddings=load("embeddings"),
        labels=load("labels"),
        ids=load("ids"),
    )


def _store_graphs(runtime: WorkerRuntime, analysis: Analysis) -> dict[str, GraphFiles]:
    def put(matrix: sp.csr_matrix) -> str:
        staged = runtime.blobs.write_new(
            lambda file: sp.save_npz(file, matrix, compressed=True), prefix="graph-"
        )
        try:
            with runtime.store.blob_lock(staged.sha256):
                runtime.blobs.commit(staged)
                runtime.store.register_graph_blobs([staged.sha256])
        finally:
            staged.discard()
        return staged.sha256

    return {
        name: GraphFiles(directed=put(result.directed), symmetric=put(result.symmetric))
        for name, result in analysis.sets.items()
    }


def _store_result(runtime: WorkerRuntime, job: JobRecord, analysis: Analysis) -> ResultRecord:
    report_json = analysis.report.model_dump_json()
    result = ResultRecord(
        id=job.id,
        report_json=report_json,
        etag=f'"{hashlib.sha256(report_json.encode()).hexdigest()[:32]}"',
        graphs=_store_graphs(runtime, analysis),
        created_at=utc_now(),
    )
    runtime.store.put_result(job.tenant, result)
    return result


def run_job(job_id: str, tenant: str) -> None:
    """Claim the job, analyse its sets, and record how it ended (exactly once)."""
    runtime = worker_runtime()
    store = runtime.store
    claim = store.claim_job(
        tenant, job_id, now=utc_now(), max_attempts=runtime.settings.task_max_attempts
    )
    if claim.outcome is ClaimOutcome.missing:
        logger.warning("job %s of %s: no record (expired?); dropping the message", job_id, tenant)
        return
    assert claim.job is not None
    job = claim.job
    if claim.outcome is ClaimOutcome.finished:
        logger.info("job %s already %s; nothing to do", job_id, job.status.value)
        return
    if claim.outcome is ClaimOutcome.exhausted:
        problem = job_problem(
            job_id,
            status=500,
            title="Worker lost",
            slug="worker-lost",
            detail=f"The worker running this job died {claim.attempt} times; the job was "
            "given up. Try fewer points per set, or ask the operator about worker memory.",
        )
        store.finish_job(
            job,
            status=JobStatus.failed,
            now=utc_now(),
            from_statuses=(JobStatus.queued, JobStatus.running),
            error=problem,
        )
        return

    attempt = claim.attempt
    logger.info("job %s of %s: attempt %d", job_id, tenant, attempt)

    def finish(status: JobStatus, **outcome: Any) -> None:
        if not store.finish_job(job, status=status, now=utc_now(), attempt=attempt, **outcome):
            logger.warning(
                "job %s: attempt %d lost the job to another; result dropped", job_id, attempt
            )

    try:
        if job.cancel_requested:
            raise AnalysisCanceled(f"job {job_id} was canceled")
        sets = [_load_set(runtime.blobs, set_input) for set_input in job.spec.sets]
        analysis = analyze(
            sets,
            params=job.spec.params,
            job_id=job_id,
            progress=JobProgressReporter(store, job, attempt=attempt),
        )
        result = _store_result(runtime, job, analysis)
        store.remember_result(tenant, job.cache_key, result.id)
        finish(JobStatus.succeeded, result_id=result.id)
    except AnalysisCanceled:
        finish(JobStatus.canceled)
    except InvalidInputError as error:
        finish(
            JobStatus.failed,
            error=job_problem(
                job_id,
                status=422,
                title="Invalid input",
                slug="invalid-input",
                detail=f"{error.field}: {error.message}",
                errors=[FieldError(field=error.field, message=error.message)],
            ),
        )
    except SoftTimeLimitExceeded:
        finish(
            JobStatus.failed,
            error=job_problem(
                job_id,
                status=500,
                title="Time limit exceeded",
                slug="time-limit",
                detail=f"The job ran longer than {runtime.settings.task_soft_time_limit_s} s "
                "(NNKGEO_TASK_SOFT_TIME_LIMIT_S); use fewer points, a smaller k, or "
                "knn='approximate'.",
            ),
        )
    except Exception:
        logger.exception("job %s of %s failed", job_id, tenant)
        finish(
            JobStatus.failed,
            error=job_problem(
                job_id,
                status=500,
                title="Analysis failed",
                slug="internal",
                detail="The analysis failed unexpectedly; the error has been logged.",
            ),
        )
    finally:
        try:
            sweep_expired_graphs(store, runtime.blobs)
        except Exception:
            logger.exception("sweeping expired graphs failed")


class AnalysisRequest(Request):
    def on_timeout(self, soft: bool, timeout: float) -> None:
        # Runs in the worker's main process. At the hard limit the pool kills the child,
        # which can no longer record anything: mark the job failed here, or its record
        # would say `running` for ever (the message is acknowledged, never redelivered).
        super().on_timeout(soft, timeout)
        if soft:
            return
        job_id, tenant = self.args
        runtime = worker_runtime()
        job = runtime.store.get_job(tenant, job_id)
        if job is None:
            return
        runtime.store.finish_job(
            job,
            status=JobStatus.failed,
            now=utc_now(),
            error=job_problem(
                job_id,
                status=500,
                title="Time limit exceeded",
                slug="time-limit",
                detail=f"The job was stopped after {timeout} s (NNKGEO_TASK_TIME_LIMIT_S).",
            ),
        )


class AnalysisTask(Task):
    Request = AnalysisRequest


@app.task(name=ANALYZE_SETS_TASK, base=AnalysisTask)
def analyze_sets(job_id: str, tenant: str) -> None:
    run_job(job_id, tenant)
