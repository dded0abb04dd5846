"""Celery tasks: load a job's inputs, run the numeric core, store what it made.

Tasks stay thin: the job record (`jobstate.store`) says what to read and where the job
stands, `workers.geometry` does the work, and the results go back to the store and the
blob store. A task is idempotent: a message for a finished job does nothing, and a job
whose worker died is claimed again and finishes once.

Every job starts as ``analyze_sets``, which claims it (attempt n) and plans it
(`workers.sharding`):

- an embed or study job builds its sets with `workers.model_jobs` (training, embedding)
  and is analysed right there, never sharded;
- a small job (every set one block) is analysed right there by `analyze`;
- a large one is fanned out: ``analyze_sets`` validates the sets, builds each set's
  approximate index once (``knn="approximate"``), records the plan under attempt n and
  sends one ``solve_block`` per (set, row block). Each block solves its rows against
  all points, writes them to the blob store and records the blob in the store, once
  (a redelivered block finds its result and stops). The recording that completes the
  run sends ``assemble_job``, which joins the blocks, measures each set and finishes
  the job as the single task would have.

Why not a Celery chord: a chord's completion is Celery's state, beside the job record
(its own keys, expiry and result storage), and it only fires the body once every header
task has *returned*. A header task that raises fails the chord and the body never
runs; the callback is published by whichever worker returned last, under a claim that a
quick redelivery of that worker's task can find still held. Here the block results and
their count are part of the job's record, fenced by the attempt: the run is complete
exactly when every block is recorded, whatever was redelivered, and a block that finds
the run complete but its assembly not started sends the assembly again (its sender may
have died between recording and sending). Two assemblies of one run are harmless: the
first result stored stays, and the job finishes once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import scipy.sparse as sp
from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request

from api_schemas import JobStatus, Problem, Report
from api_schemas.problems import FieldError
from arrayfiles import ArrayFileError, ArrayTooLargeError, load_array
from htmlreport.embedding_map import compute_embedding_map, write_embedding_map
from jobstate.blobs import BlobStore
from jobstate.dispatch import (
    ANALYZE_SETS_TASK,
    ASSEMBLE_JOB_TASK,
    SOLVE_BLOCK_TASK,
    enqueue_assembly,
    enqueue_block,
    job_end_announcer,
)
from jobstate.memory_budget import estimate_set_memory, is_allocation_failure, plan_solve
from jobstate.problems import job_problem
from jobstate.records import (
    GraphFiles,
    JobRecord,
    ResultRecord,
    SetBlocks,
    SetInput,
    ShardedRun,
    block_key,
    utc_now,
)
from jobstate.retention import sweep_expired_graphs
from jobstate.settings import Settings, get_settings
from jobstate.store import (
    AssemblyStartOutcome,
    BlockStartOutcome,
    ClaimOutcome,
    ProgressVerdict,
    Store,
)
from workers.celery_app import app
from workers.geometry import (
    ALGORITHM_VERSION,
    Analysis,
    AnalysisCanceled,
    EmbeddingSet,
    InvalidInputError,
    SetAnalysis,
    analyze,
    validate_set,
)
from workers.geometry.analysis import (
    NNKGraph,
    ProgressCallback,
    build_approximate_index_for,
    build_nnk_graph,
    measure_set,
    resolve_device,
)
from workers.geometry.report import comparison
from workers.model_jobs import build_model_job_sets
from workers.models import PathNotAllowedError
from workers.models.sandbox.runner import (
    SandboxPolicy,
    SandboxUnavailableError,
    sandbox_support,
)
from workers.sharding import (
    ShardingLimits,
    needs_sharding,
    plan_row_blocks,
    read_approximate_index,
    read_block,
    write_approximate_index,
    write_block,
)

PROGRESS_INTERVAL_S = 0.5
# Share of an embed or study job's progress spent making its sets (training, embedding).
MODEL_PROGRESS_SHARE = 0.8
# Share of a sharded job's progress that its blocks span; the assembly (metrics) the rest.
BLOCKS_PROGRESS_SHARE = 0.9

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRuntime:
    settings: Settings
    store: Store
    blobs: BlobStore

    @property
    def threads(self) -> int | None:
        """CPU threads one task may use; None = one per core."""
        return self.settings.worker_threads or None


_runtime: WorkerRuntime | None = None
_runtime_pid: int | None = None


def _limit_cpu_threads(threads: int | None) -> None:
    if threads is None:
        return
    import faiss
    import torch

    # faiss (OpenMP) and torch size their thread pools to the host's cores; several
    # worker processes on one host would each start that many.
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)


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
            # Every job's end, on any path (finish, cancel, failure, time limit), is
            # announced by the store: jobs with a callback_url get their webhook queued.
            store=Store.from_settings(settings, on_job_finished=job_end_announcer(app, settings)),
            blobs=BlobStore(settings.data_dir),
        )
        _runtime_pid = os.getpid()
        _limit_cpu_threads(_runtime.threads)
    return _runtime


class JobProgressReporter:
    """The progress callback handed to the core: records progress, relays cancels.

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
        _raise_unless_carrying_on(verdict, self._job.id)


