"""Attempt fencing and leases in the job store, straight against a private redis-server.

A job whose lease expired is claimed again (attempt 2) while the first run (attempt 1)
may still be alive; every write attempt 1 makes after that must be refused by the
store's Lua scripts, and leave the stored record as attempt 2 left it. A redelivery while
the lease is live claims nothing; a claim or finish run twice (redis-py retrying after a
lost reply) answers as it did the first time. No worker, no API: the Celery
paths only ever reach these scripts through `jobstate.store.Store`, so this is where the
fence is tested.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis

from api_schemas import AnalysisParams, JobProgress, JobStatus
from jobstate.records import (
    JobRecord,
    JobSpec,
    ResultRecord,
    SetBlocks,
    ShardedRun,
    block_key,
    new_job_id,
    utc_now,
)
from jobstate.settings import Settings
from jobstate.store import (
    AssemblyStartOutcome,
    BlockStartOutcome,
    CancelOutcome,
    Claim,
    ClaimOutcome,
    OutboxMessage,
    ProgressVerdict,
    ReapOutcome,
    Store,
    new_claim_token,
)
from jobstate.store.keys import LEASES_KEY, lease_key
from jobstate.store.outbox import DELIVER_WEBHOOK_TASK
from jobstate.store.results import PutResultOutcome
from tests.integration.stack import ServiceStack
from workers.reaper import reap_once

pytestmark = pytest.mark.integration

TENANT = "alpha"
MAX_ATTEMPTS = 3
LEASE_MS = 60_000
# A lease the tests let expire: long enough for the claim's own reply, short to wait out.
SHORT_LEASE_MS = 100

# The jobs whose end the store sent a webhook message for (every job here has a
# callback_url): the store's sender stands in for the broker.
ANNOUNCED: list[tuple[str, JobStatus]] = []
CALLBACK_URL = "http://hooks.invalid/nnkgeo"


def _record_webhook(message: OutboxMessage) -> None:
    if message.task == DELIVER_WEBHOOK_TASK:
        _, job_id, event_id = message.args
        ANNOUNCED.append((job_id, JobStatus(event_id.rsplit("_", 1)[1])))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    stack = ServiceStack(tmp_path_factory.mktemp("fencing-redis"))
    stack.root.mkdir(parents=True, exist_ok=True)
    try:
        stack.start_redis()
        # The store reads every reply as str, as its own `Store.from_settings` client does.
        client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        job_store = Store(
            client,
            result_ttl_s=600,
            job_ttl_s=600,
            idempotency_ttl_s=600,
            sender=_record_webhook,
        )
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
        callback_url=CALLBACK_URL,
    )
    store.create_job(job)
    return job


def _claim(
    store: Store,
    job: JobRecord,
    *,
    lease_ms: int = LEASE_MS,
    token: str | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> Claim:
    return store.claim_job(
        TENANT,
        job.id,
        now=utc_now(),
        max_attempts=max_attempts,
        token=token or new_claim_token(),
        lease_ms=lease_ms,
    )


def _block_lease(lease_ms: int = LEASE_MS) -> dict[str, Any]:
    return {"token": new_claim_token(), "lease_ms": lease_ms}


def _let_lease_expire() -> None:
    time.sleep(SHORT_LEASE_MS / 1000 + 0.1)


def _claim_twice(store: Store, job: JobRecord) -> JobRecord:
    """Claim the job, let its lease expire (its worker died), claim it again; the record."""
    first = _claim(store, job, lease_ms=SHORT_LEASE_MS)
    assert (first.outcome, first.attempt) == (ClaimOutcome.claimed, 1)
    _let_lease_expire()
    second = _claim(store, job)
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
    first = _claim(store, job, lease_ms=SHORT_LEASE_MS)
    assert store.start_run(TENANT, job.id, _plan(first.attempt)) is ProgressVerdict.carry_on
    block = block_key(0, 0)
    started = store.begin_block(
        TENANT, job.id, attempt=1, block=block, worker="w1", **_block_lease()
    )
    assert started.outcome is BlockStartOutcome.start

    # Attempt 1's lease expires: attempt 2 claims the job and plans its own run while the
    # run of attempt 1 (its hash still stored) is mid-block.
    _let_lease_expire()
    second = _claim(store, job)
    assert second.attempt == 2
    assert store.start_run(TENANT, job.id, _plan(2)) is ProgressVerdict.carry_on
    job_before = store.get_job(TENANT, job.id)
    run_before = store.get_run(TENANT, job.id, 1)

    assert store.start_run(TENANT, job.id, _plan(1)) is ProgressVerdict.superseded
    stale_start = store.begin_block(
        TENANT, job.id, attempt=1, block=block, worker="w1", **_block_lease()
    )
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
        start = store.begin_block(
            TENANT, job.id, attempt=2, block=name, worker="w2", **_block_lease()
        )
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


def test_a_redelivery_while_the_lease_is_live_does_not_fence_out_the_live_worker(
    store: Store,
) -> None:
    job = _queued_job(store)
    live = _claim(store, job)
    assert (live.outcome, live.attempt) == (ClaimOutcome.claimed, 1)
    before = store.get_job(TENANT, job.id)

    # The broker redelivers the unacknowledged message (visibility timeout, lost
    # connection) while attempt 1 runs and renews its lease.
    redelivery = _claim(store, job)
    assert (redelivery.outcome, redelivery.attempt) == (ClaimOutcome.leased, 1)
    assert redelivery.lease is None
    assert store.get_job(TENANT, job.id) == before

    # The live worker still owns the job: its progress, renewal and finish go through.
    assert live.lease is not None
    assert store.renew_lease(live.lease, lease_ms=LEASE_MS)
    verdict = store.record_progress(TENANT, job.id, attempt=1, stage="x:nnk", fraction=0.4)
    assert verdict is ProgressVerdict.carry_on
    assert store.finish_job(before, status=JobStatus.succeeded, now=utc_now(), attempt=1)
    assert store.lease_ttl_ms(TENANT, job.id) < 0


def test_a_claim_retried_with_its_token_answers_the_same_and_counts_once(store: Store) -> None:
    job = _queued_job(store)
    token = new_claim_token()
    first = _claim(store, job, token=token)
    retried = _claim(store, job, token=token)
    assert (first.outcome, first.attempt) == (ClaimOutcome.claimed, 1)
    assert (retried.outcome, retried.attempt, retried.lease) == (
        ClaimOutcome.claimed,
        1,
        first.lease,
    )
    stored = store.get_job(TENANT, job.id)
    assert stored is not None
    assert stored.attempts == 1


def test_a_finish_retried_answers_the_same_and_announces_once(store: Store) -> None:
    job = _queued_job(store)
    claimed = _claim(store, job)
    assert claimed.job is not None
    finished_before = store.job_metrics().finished.get("succeeded", 0)
    ANNOUNCED.clear()
    now = utc_now()

    assert store.finish_job(
        claimed.job, status=JobStatus.succeeded, now=now, attempt=1, result_id=job.id
    )
    # redis-py runs the script again after a lost reply: same outcome, nothing counted,
    # and no second webhook (its outbox entry was sent and removed by the first call).
    ended = store.get_job(TENANT, job.id)
    assert store.finish_job(
        claimed.job, status=JobStatus.succeeded, now=now, attempt=1, result_id=job.id
    )
    assert store.get_job(TENANT, job.id) == ended
    assert [(job.id, JobStatus.succeeded)] == ANNOUNCED
    assert store.job_metrics().finished.get("succeeded", 0) == finished_before + 1
    # Another status, or another attempt, is still refused.
    assert not store.finish_job(claimed.job, status=JobStatus.failed, now=now, attempt=1)
    assert not store.finish_job(claimed.job, status=JobStatus.succeeded, now=now, attempt=2)


def _result(job: JobRecord, report: str) -> ResultRecord:
    return ResultRecord(id=job.id, report_json=report, etag=report, graphs={}, created_at=utc_now())


def test_two_attempts_store_one_result_and_announce_one_end(store: Store) -> None:
    job = _queued_job(store)
    stale = _claim(store, job, lease_ms=SHORT_LEASE_MS)
    _let_lease_expire()
    current = _claim(store, job)
    assert (stale.attempt, current.attempt) == (1, 2)
    assert current.job is not None
    ANNOUNCED.clear()

    # Both attempts finish their analysis; the stale one races ahead of the current one.
    assert store.put_result(TENANT, _result(job, "stale"), attempt=1) is PutResultOutcome.stale
    assert store.get_result(TENANT, job.id) is None
    assert not store.finish_job(
        current.job, status=JobStatus.succeeded, now=utc_now(), attempt=1, result_id=job.id
    )
    assert stale.lease is not None
    assert not store.renew_lease(stale.lease, lease_ms=LEASE_MS)

    assert store.put_result(TENANT, _result(job, "current"), attempt=2) is PutResultOutcome.stored
    # A copy of the same attempt's last step (a redelivered assembly) keeps the first.
    assert store.put_result(TENANT, _result(job, "copy"), attempt=2) is PutResultOutcome.kept_first
    assert store.finish_job(
        current.job, status=JobStatus.succeeded, now=utc_now(), attempt=2, result_id=job.id
    )
    stored_result = store.get_result(TENANT, job.id)
    assert stored_result is not None
    assert stored_result.report_json == "current"
    # After the finish, even the current attempt's second result is refused.
    assert store.put_result(TENANT, _result(job, "late"), attempt=2) is PutResultOutcome.stale
    assert [(job.id, JobStatus.succeeded)] == ANNOUNCED


def test_the_reaper_requeues_a_job_whose_lease_expired_and_fences_its_attempt(
    store: Store,
) -> None:
    job = _queued_job(store)
    alive = _queued_job(store)
    dead = _claim(store, job, lease_ms=SHORT_LEASE_MS)
    live = _claim(store, alive)
    _let_lease_expire()

    reaped = store.reap_expired_leases(max_attempts=MAX_ATTEMPTS)
    assert (job.id, ReapOutcome.requeued, 1) in [(r.job_id, r.outcome, r.attempts) for r in reaped]
    assert alive.id not in {r.job_id for r in reaped}
    requeued = store.get_job(TENANT, job.id)
    assert requeued is not None
    assert (requeued.status, requeued.attempts) == (JobStatus.queued, 1)
    # The dead attempt, were it only stalled, can change nothing any more.
    verdict = store.record_progress(TENANT, job.id, attempt=1, stage="late", fraction=0.9)
    assert verdict is ProgressVerdict.superseded
    assert dead.lease is not None
    assert not store.renew_lease(dead.lease, lease_ms=LEASE_MS)
    assert store.get_job(TENANT, job.id) == requeued
    # A second sweep (another reaper) finds nothing to do; the next claim is attempt 2.
    again = store.reap_expired_leases(max_attempts=MAX_ATTEMPTS)
    assert job.id not in {r.job_id for r in again}
    assert _claim(store, job).attempt == 2
    assert live.job is not None
    assert store.get_job(TENANT, alive.id) == live.job


def test_the_reaper_reports_a_lease_lost_on_the_last_attempt(store: Store) -> None:
    job = _queued_job(store)
    _claim(store, job, lease_ms=SHORT_LEASE_MS, max_attempts=1)
    _let_lease_expire()
    reaped = store.reap_expired_leases(max_attempts=1)
    assert (job.id, ReapOutcome.exhausted, 1) in [(r.job_id, r.outcome, r.attempts) for r in reaped]
    stored = store.get_job(TENANT, job.id)
    assert stored is not None
    assert stored.status is JobStatus.running


def test_a_renewed_lease_outlives_its_first_term(store: Store) -> None:
    job = _queued_job(store)
    claim = _claim(store, job, lease_ms=300)
    assert claim.lease is not None
    for _ in range(4):
        time.sleep(0.15)
        assert store.renew_lease(claim.lease, lease_ms=300)
    reaped = store.reap_expired_leases(max_attempts=MAX_ATTEMPTS)
    assert job.id not in {r.job_id for r in reaped}
    # A renewal landing between the reaper's read of its index and its reap: the index
    # says expired, the lease is live, and the lease wins.
    store._redis.zadd(LEASES_KEY, {f"{TENANT}/{job.id}": 0})
    reaped = store.reap_expired_leases(max_attempts=MAX_ATTEMPTS)
    assert job.id not in {r.job_id for r in reaped}
    assert _claim(store, job).outcome is ClaimOutcome.leased


def test_a_job_whose_last_attempt_lost_its_lease_ends_failed_saying_why(store: Store) -> None:
    job = _queued_job(store)
    _claim(store, job, lease_ms=SHORT_LEASE_MS, max_attempts=1)
    _let_lease_expire()
    ANNOUNCED.clear()

    # No message is sent for an exhausted job: no broker is needed.
    reap_once(store, Settings(task_max_attempts=1), celery=None)

    stored = store.get_job(TENANT, job.id)
    assert stored is not None
    assert stored.status is JobStatus.failed
    assert stored.error is not None
    assert stored.error.type.endswith("worker-lost")
    assert "lease" in (stored.error.detail or "")
    assert (job.id, JobStatus.failed) in ANNOUNCED
    assert store.lease_ttl_ms(TENANT, job.id) < 0


def test_a_block_redelivered_while_its_lease_is_live_is_left_to_its_worker(store: Store) -> None:
    job = _queued_job(store)
    claim = _claim(store, job)
    assert store.start_run(TENANT, job.id, _plan(claim.attempt)) is ProgressVerdict.carry_on
    block = block_key(0, 1)
    token = new_claim_token()
    live = store.begin_block(
        TENANT, job.id, attempt=1, block=block, worker="w1", token=token, lease_ms=LEASE_MS
    )
    assert (live.outcome, live.deliveries) == (BlockStartOutcome.start, 1)
    # A client retry of the same start answers the same and counts nothing.
    retried = store.begin_block(
        TENANT, job.id, attempt=1, block=block, worker="w1", token=token, lease_ms=LEASE_MS
    )
    assert (retried.outcome, retried.deliveries, retried.lease) == (
        BlockStartOutcome.start,
        1,
        live.lease,
    )
    redelivery = store.begin_block(
        TENANT, job.id, attempt=1, block=block, worker="w2", **_block_lease()
    )
    assert (redelivery.outcome, redelivery.lease) == (BlockStartOutcome.leased, None)
    run = store.get_run(TENANT, job.id, 1)
    assert run is not None


def test_the_reaper_sends_again_a_block_whose_lease_expired(store: Store) -> None:
    job = _queued_job(store)
    claim = _claim(store, job)
    assert store.start_run(TENANT, job.id, _plan(claim.attempt)) is ProgressVerdict.carry_on
    dead = store.begin_block(
        TENANT, job.id, attempt=1, block="0:0", worker="w1", **_block_lease(SHORT_LEASE_MS)
    )
    live = store.begin_block(TENANT, job.id, attempt=1, block="0:1", worker="w1", **_block_lease())
    assert dead.outcome is live.outcome is BlockStartOutcome.start
    _let_lease_expire()

    reaped = [r for r in store.reap_expired_leases(max_attempts=MAX_ATTEMPTS) if r.job_id == job.id]
    assert [(r.outcome, r.attempts, r.block) for r in reaped] == [(ReapOutcome.requeued, 1, "0:0")]
    # Its next delivery is counted as the second, and takes a fresh lease.
    again = store.begin_block(TENANT, job.id, attempt=1, block="0:0", worker="w2", **_block_lease())
    assert (again.outcome, again.deliveries) == (BlockStartOutcome.start, 2)
    # A recorded block, its lease released, is never sent again.
    assert again.lease is not None
    store.record_block(TENANT, job.id, attempt=1, block="0:0", sha256="d" * 64, share=0.8)
    assert store.release_lease(again.lease)
    _let_lease_expire()
    later = store.reap_expired_leases(max_attempts=MAX_ATTEMPTS)
    assert all(r.job_id != job.id for r in later)


# The assembly of a sharded run holds the job's lease ------------------------------------


def _recorded_run(store: Store, job: JobRecord, *, release_claim: bool = True) -> Claim:
    """Claim the job and record every block of its run, as its blocks' workers would.

    The claim's lease is released after, as `workers.single.run_job` does once its
    fan-out has sent the blocks, unless `release_claim` is False.
    """
    claim = _claim(store, job)
    assert store.start_run(TENANT, job.id, _plan(claim.attempt)) is ProgressVerdict.carry_on
    for block_index in range(2):
        recording = store.record_block(
            TENANT,
            job.id,
            attempt=claim.attempt,
            block=block_key(0, block_index),
            sha256=f"{block_index}" * 64,
            share=0.8,
        )
        assert recording.recorded
    assert recording.completes_run
    if release_claim:
        assert claim.lease is not None and store.release_lease(claim.lease)
        assert store.lease_ttl_ms(TENANT, job.id) < 0
    return claim


def _stored_lease(store: Store, job: JobRecord) -> str | None:
    return store._redis.get(lease_key(TENANT, job.id))


class _Broker:
    """Stands in for the Celery app the reaper sends requeued jobs through."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []

    def send_task(self, name: str, *, args: list[Any], **options: Any) -> None:
        self.sent.append((name, args))


