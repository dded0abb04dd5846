"""``analyze_sets``: every job starts here; a small job, or a model job, ends here too.

The delivery claims the job (attempt n) and then:

- an embed or study job builds its sets with `workers.model_jobs` (training, embedding)
  and is analysed right there, never sharded;
- a small job (every set one block) is analysed right there by `analyze`;
- a large one is fanned out in row blocks (`workers.sharded`).

The claim takes the job's lease, which a heartbeat thread renews while the job runs
here (`workers.leases`); a sharded job's lease is released once its blocks are sent.
A message for a finished job does nothing, nor does one for a job whose lease another
worker holds (a redelivery); a job whose worker died is requeued by the reaper when its
lease expires, claimed again and finishes once; one whose process died of memory ends
saying so.
"""

from __future__ import annotations

import logging

from api_schemas import JobStatus
from api_schemas.params import resolve_knn
from jobstate.errors import AnalysisCanceled
from jobstate.memory_budget import estimate_set_memory, plan_solve
from jobstate.records import JobRecord, utc_now
from jobstate.retention import sweep_expired_graphs
from jobstate.store import ClaimOutcome, Lease, new_claim_token
from jobstate.telemetry.logs import bind_job
from workers.comparison_jobs import add_job_sections
from workers.geometry import EmbeddingSet, analyze
from workers.inputs import load_set
from workers.leases import holding_lease
from workers.model_jobs import add_study_section, build_model_job_sets
from workers.outcomes import ending_job_on_error, memory_problem, succeed, worker_lost_problem
from workers.progress import MODEL_PROGRESS_SHARE, JobProgressReporter, progress_share
from workers.runtime import (
    WorkerRuntime,
    limit_torch_threads,
    model_sandbox_policy,
    worker_runtime,
)
from workers.sharded import fan_out, plan_sets
from workers.sharding import needs_sharding

logger = logging.getLogger(__name__)


def run_job(job_id: str, tenant: str) -> None:
    """Claim the job; analyse it here if it is small, else send its blocks."""
    runtime = worker_runtime()
    claimed = _claim(runtime, job_id, tenant)
    if claimed is None:
        return
    job, attempt, lease = claimed
    settings = runtime.settings
    fanned_out = False
    try:
        with (
            holding_lease(
                runtime.store,
                lease,
                lease_ms=settings.lease_ms,
                interval_s=settings.heartbeat_interval_s,
            ),
            ending_job_on_error(runtime, job, attempt=attempt),
        ):
            if job.cancel_requested:
                raise AnalysisCanceled(f"job {job_id} was canceled")
            if job.spec.kind != "sets":
                _run_model_job(runtime, job, attempt=attempt)
                return
            sets = [
                load_set(
                    runtime.blobs, set_input, max_array_bytes=runtime.settings.array_limit_bytes
                )
                for set_input in job.spec.sets
            ]
            set_blocks = plan_sets(runtime, sets, job)
            if needs_sharding([s.blocks for s in set_blocks]):
                fan_out(runtime, job, sets, set_blocks, attempt=attempt)
                fanned_out = True
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
            analysis = add_job_sections(runtime, job, analysis, sets=sets)
            succeed(runtime, job, analysis, attempt=attempt, sets=sets)
    finally:
        if fanned_out:
            # The blocks carry on in their own deliveries, each counted by the run; the
            # job's lease covered only this planning step.
            try:
                runtime.store.release_lease(lease)
            except Exception:
                logger.exception("job %s: releasing its lease failed", job_id)
        try:
            sweep_expired_graphs(runtime.store, runtime.blobs)
        except Exception:
            logger.exception("sweeping expired graphs failed")