class CancelCheck:
    """The progress callback of a block: relays cancels, records nothing.

    Blocks of one job run side by side; the job's progress counts finished blocks
    (`Store.record_block`), not rows within each.
    """

    def __init__(self, store: Store, job: JobRecord, *, attempt: int) -> None:
        self._store = store
        self._job = job
        self._attempt = attempt
        self._last_check = time.monotonic()

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if now - self._last_check < PROGRESS_INTERVAL_S:
            return
        self._last_check = now
        verdict = self._store.run_verdict(self._job.tenant, self._job.id, attempt=self._attempt)
        _raise_unless_carrying_on(verdict, self._job.id)


def _raise_unless_carrying_on(verdict: ProgressVerdict, job_id: str) -> None:
    if verdict is ProgressVerdict.cancel_requested:
        raise AnalysisCanceled(f"job {job_id} was canceled")
    if verdict is ProgressVerdict.superseded:
        raise AnalysisCanceled(f"job {job_id} is no longer this run's")


# Inputs and outputs ---------------------------------------------------------------------


def _load_set(blobs: BlobStore, set_input: SetInput, *, max_array_bytes: int) -> EmbeddingSet:
    """Read a set's arrays from the blob store, none past ``max_array_bytes`` decompressed.

    The limit (NNKGEO_MAX_ARRAY_BYTES) is enforced again here although uploads were checked
    against it, since the operator may have lowered it since. A refusal names the set's
    array, and fails the job with a 422.
    """
    limit = max_array_bytes

    def load(which: str) -> Any:
        array_input = getattr(set_input, which)
        if array_input is None:
            return None
        field = f"sets[{set_input.name}].{which}"
        path = blobs.path_of(array_input.sha256)
        if not path.is_file():
            raise InvalidInputError(
                field,
                f"dataset {array_input.dataset} was deleted before the job ran; upload it again",
            )
        try:
            return load_array(
                path,
                fmt=array_input.format,
                name=array_input.array,
                mmap=True,
                max_array_bytes=limit,
            )
        except ArrayTooLargeError as error:
            raise InvalidInputError(
                field,
                f"dataset {array_input.dataset}: {error.message} (NNKGEO_MAX_ARRAY_BYTES)",
            ) from None
        except ArrayFileError as error:
            raise InvalidInputError(
                field, f"dataset {array_input.dataset}: {error.message}"
            ) from None

    return EmbeddingSet(
        name=set_input.name,
        embeddings=load("embeddings"),
        labels=load("labels"),
        ids=load("ids"),
    )


def _put_blob(runtime: WorkerRuntime, writer: Callable[[BinaryIO], None], *, prefix: str) -> str:
    """Write a derived blob (a graph, a block, an index), kept RESULT_TTL_S at least."""
    staged = runtime.blobs.write_new(writer, prefix=prefix)
    try:
        with runtime.store.blob_lock(staged.sha256):
            runtime.blobs.commit(staged)
            runtime.store.register_graph_blobs([staged.sha256])
    finally:
        staged.discard()
    return staged.sha256


def _discard_blobs(runtime: WorkerRuntime, sha256s: list[str]) -> None:
    """Remove derived blobs of a job that has no more use for them."""
    for sha256 in sha256s:
        with runtime.store.blob_lock(sha256):
            runtime.store.forget_graph_blob(sha256)
            if not runtime.store.blob_has_datasets(sha256):
                runtime.blobs.remove(sha256)