def test_an_assembly_holds_the_jobs_lease_and_a_redelivery_is_refused(store: Store) -> None:
    job = _queued_job(store)
    _recorded_run(store, job)
    token = new_claim_token()

    started = store.begin_assembly(TENANT, job.id, attempt=1, token=token, lease_ms=LEASE_MS)
    assert (started.outcome, started.deliveries) == (AssemblyStartOutcome.start, 1)
    assert started.lease is not None
    # The job's own lease, as a claim takes it: the reaper's REAP_LEASE watches it.
    assert _stored_lease(store, job) == started.lease.value
    assert 0 < store.lease_ttl_ms(TENANT, job.id) <= LEASE_MS
    assert store._redis.zscore(LEASES_KEY, f"{TENANT}/{job.id}") is not None
    # A client retry with the same token answers the same and counts nothing.
    retried = store.begin_assembly(TENANT, job.id, attempt=1, token=token, lease_ms=LEASE_MS)
    assert (retried.outcome, retried.deliveries, retried.lease) == (
        AssemblyStartOutcome.start,
        1,
        started.lease,
    )

    # The broker redelivers the assembly while its worker is alive: left to that worker.
    before = store.get_job(TENANT, job.id)
    redelivery = store.begin_assembly(
        TENANT, job.id, attempt=1, token=new_claim_token(), lease_ms=LEASE_MS
    )
    assert (redelivery.outcome, redelivery.deliveries, redelivery.lease) == (
        AssemblyStartOutcome.leased,
        1,
        None,
    )
    assert _stored_lease(store, job) == started.lease.value
    assert store.get_job(TENANT, job.id) == before
    run = store.get_run(TENANT, job.id, 1)
    assert run is not None and run.deliveries.get("assemble") == 1
    # The holder renews it, and the finish releases it.
    assert store.renew_lease(started.lease, lease_ms=LEASE_MS)
    assert before is not None
    assert store.finish_job(before, status=JobStatus.succeeded, now=utc_now(), attempt=1)
    assert store.lease_ttl_ms(TENANT, job.id) < 0
    assert not store.release_lease(started.lease)