def _claim(runtime: WorkerRuntime, job_id: str, tenant: str) -> tuple[JobRecord, int, Lease] | None:
    """Claim the job for this delivery; None when there is nothing to run."""
    store = runtime.store
    claim = store.claim_job(
        tenant,
        job_id,
        now=utc_now(),
        max_attempts=runtime.settings.task_max_attempts,
        token=new_claim_token(),
        lease_ms=runtime.settings.lease_ms,
    )
    if claim.outcome is ClaimOutcome.missing:
        logger.warning("job %s of %s: no record (expired?); dropping the message", job_id, tenant)
        return None
    assert claim.job is not None
    job = claim.job
    if claim.outcome is ClaimOutcome.finished:
        logger.info("job %s already %s; nothing to do", job_id, job.status.value)
        return None
    if claim.outcome is ClaimOutcome.leased:
        # A redelivered message (the broker's visibility timeout, a lost connection)
        # while the attempt that holds the lease is alive: leave that attempt be.
        logger.info(
            "job %s: attempt %d holds its lease; dropping this delivery", job_id, claim.attempt
        )
        return None
    if claim.outcome is ClaimOutcome.exhausted:
        store.finish_job(
            job,
            status=JobStatus.failed,
            now=utc_now(),
            from_statuses=(JobStatus.queued, JobStatus.running),
            error=worker_lost_problem(job_id, claim.attempt, "this job"),
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
                error=memory_problem(
                    runtime,
                    job_id,
                    what=f"the process of its attempt {claim.attempt - 1} died of "
                    f"{previous.died_of}",
                    estimate_bytes=previous.estimate_bytes,
                ),
            )
            return None
    assert claim.lease is not None
    # The task's log records name the job from its message; the attempt is known only now.
    bind_job(attempt=claim.attempt)
    logger.info("job %s of %s: attempt %d", job_id, tenant, claim.attempt)
    return job, claim.attempt, claim.lease


def _record_estimate(
    runtime: WorkerRuntime, job: JobRecord, sets: list[EmbeddingSet], *, attempt: int
) -> None:
    """Note the attempt's memory estimate (its largest set) before it allocates anything.

    Should its process die, the next delivery reads this and the cause of death
    (:class:`workers.job_task.JobRequest`) and ends the job saying memory, instead of
    trying again.
    """
    params = job.spec.params
    estimate = max(
        estimate_set_memory(
            int(s.embeddings.shape[0]),
            int(s.embeddings.shape[1]) if s.embeddings.ndim == 2 else 1,
            params.k,
            n_classes=0 if s.labels is None else int(s.embeddings.shape[0]),
            threads=runtime.cpu_threads,
            approximate=resolve_knn(params.knn, int(s.embeddings.shape[0])) == "approximate",
            solve_block=plan_solve(
                int(s.embeddings.shape[0]),
                int(s.embeddings.shape[1]) if s.embeddings.ndim == 2 else 1,
                params.k,
                budget_bytes=runtime.settings.memory_planning_budget_bytes,
                threads=runtime.cpu_threads,
                approximate=resolve_knn(params.knn, int(s.embeddings.shape[0])) == "approximate",
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


def _run_model_job(runtime: WorkerRuntime, job: JobRecord, *, attempt: int) -> None:
    """An embed or study job: make its sets (`workers.model_jobs`), analyse them here.

    Never sharded: its sets exist only in this process, and training dominates anyway.
    """
    progress = JobProgressReporter(runtime.store, job, attempt=attempt)
    limit_torch_threads(runtime.threads)
    sets = build_model_job_sets(
        job.spec,
        locate_blob=runtime.blobs.path_of,
        data_roots=runtime.settings.data_root_paths,
        sandbox=model_sandbox_policy(runtime),
        max_array_bytes=runtime.settings.array_limit_bytes,
        progress=progress_share(progress, 0.0, MODEL_PROGRESS_SHARE),
    )
    analysis = analyze(
        sets,
        params=job.spec.params,
        job_id=job.id,
        progress=progress_share(progress, MODEL_PROGRESS_SHARE, 1 - MODEL_PROGRESS_SHARE),
        n_threads=runtime.threads,
        memory_budget_bytes=runtime.settings.memory_planning_budget_bytes,
    )
    analysis = add_study_section(analysis, sets, params=job.spec.params)
    succeed(runtime, job, analysis, attempt=attempt, sets=sets)