def _store_graphs(runtime: WorkerRuntime, analysis: Analysis) -> dict[str, GraphFiles]:
    def put(matrix: sp.csr_matrix) -> str:
        return _put_blob(
            runtime, lambda file: sp.save_npz(file, matrix, compressed=True), prefix="graph-"
        )

    return {
        name: GraphFiles(directed=put(result.directed), symmetric=put(result.symmetric))
        for name, result in analysis.sets.items()
    }


def _store_maps(
    runtime: WorkerRuntime,
    job: JobRecord,
    analysis: Analysis,
    sets: Sequence[EmbeddingSet | SetInput],
) -> dict[str, str]:
    """Compute each set's report-page map once, here where its embeddings are; store it.

    Returns set name -> blob sha256. The API draws the page from these small blobs and
    never reads embeddings (those of an embed or study job exist only in this process).
    A ``SetInput`` is loaded memory-mapped, one set at a time: only its sampled rows are
    read. A set whose map cannot be made is logged and left without one: the page then
    says so, and the job's numbers stand.
    """
    reports = {set_report.name: set_report for set_report in analysis.report.sets}
    maps: dict[str, str] = {}
    for item in sets:
        set_report = reports.get(item.name)
        if set_report is None:
            continue
        try:
            embedding_set = (
                item
                if isinstance(item, EmbeddingSet)
                else _load_set(
                    runtime.blobs, item, max_array_bytes=runtime.settings.array_limit_bytes
                )
            )
            embedding_map = compute_embedding_map(
                embedding_set.embeddings,
                embedding_set.labels,
                suspects=[suspect.index for suspect in set_report.suspects],
            )
        except (InvalidInputError, OSError, ValueError, np.linalg.LinAlgError) as error:
            logger.warning("job %s: set %s gets no 2-D map: %s", job.id, item.name, error)
            continue
        maps[item.name] = _put_blob(
            runtime,
            lambda file, embedding_map=embedding_map: write_embedding_map(file, embedding_map),
            prefix="map-",
        )
    return maps


def _store_result(
    runtime: WorkerRuntime,
    job: JobRecord,
    analysis: Analysis,
    *,
    sets: Sequence[EmbeddingSet | SetInput],
    only_if_absent: bool = False,
) -> ResultRecord:
    report_json = analysis.report.model_dump_json()
    maps = _store_maps(runtime, job, analysis, sets)
    # The maps are registered like the graphs, so they expire and are swept with them.
    graphs = {
        name: files.model_copy(update={"map": maps.get(name)})
        for name, files in _store_graphs(runtime, analysis).items()
    }
    result = ResultRecord(
        id=job.id,
        report_json=report_json,
        etag=f'"{hashlib.sha256(report_json.encode()).hexdigest()[:32]}"',
        graphs=graphs,
        created_at=utc_now(),
    )
    runtime.store.put_result(job.tenant, result, only_if_absent=only_if_absent)
    return result


# Ending a job ---------------------------------------------------------------------------


def _discard_run_files(runtime: WorkerRuntime, job: JobRecord) -> None:
    """Remove the block and index files of every sharded attempt at the job."""
    for attempt in range(1, job.attempts + 1):
        run = runtime.store.get_run(job.tenant, job.id, attempt)
        if run is None:
            continue
        indexes = [s.approximate_index for s in run.plan.sets if s.approximate_index]
        _discard_blobs(runtime, [*run.block_results.values(), *indexes])


def end_job(
    runtime: WorkerRuntime,
    job: JobRecord,
    status: JobStatus,
    *,
    attempt: int | None,
    error: Problem | None = None,
    result_id: str | None = None,
) -> bool:
    """Finish the job (if `attempt` still owns it) and drop its intermediate files."""
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
        _discard_run_files(runtime, job)
    except Exception:
        logger.exception("job %s: removing its block files failed", job.id)
    return True


def _worker_lost_problem(job_id: str, deliveries: int, what: str) -> Problem:
    return job_problem(
        job_id,
        status=500,
        title="Worker lost",
        slug="worker-lost",
        detail=f"The worker running {what} died {deliveries} times; the job was given up. "
        "Try fewer points per set, or ask the operator about worker memory.",
    )