def test_an_assembly_takes_over_the_claims_lease_its_fan_out_has_not_released(
    store: Store,
) -> None:
    job = _queued_job(store)
    claim = _recorded_run(store, job, release_claim=False)
    assert claim.lease is not None

    # The blocks all recorded before the fan-out's worker released its claim's lease.
    started = store.begin_assembly(
        TENANT, job.id, attempt=1, token=new_claim_token(), lease_ms=LEASE_MS
    )
    assert started.outcome is AssemblyStartOutcome.start
    assert started.lease is not None
    assert _stored_lease(store, job) == started.lease.value
    # The fan-out's late release and renewal leave the assembly's lease alone.
    assert not store.release_lease(claim.lease)
    assert not store.renew_lease(claim.lease, lease_ms=LEASE_MS)
    assert _stored_lease(store, job) == started.lease.value


def test_an_assembly_whose_lease_expired_is_requeued_as_the_next_attempt(
    store: Store,
) -> None:
    job = _queued_job(store)
    _recorded_run(store, job)
    dead = store.begin_assembly(
        TENANT, job.id, attempt=1, token=new_claim_token(), lease_ms=SHORT_LEASE_MS
    )
    assert dead.outcome is AssemblyStartOutcome.start
    assert dead.lease is not None
    _let_lease_expire()

    broker = _Broker()
    reaped = [r for r in reap_once(store, Settings(), broker) if r.job_id == job.id]
    assert [(r.outcome, r.attempts, r.block) for r in reaped] == [(ReapOutcome.requeued, 1, None)]
    # Only this job's message: the sweep may requeue other tests' jobs too.
    assert [args for _, args in broker.sent if job.id in args] == [[job.id, TENANT]]
    requeued = store.get_job(TENANT, job.id)
    assert requeued is not None
    assert (requeued.status, requeued.attempts) == (JobStatus.queued, 1)
    # The dead assembly, were it only stalled, holds nothing any more.
    assert not store.renew_lease(dead.lease, lease_ms=LEASE_MS)
    again = store.begin_assembly(
        TENANT, job.id, attempt=1, token=new_claim_token(), lease_ms=LEASE_MS
    )
    assert (again.outcome, again.lease) == (AssemblyStartOutcome.stale, None)
    # The requeued job is claimed as its next attempt.
    next_claim = _claim(store, job)
    assert (next_claim.outcome, next_claim.attempt) == (ClaimOutcome.claimed, 2)


