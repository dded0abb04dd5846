"""Attempt fencing in the job store, straight against a private redis-server.

A redelivered job is claimed again (attempt 2) while the first run (attempt 1) may still
be alive; every write attempt 1 makes after that must be refused by the store's Lua
scripts, and leave the stored record as attempt 2 left it. No worker, no API: the Celery
paths only ever reach these scripts through `jobstate.store.Store`, so this is where the
fence is tested.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis

from api_schemas import AnalysisParams, JobProgress, JobStatus
from jobstate.records import (
    JobRecord,
    JobSpec,
    SetBlocks,
    ShardedRun,
    block_key,
    new_job_id,
    utc_now,
)
from jobstate.store import (
    BlockStartOutcome,
    ClaimOutcome,
    ProgressVerdict,
    Store,
)
from tests.integration.stack import ServiceStack

pytestmark = pytest.mark.integration

TENANT = "alpha"
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    stack = ServiceStack(tmp_path_factory.mktemp("fencing-redis"))
    stack.root.mkdir(parents=True, exist_ok=True)
    try:
        stack.start_redis()
        # The store reads every reply as str, as its own `Store.from_settings` client does.
        client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        job_store = Store(client, result_ttl_s=600, job_ttl_s=600, idempotency_ttl_s=600)
        yield job_store
        job_store.close()
    finally:
        stack.stop()


def _queued_job(store: Store) -> JobRecord:
    """A queued job record, stored as `JobService._start` stores one (no datasets pinned)."""
    job = JobRecord(
        id=new_job_id(),
        tenant=TENANT,
        status=JobStatus.queued,
        spec=JobSpec(params=AnalysisParams()),
        queue="cpu",
        cache_key="fencing-test",
        created_at=utc_now(),
    )
    store.create_job(job)
    return job


def _claim_twice(store: Store, job: JobRecord) -> JobRecord:
    """Claim the job, then claim it again as a redelivered message would; the record after."""
    first = store.claim_job(TENANT, job.id, now=utc_now(), max_attempts=MAX_ATTEMPTS)
    assert (first.outcome, first.attempt) == (ClaimOutcome.claimed, 1)
    second = store.claim_job(TENANT, job.id, now=utc_now(), max_attempts=MAX_ATTEMPTS)
    assert (second.outcome, second.attempt) == (ClaimOutcome.claimed, 2)
    assert second.job is not None
    return second.job


def test_progress_of_a_superseded_attempt_is_refused(store: Store) -> None:
    job = _queued_job(store)
    claimed = _claim_twice(store, job)

    stale = store.record_progress(TENANT, job.id, attempt=1, stage="stale:nnk", fraction=0.9)
    assert stale is ProgressVerdict.superseded
    assert store.get_job(TENANT, job.id) == claimed

    current = store.record_progress(TENANT, job.id, attempt=2, stage="x:nnk", fraction=0.5)
    assert current is ProgressVerdict.carry_on
    stored = store.get_job(TENANT, job.id)
    assert stored is not None
    assert stored.progress == JobProgress(stage="x:nnk", fraction=0.5)


def test_finish_of_a_superseded_attempt_is_refused(store: Store) -> None:
    job = _queued_job(store)
    claimed = _claim_twice(store, job)
    later = utc_now() + timedelta(seconds=1)

    assert not store.finish_job(
        claimed, status=JobStatus.succeeded, now=later, attempt=1, result_id="stale-result"
    )
    assert store.get_job(TENANT, job.id) == claimed

    assert store.finish_job(
        claimed, status=JobStatus.succeeded, now=later, attempt=2, result_id="current-result"
    )
    stored = store.get_job(TENANT, job.id)
    assert stored is not None
    assert (stored.status, stored.result_id, stored.attempts) == (
        JobStatus.succeeded,
        "current-result",
        2,
    )


def _plan(attempt: int) -> ShardedRun:
    """One set in two blocks, as `workers.sharded.fan_out` records a run."""
    return ShardedRun(
        attempt=attempt,
        queue="cpu",
        sets=[SetBlocks(name="x", n_points=200, blocks=[(0, 100), (100, 200)])],
    )


def test_blocks_of_a_superseded_attempt_are_refused(store: Store) -> None:
    job = _queued_job(store)
    first = store.claim_job(TENANT, job.id, now=utc_now(), max_attempts=MAX_ATTEMPTS)
    assert store.start_run(TENANT, job.id, _plan(first.attempt)) is ProgressVerdict.carry_on
    block = block_key(0, 0)
    started = store.begin_block(TENANT, job.id, attempt=1, block=block, worker="w1")
    assert started.outcome is BlockStartOutcome.start

    # The redelivery: attempt 2 claims the job and plans its own run while the run of
    # attempt 1 (its hash still stored) is mid-block.
    second = store.claim_job(TENANT, job.id, now=utc_now(), max_attempts=MAX_ATTEMPTS)
    assert second.attempt == 2
    assert store.start_run(TENANT, job.id, _plan(2)) is ProgressVerdict.carry_on
    job_before = store.get_job(TENANT, job.id)
    run_before = store.get_run(TENANT, job.id, 1)

    assert store.start_run(TENANT, job.id, _plan(1)) is ProgressVerdict.superseded
    stale_start = store.begin_block(TENANT, job.id, attempt=1, block=block, worker="w1")
    assert stale_start.outcome is BlockStartOutcome.stale
    stale_record = store.record_block(
        TENANT, job.id, attempt=1, block=block, sha256="a" * 64, share=0.8
    )
    assert stale_record.superseded and not stale_record.recorded
    assert store.run_verdict(TENANT, job.id, attempt=1) is ProgressVerdict.superseded
    assert store.get_job(TENANT, job.id) == job_before
    assert store.get_run(TENANT, job.id, 1) == run_before

    for block_index, sha256 in enumerate(["b" * 64, "c" * 64]):
        name = block_key(0, block_index)
        start = store.begin_block(TENANT, job.id, attempt=2, block=name, worker="w2")
        assert start.outcome is BlockStartOutcome.start
        recording = store.record_block(
            TENANT, job.id, attempt=2, block=name, sha256=sha256, share=0.8
        )
        assert recording.recorded and not recording.superseded
    assert recording.completes_run
    run = store.get_run(TENANT, job.id, 2)
    assert run is not None
    assert run.block_results == {"0:0": "b" * 64, "0:1": "c" * 64}
    stored = store.get_job(TENANT, job.id)
    assert stored is not None
    assert stored.progress == JobProgress(stage="blocks", fraction=0.8)