@dataclass
class Ending:
    """How the block under `ending_job_on_error` ended the job, if it did."""

    status: JobStatus | None = None


def _failure_problem(
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
        return _memory_problem(
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
            error=_failure_problem(runtime, job, error, attempt=attempt),
        )


def _succeed(
    runtime: WorkerRuntime,
    job: JobRecord,
    analysis: Analysis,
    *,
    attempt: int,
    sets: Sequence[EmbeddingSet] | None = None,
    only_if_absent: bool = False,
) -> None:
    """Store the result (report, graphs, maps), remember it for the cache, end the job.

    ``sets`` are the analysed sets when they are at hand; without them a ``sets`` job's
    inputs are read again for the maps (a sharded job's assembly).
    """
    result = _store_result(
        runtime,
        job,
        analysis,
        sets=job.spec.sets if sets is None else sets,
        only_if_absent=only_if_absent,
    )
    if job.spec.cacheable:
        runtime.store.remember_result(job.tenant, job.cache_key, result.id)
    end_job(runtime, job, JobStatus.succeeded, attempt=attempt, result_id=result.id)


# analyze_sets: every job starts here ----------------------------------------------------


def _claim(runtime: WorkerRuntime, job_id: str, tenant: str) -> tuple[JobRecord, int] | None:
    """Claim the job for this delivery; None when there is nothing to run."""
    store = runtime.store
    claim = store.claim_job(
        tenant, job_id, now=utc_now(), max_attempts=runtime.settings.task_max_attempts
    )
    if claim.outcome is ClaimOutcome.missing:
        logger.warning("job %s of %s: no record (expired?); dropping the message", job_id, tenant)
        return None
    assert claim.job is not None
    job = claim.job
    if claim.outcome is ClaimOutcome.finished:
        logger.info("job %s already %s; nothing to do", job_id, job.status.value)
        return None
    if claim.outcome is ClaimOutcome.exhausted:
        store.finish_job(
            job,
            status=JobStatus.failed,
            now=utc_now(),
            from_statuses=(JobStatus.queued, JobStatus.running),
            error=_worker_lost_problem(job_id, claim.attempt, "this job"),
        )
        return None
    if claim.attempt > 1:
        previous = store.attempt_memory(tenant, job_id, attempt=claim.attempt - 1)
        if previous.died_of is not None:
            logger.error(
                "job %s of %s: attempt %d died (%s); failing it as out of memory",
                job_id,
                tenant,
                claim.attempt - 1,
                previous.died_of,
            )
            store.finish_job(
                job,
                status=JobStatus.failed,
                now=utc_now(),
                attempt=claim.attempt,
                error=_memory_problem(
                    runtime,
                    job_id,
                    what=f"the process of its attempt {claim.attempt - 1} died of "
                    f"{previous.died_of}",
                    estimate_bytes=previous.estimate_bytes,
                ),
            )
            return None
    logger.info("job %s of %s: attempt %d", job_id, tenant, claim.attempt)
    return job, claim.attempt


def _plan(runtime: WorkerRuntime, sets: list[EmbeddingSet], job: JobRecord) -> list[SetBlocks]:
    limits = ShardingLimits.from_settings(runtime.settings)
    k = job.spec.params.k
    return [
        SetBlocks(
            name=s.name,
            n_points=int(s.embeddings.shape[0]),
            blocks=plan_row_blocks(
                int(s.embeddings.shape[0]),
                int(s.embeddings.shape[1]) if s.embeddings.ndim == 2 else 1,
                k,
                limits=limits,
            ),
        )
        for s in sets
    ]


def _fan_out(
    runtime: WorkerRuntime,
    job: JobRecord,
    sets: list[EmbeddingSet],
    set_blocks: list[SetBlocks],
    *,
    attempt: int,
) -> None:
    """Record the plan of a sharded attempt and send its blocks."""
    params = job.spec.params
    progress = JobProgressReporter(runtime.store, job, attempt=attempt)
    for embedding_set in sets:
        validate_set(embedding_set, params=params)
    planned: list[SetBlocks] = []
    for embedding_set, blocks in zip(sets, set_blocks, strict=True):
        if params.knn == "approximate" and len(blocks.blocks) > 1:
            progress(f"{embedding_set.name}:index", 0.0)
            index = build_approximate_index_for(
                np.ascontiguousarray(embedding_set.embeddings, dtype=np.float32), params=params
            )
            sha256 = _put_blob(
                runtime,
                lambda file, index=index: write_approximate_index(file, index, job_id=job.id),
                prefix="index-",
            )
            blocks = blocks.model_copy(update={"approximate_index": sha256})
        planned.append(blocks)
    plan = ShardedRun(attempt=attempt, queue=job.queue or runtime.settings.cpu_queue, sets=planned)
    verdict = runtime.store.start_run(job.tenant, job.id, plan)
    if verdict is not ProgressVerdict.carry_on:
        # No run names the indexes yet, so ending the job would not remove them.
        _discard_blobs(runtime, [s.approximate_index for s in planned if s.approximate_index])
        _raise_unless_carrying_on(verdict, job.id)
    for set_index, blocks in enumerate(plan.sets):
        for block_index in range(len(blocks.blocks)):
            enqueue_block(
                app,
                job_id=job.id,
                tenant=job.tenant,
                attempt=attempt,
                set_index=set_index,
                block_index=block_index,
                queue=plan.queue,
            )
    logger.info("job %s: attempt %d sent %d blocks", job.id, attempt, plan.total_blocks)


def run_job(job_id: str, tenant: str) -> None:
    """Claim the job; analyse it here if it is small, else send its blocks."""
    runtime = worker_runtime()
    claimed = _claim(runtime, job_id, tenant)
    if claimed is None:
        return
    job, attempt = claimed
    try:
        with ending_job_on_error(runtime, job, attempt=attempt):
            if job.cancel_requested:
                raise AnalysisCanceled(f"job {job_id} was canceled")
            if job.spec.kind != "sets":
                _run_model_job(runtime, job, attempt=attempt)
                return
            sets = [
                _load_set(
                    runtime.blobs, set_input, max_array_bytes=runtime.settings.array_limit_bytes
                )
                for set_input in job.spec.sets
            ]
            set_blocks = _plan(runtime, sets, job)
            if needs_sharding([s.blocks for s in set_blocks]):
                _fan_out(runtime, job, sets, set_blocks, attempt=attempt)
                return
            _record_estimate(runtime, job, sets, attempt=attempt)
            analysis = analyze(
                sets,
                params=job.spec.params,
                job_id=job_id,
                progress=JobProgressReporter(runtime.store, job, attempt=attempt),
                n_threads=runtime.threads,
                memory_budget_bytes=runtime.settings.memory_planning_budget_bytes,
            )
            _succeed(runtime, job, analysis, attempt=attempt, sets=sets)
    finally:
        try:
            sweep_expired_graphs(runtime.store, runtime.blobs)
        except Exception:
            logger.exception("sweeping expired graphs failed")


def _record_estimate(
    runtime: WorkerRuntime, job: JobRecord, sets: list[EmbeddingSet], *, attempt: int
) -> None:
    """Note the attempt's memory estimate (its largest set) before it allocates anything.

    Should its process die, the next delivery reads this and the cause of death
    (:class:`JobRequest`) and ends the job saying memory, instead of trying again.
    """
    params = job.spec.params
    estimate = max(
        estimate_set_memory(
            int(s.embeddings.shape[0]),
            int(s.embeddings.shape[1]) if s.embeddings.ndim == 2 else 1,
            params.k,
            n_classes=0 if s.labels is None else int(s.embeddings.shape[0]),
            threads=runtime.threads or os.cpu_count() or 1,
            approximate=params.knn == "approximate",
            solve_block=plan_solve(
                int(s.embeddings.shape[0]),
                int(s.embeddings.shape[1]) if s.embeddings.ndim == 2 else 1,
                params.k,
                budget_bytes=runtime.settings.memory_planning_budget_bytes,
                threads=runtime.threads or os.cpu_count() or 1,
                approximate=params.knn == "approximate",
            )[0],
        ).total
        for s in sets
    )
    runtime.store.record_attempt_memory(
        job.tenant,
        job.id,
        attempt=attempt,
        estimate_bytes=estimate,
        budget_bytes=runtime.settings.worker_memory_bytes,
    )


def _memory_problem(
    runtime: WorkerRuntime, job_id: str, *, what: str, estimate_bytes: int | None
) -> Problem:
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


def _progress_share(progress: ProgressCallback, start: float, share: float) -> ProgressCallback:
    def report(stage: str, fraction: float) -> None:
        progress(stage, start + share * fraction)

    return report


def model_sandbox_policy(runtime: WorkerRuntime) -> SandboxPolicy:
    """How this worker runs uploaded models: limits from the job's budget, confinement
    from the start-up probe (:func:`workers.models.sandbox.runner.sandbox_support`)."""
    settings = runtime.settings
    status = sandbox_support(
        min_landlock_abi=settings.sandbox_min_landlock_abi,
        allow_unsandboxed=settings.unsafe_allow_unsandboxed_models,
    )
    return SandboxPolicy(
        memory_bytes=settings.worker_memory_bytes,
        cpu_seconds=settings.model_cpu_limit_s,
        # Below the soft time limit, so that the model's own deadline is what ends it.
        wall_seconds=0.9 * settings.task_soft_time_limit_s,
        threads=runtime.threads,
        confine=status.enforceable,
        protected_paths=(settings.data_dir.resolve(), *settings.data_root_paths),
        unavailable=None
        if status.allowed
        else f"This worker cannot sandbox uploaded models ({status.description}); the "
        "operator must run it where Landlock (ABI >= 4) and seccomp are available.",
    )


def _run_model_job(runtime: WorkerRuntime, job: JobRecord, *, attempt: int) -> None:
    """An embed or study job: make its sets (`workers.model_jobs`), analyse them here.

    Never sharded: its sets exist only in this process, and training dominates anyway.
    """
    progress = JobProgressReporter(runtime.store, job, attempt=attempt)
    sets = build_model_job_sets(
        job.spec,
        locate_blob=runtime.blobs.path_of,
        data_roots=runtime.settings.data_root_paths,
        sandbox=model_sandbox_policy(runtime),
        max_array_bytes=runtime.settings.array_limit_bytes,
        progress=_progress_share(progress, 0.0, MODEL_PROGRESS_SHARE),
    )
    analysis = analyze(
        sets,
        params=job.spec.params,
        job_id=job.id,
        progress=_progress_share(progress, MODEL_PROGRESS_SHARE, 1 - MODEL_PROGRESS_SHARE),
        n_threads=runtime.threads,
        memory_budget_bytes=runtime.settings.memory_planning_budget_bytes,
    )
    _succeed(runtime, job, analysis, attempt=attempt, sets=sets)


# solve_block: one row block of a sharded job --------------------------------------------


def run_block(
    job_id: str, tenant: str, attempt: int, set_index: int, block_index: int, *, worker: str
) -> str:
    """Solve one block and record it once; send the assembly if it completes the run.

    Returns what happened: "solved", "recorded" (already was), "canceled", "stale"
    (the job finished or a newer attempt replaced this run), "missing", "exhausted".
    """
    runtime = worker_runtime()
    store = runtime.store
    key = block_key(set_index, block_index)
    start = store.begin_block(tenant, job_id, attempt=attempt, block=key, worker=worker)
    if start.outcome is BlockStartOutcome.recorded:
        if start.run_awaits_assembly:
            # The block that completed the run may have died before sending the assembly.
            _send_assembly(runtime, job_id, tenant, attempt)
        return start.outcome.value
    if start.outcome in (BlockStartOutcome.stale, BlockStartOutcome.missing):
        return start.outcome.value
    job = store.get_job(tenant, job_id)
    run = store.get_run(tenant, job_id, attempt)
    if job is None or run is None:
        return BlockStartOutcome.missing.value
    if start.outcome is BlockStartOutcome.canceled:
        end_job(runtime, job, JobStatus.canceled, attempt=attempt)
        return start.outcome.value
    if start.deliveries > runtime.settings.task_max_attempts:
        what = f"block {block_index} of set {job.spec.sets[set_index].name}"
        end_job(
            runtime,
            job,
            JobStatus.failed,
            attempt=attempt,
            error=_worker_lost_problem(job_id, start.deliveries - 1, what),
        )
        return "exhausted"

    with ending_job_on_error(runtime, job, attempt=attempt) as ending:
        set_blocks = run.plan.sets[set_index]
        embedding_set = _load_set(
            runtime.blobs,
            job.spec.sets[set_index],
            max_array_bytes=runtime.settings.array_limit_bytes,
        )
        index = (
            read_approximate_index(runtime.blobs.path_of(set_blocks.approximate_index))
            if set_blocks.approximate_index
            else None
        )
        device, device_warning = resolve_device(job.spec.params.device)
        nnk = build_nnk_graph(
            np.ascontiguousarray(embedding_set.embeddings, dtype=np.float32),
            params=job.spec.params,
            device=device,
            progress=CancelCheck(store, job, attempt=attempt),
            n_threads=runtime.threads,
            memory_budget_bytes=runtime.settings.memory_planning_budget_bytes,
            rows=set_blocks.blocks[block_index],
            index=index,
        )
        return _record_block(runtime, job, attempt, key, nnk, device_warning)
    assert ending.status is not None
    return ending.status.value


def _record_block(
    runtime: WorkerRuntime,
    job: JobRecord,
    attempt: int,
    key: str,
    nnk: NNKGraph,
    device_warning: str | None,
) -> str:
    sha256 = _put_blob(
        runtime,
        lambda file: write_block(file, nnk, job_id=job.id, device_warning=device_warning),
        prefix="block-",
    )
    recording = runtime.store.record_block(
        job.tenant, job.id, attempt=attempt, block=key, sha256=sha256, share=BLOCKS_PROGRESS_SHARE
    )
    if not recording.recorded:
        # A copy of this block got there first (or the job ended): keep only its file.
        run = runtime.store.get_run(job.tenant, job.id, attempt)
        if run is None or run.block_results.get(key) != sha256:
            _discard_blobs(runtime, [sha256])
        return "stale" if recording.superseded else BlockStartOutcome.recorded.value
    logger.info(
        "job %s: block %s recorded (%d of %d)", job.id, key, recording.done, recording.total
    )
    if recording.completes_run:
        _send_assembly(runtime, job.id, job.tenant, attempt)
    return "solved"


def _send_assembly(runtime: WorkerRuntime, job_id: str, tenant: str, attempt: int) -> None:
    run = runtime.store.get_run(tenant, job_id, attempt)
    if run is not None:
        enqueue_assembly(app, job_id=job_id, tenant=tenant, attempt=attempt, queue=run.plan.queue)


# assemble_job: the report of a sharded job ----------------------------------------------


def run_assembly(job_id: str, tenant: str, attempt: int) -> str:
    """Join the blocks, measure every set, store the report and graphs, finish the job."""
    runtime = worker_runtime()
    store = runtime.store
    start = store.begin_assembly(tenant, job_id, attempt=attempt)
    if start.outcome in (AssemblyStartOutcome.stale, AssemblyStartOutcome.missing):
        return start.outcome.value
    if start.outcome is AssemblyStartOutcome.incomplete:
        logger.error("job %s: assembly of attempt %d sent before its blocks", job_id, attempt)
        return start.outcome.value
    job = store.get_job(tenant, job_id)
    run = store.get_run(tenant, job_id, attempt)
    if job is None or run is None:
        return AssemblyStartOutcome.missing.value
    if start.outcome is AssemblyStartOutcome.canceled:
        end_job(runtime, job, JobStatus.canceled, attempt=attempt)
        return start.outcome.value
    if start.deliveries > runtime.settings.task_max_attempts:
        end_job(
            runtime,
            job,
            JobStatus.failed,
            attempt=attempt,
            error=_worker_lost_problem(job_id, start.deliveries - 1, "the job's assembly"),
        )
        return "exhausted"

    with ending_job_on_error(runtime, job, attempt=attempt) as ending:
        params = job.spec.params
        progress = JobProgressReporter(store, job, attempt=attempt)
        results: dict[str, SetAnalysis] = {}
        n_sets = len(job.spec.sets)
        for position, set_input in enumerate(job.spec.sets):
            blocks = [
                read_block(runtime.blobs.path_of(run.block_results[block_key(position, b)]))
                for b in range(len(run.plan.sets[position].blocks))
            ]

            def set_progress(stage: str, fraction: float, position: int = position) -> None:
                overall = (position + fraction) / n_sets
                progress(
                    f"{job.spec.sets[position].name}:{stage}",
                    BLOCKS_PROGRESS_SHARE + (1 - BLOCKS_PROGRESS_SHARE) * overall,
                )

            with warnings.catch_warnings():
                # As in `analyze`: empty classes and the like give harmless NaN warnings.
                warnings.simplefilter("ignore", category=RuntimeWarning)
                results[set_input.name] = measure_set(
                    _load_set(
                        runtime.blobs, set_input, max_array_bytes=runtime.settings.array_limit_bytes
                    ),
                    NNKGraph.concatenate([block.nnk for block in blocks]),
                    params=params,
                    progress=set_progress,
                    warnings=sorted({b.device_warning for b in blocks if b.device_warning}),
                )
        set_reports = [result.report for result in results.values()]
        report = Report(
            job_id=job_id,
            algorithm_version=ALGORITHM_VERSION,
            params=params,
            sets=set_reports,
            comparison=comparison(set_reports) if len(set_reports) > 1 else None,
        )
        _succeed(
            runtime,
            job,
            Analysis(report=report, sets=results),
            attempt=attempt,
            only_if_absent=True,
        )
        return "assembled"
    assert ending.status is not None
    return ending.status.value


# Celery wiring --------------------------------------------------------------------------


# Signals that end a process whose allocation failed under its address-space limit:
# C++ code (torch, faiss) aborts on std::bad_alloc, or touches memory it never got.
# SIGKILL is left out: it is also how an operator, or a lost node, stops a worker.
_MEMORY_DEATHS = re.compile(r"signal \d+ \((SIGABRT|SIGSEGV|SIGBUS)\)")


class JobRequest(Request):
    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        # Runs in the worker's main process, which outlives the pool child that died.
        exception = getattr(exc_info, "exception", None)
        death = (
            _MEMORY_DEATHS.search(str(exception))
            if isinstance(exception, WorkerLostError)
            else None
        )
        if death is not None and self.name == ANALYZE_SETS_TASK:
            job_id, tenant = self.args[:2]
            try:
                runtime = worker_runtime()
                job = runtime.store.get_job(tenant, job_id)
                if job is not None:
                    runtime.store.record_attempt_death(
                        tenant, job_id, attempt=job.attempts, cause=death.group(1)
                    )
            except Exception:
                logger.exception("job %s: recording how its process died failed", job_id)
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        # Runs in the worker's main process. At the hard limit the pool kills the child,
        # which can no longer record anything: mark the job failed here, or its record
        # would say `running` for ever (the message is acknowledged, never redelivered).
        super().on_timeout(soft, timeout)
        if soft:
            return
        job_id, tenant, *rest = self.args
        attempt = int(rest[0]) if rest else None
        runtime = worker_runtime()
        job = runtime.store.get_job(tenant, job_id)
        if job is None:
            return
        end_job(
            runtime,
            job,
            JobStatus.failed,
            attempt=attempt,
            error=job_problem(
                job_id,
                status=500,
                title="Time limit exceeded",
                slug="time-limit",
                detail=f"A task of the job was stopped after {timeout} s "
                "(NNKGEO_TASK_TIME_LIMIT_S).",
            ),
        )


class JobTask(Task):
    Request = JobRequest


@app.task(name=ANALYZE_SETS_TASK, base=JobTask)
def analyze_sets(job_id: str, tenant: str) -> None:
    run_job(job_id, tenant)


# Outcomes are kept (TASK_OUTCOME_TTL_S) so that tests and operators can see what a
# given delivery did; they are one word each.
@app.task(name=SOLVE_BLOCK_TASK, base=JobTask, bind=True, ignore_result=False)
def solve_block(
    self: Task, job_id: str, tenant: str, attempt: int, set_index: int, block_index: int
) -> str:
    return run_block(
        job_id, tenant, attempt, set_index, block_index, worker=self.request.hostname or ""
    )


@app.task(name=ASSEMBLE_JOB_TASK, base=JobTask, ignore_result=False)
def assemble_job(job_id: str, tenant: str, attempt: int) -> str:
    return run_assembly(job_id, tenant, attempt)