def test_a_stale_attempts_assembly_changes_nothing(store: Store) -> None:
    job = _queued_job(store)
    first = _claim(store, job, lease_ms=SHORT_LEASE_MS)
    assert store.start_run(TENANT, job.id, _plan(first.attempt)) is ProgressVerdict.carry_on
    for block_index in range(2):
        store.record_block(
            TENANT, job.id, attempt=1, block=block_key(0, block_index), sha256="e" * 64, share=0.8
        )
    _let_lease_expire()
    second = _claim(store, job)
    assert second.attempt == 2 and second.lease is not None
    job_before = store.get_job(TENANT, job.id)
    run_before = store.get_run(TENANT, job.id, 1)
    ttl_before = store._redis.zscore(LEASES_KEY, f"{TENANT}/{job.id}")

    # Attempt 1's assembly (its run complete) arrives after attempt 2's claim.
    stale = store.begin_assembly(
        TENANT, job.id, attempt=1, token=new_claim_token(), lease_ms=LEASE_MS
    )
    assert (stale.outcome, stale.deliveries, stale.lease) == (AssemblyStartOutcome.stale, 0, None)
    assert store.get_job(TENANT, job.id) == job_before
    assert store.get_run(TENANT, job.id, 1) == run_before
    assert _stored_lease(store, job) == second.lease.value
    assert store._redis.zscore(LEASES_KEY, f"{TENANT}/{job.id}") == ttl_before


def test_an_assembly_of_a_canceled_job_holds_the_lease_to_end_it(store: Store) -> None:
    job = _queued_job(store)
    claim = _recorded_run(store, job)
    assert claim.job is not None
    assert store.request_cancel(claim.job, now=utc_now()) is CancelOutcome.requested
    started = store.begin_assembly(
        TENANT, job.id, attempt=1, token=new_claim_token(), lease_ms=LEASE_MS
    )
    assert (started.outcome, started.deliveries) == (AssemblyStartOutcome.canceled, 0)
    assert started.lease is not None
    assert _stored_lease(store, job) == started.lease.value
