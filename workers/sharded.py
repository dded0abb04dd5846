"""A large job in row blocks: fan-out, one block (``solve_block``), the assembly.

``analyze_sets`` plans the job (:func:`plan_sets`); when some set has several blocks it
validates the sets, builds each set's approximate index once (where ``knn`` resolves
to "approximate"), records the plan under its attempt and sends one ``solve_block`` per
(set, row block) (:func:`fan_out`). Each block solves its rows against all points,
writes them to the blob store and records the blob in the store, once (a redelivered
block finds its result and stops). The recording that completes the run sends ``assemble_job``
(:func:`run_assembly`), which joins the blocks, measures each set and finishes the job
as the single task would have.

Leases: the job's lease (taken by its claim) covers the fan-out only; each block holds
its own lease while it solves, and the reaper sends a block whose lease expired again.
The assembly takes the job's lease again when it starts (fenced by the attempt), renews
it while it runs and releases it at the end: should its worker die, the reaper requeues
the job once the lease expires, to be claimed as its next attempt, and a redelivered
assembly message finding the lease live is dropped.

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

import logging
import warnings

import numpy as np

from api_schemas import JobStatus
from api_schemas.params import resolve_knn
from jobstate.dispatch import enqueue_assembly, enqueue_block
from jobstate.records import JobRecord, SetBlocks, ShardedRun, block_key
from jobstate.store import (
    AssemblyStart,
    AssemblyStartOutcome,
    BlockStart,
    BlockStartOutcome,
    ProgressVerdict,
    new_claim_token,
)
from workers.celery_app import app
from workers.comparison_jobs import add_job_sections
from workers.geometry import Analysis, EmbeddingSet, SetAnalysis, validate_set
from workers.geometry.analysis import (
    NNKGraph,
    build_approximate_index_for,
    build_nnk_graph,
    measure_set,
    resolve_device,
)
from workers.geometry.report import assemble_report
from workers.inputs import load_set
from workers.leases import holding_lease
from workers.outcomes import end_job, ending_job_on_error, succeed, worker_lost_problem
from workers.progress import (
    BLOCKS_PROGRESS_SHARE,
    CancelCheck,
    JobProgressReporter,
    raise_unless_carrying_on,
)
from workers.results import discard_blobs, put_blob
from workers.runtime import WorkerRuntime, worker_runtime
from workers.sharding import (
    ShardingLimits,
    plan_row_blocks,
    read_approximate_index,
    read_block,
    write_approximate_index,
    write_block,
)

logger = logging.getLogger(__name__)


def plan_sets(runtime: WorkerRuntime, sets: list[EmbeddingSet], job: JobRecord) -> list[SetBlocks]:
    """The row blocks of each set (`workers.sharding.plan_row_blocks`), in order."""
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


def fan_out(
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
        n_points = len(embedding_set.embeddings)
        if resolve_knn(params.knn, n_points) == "approximate" and len(blocks.blocks) > 1:
            progress(f"{embedding_set.name}:index", 0.0)
            index = build_approximate_index_for(
                np.ascontiguousarray(embedding_set.embeddings, dtype=np.float32), params=params
            )
            sha256 = put_blob(
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
        discard_blobs(runtime, [s.approximate_index for s in planned if s.approximate_index])
        raise_unless_carrying_on(verdict, job.id)
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
    settings = runtime.settings
    start = store.begin_block(
        tenant,
        job_id,
        attempt=attempt,
        block=key,
        worker=worker,
        token=new_claim_token(),
        lease_ms=settings.lease_ms,
    )
    if start.outcome is BlockStartOutcome.recorded:
        if start.run_awaits_assembly:
            # The block that completed the run may have died before sending the assembly.
            _send_assembly(runtime, job_id, tenant, attempt)
        return start.outcome.value
    if start.outcome in (
        BlockStartOutcome.stale,
        BlockStartOutcome.missing,
        BlockStartOutcome.leased,
    ):
        # Leased: a redelivered message while the block's worker is alive; leave it be.
        return start.outcome.value
    assert start.lease is not None
    try:
        with holding_lease(
            store,
            start.lease,
            lease_ms=settings.lease_ms,
            interval_s=settings.heartbeat_interval_s,
        ):
            return _solve_block(runtime, job_id, tenant, attempt, set_index, block_index, start)
    finally:
        # Recorded, failed or canceled: no reaper should send this block again.
        try:
            store.release_lease(start.lease)
        except Exception:
            logger.exception("job %s: releasing the lease of block %s failed", job_id, key)


def _solve_block(
    runtime: WorkerRuntime,
    job_id: str,
    tenant: str,
    attempt: int,
    set_index: int,
    block_index: int,
    start: BlockStart,
) -> str:
    """Solve a block whose start (and lease) `run_block` holds; record it once."""
    store = runtime.store
    key = block_key(set_index, block_index)
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
            error=worker_lost_problem(job_id, start.deliveries - 1, what),
        )
        return "exhausted"

    with ending_job_on_error(runtime, job, attempt=attempt) as ending:
        set_blocks = run.plan.sets[set_index]
        embedding_set = load_set(
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
    sha256 = put_blob(
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
            discard_blobs(runtime, [sha256])
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
    """Join the blocks, measure every set, store the report and graphs, finish the job.

    The start takes the job's lease, fenced by the attempt
    (`jobstate.store.RunStore.begin_assembly`); a heartbeat renews it while the
    assembly runs, and it is released at the end. A worker killed mid-assembly thus
    loses the lease within LEASE_S, and the reaper requeues the job as its next
    attempt; a redelivery finding the lease live ("leased") is dropped.

    Returns what happened: "assembled", "canceled", "failed", "stale", "missing",
    "incomplete" (sent before its blocks were all recorded), "leased", "exhausted".
    """
    runtime = worker_runtime()
    store = runtime.store
    settings = runtime.settings
    start = store.begin_assembly(
        tenant, job_id, attempt=attempt, token=new_claim_token(), lease_ms=settings.lease_ms
    )
    if start.outcome in (
        AssemblyStartOutcome.stale,
        AssemblyStartOutcome.missing,
        AssemblyStartOutcome.leased,
    ):
        # Leased: a redelivered message while the assembly's worker is alive.
        return start.outcome.value
    if start.outcome is AssemblyStartOutcome.incomplete:
        logger.error("job %s: assembly of attempt %d sent before its blocks", job_id, attempt)
        return start.outcome.value
    assert start.lease is not None
    try:
        with holding_lease(
            store, start.lease, lease_ms=settings.lease_ms, interval_s=settings.heartbeat_interval_s
        ):
            return _assemble(runtime, job_id, tenant, attempt, start)
    finally:
        # Finishing the job released the lease already; this covers every other end
        # (stale, missing), so that the reaper does not requeue a job left behind.
        try:
            store.release_lease(start.lease)
        except Exception:
            logger.exception("job %s: releasing the assembly's lease failed", job_id)


def _assemble(
    runtime: WorkerRuntime, job_id: str, tenant: str, attempt: int, start: AssemblyStart
) -> str:
    """Assemble a run whose start (and the job's lease) `run_assembly` holds."""
    store = runtime.store
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
            error=worker_lost_problem(job_id, start.deliveries - 1, "the job's assembly"),
        )
        return "exhausted"

    with ending_job_on_error(runtime, job, attempt=attempt) as ending:
        params = job.spec.params
        progress = JobProgressReporter(store, job, attempt=attempt)
        results: dict[str, SetAnalysis] = {}
        loaded: list[EmbeddingSet] = []
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
                # Empty classes and the like give harmless NaN warnings.
                warnings.simplefilter("ignore", category=RuntimeWarning)
                loaded.append(
                    load_set(
                        runtime.blobs, set_input, max_array_bytes=runtime.settings.array_limit_bytes
                    )
                )
                results[set_input.name] = measure_set(
                    loaded[-1],
                    NNKGraph.concatenate([block.nnk for block in blocks]),
                    params=params,
                    progress=set_progress,
                    warnings=sorted({b.device_warning for b in blocks if b.device_warning}),
                )
        report = assemble_report(
            [result.report for result in results.values()],
            params=params,
            job_id=job_id,
            graphs=[result.directed for result in results.values()],
            point_ids=[embedding_set.ids for embedding_set in loaded],
        )
        analysis = add_job_sections(
            runtime, job, Analysis(report=report, sets=results), sets=loaded
        )
        succeed(runtime, job, analysis, attempt=attempt)
        return "assembled"
    assert ending.status is not None
    return ending.status.value
