"""The outbox: no crash between a record change and its message can lose the message.

A stack of its own (Redis, the API, one worker of every queue, whose bootstep thread
reaps and dispatches each second), with the webhook settings of a local receiver. Each
test writes what a crashed or refused sender would leave behind, straight through the
store (`Store.from_settings`, which has no sender: nothing is sent on its writes), and
checks the outcome against an independent witness: the job's status through the API,
the broker's own list of messages in Redis, or the receiver's requests.

Jobs meant never to run go to the queue ``nobody``, which no worker serves: their
messages stay in that Redis list (kombu's), where the tests count them by task id.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import pytest
import redis

from api_schemas import AnalysisParams, JobStatus
from jobstate.dispatch import dispatch_pending
from jobstate.records import JobRecord, SetBlocks, ShardedRun, block_key, new_job_id, utc_now
from jobstate.settings import Settings
from jobstate.store import OUTBOX_GRACE_MS, OutboxEntry, OutboxMessage, Store, new_claim_token
from jobstate.store.keys import (
    LEASES_KEY,
    OUTBOX_MESSAGES_KEY,
    block_lease_member,
    lease_member,
)
from jobstate.store.outbox import (
    ANALYZE_SETS_TASK,
    DELIVER_WEBHOOK_TASK,
    SOLVE_BLOCK_TASK,
    analysis_message,
    wall_clock_ms,
)
from jobstate.webhooks import event_id_for
from nnkgeo.webhooks import generate_secret, verify
from tests.integration.conftest import STACK_SETTINGS
from tests.integration.helpers import job_body, submit, upload_array, wait_for_status
from tests.integration.stack import TENANT_KEYS, ServiceStack, wait_until
from tests.integration.test_webhooks import Receiver

pytestmark = pytest.mark.integration

TENANT = "alpha"
SECRET = generate_secret()
NOBODY = "nobody"
LEASE_MS = 60_000
SHORT_LEASE_MS = 100
# The grace of an entry, one dispatch interval (LEASE_S / 3 = 1 s), and a small job.
DISPATCHED_WITHIN_S = OUTBOX_GRACE_MS / 1000 + 15


@dataclass
class World:
    stack: ServiceStack
    store: Store
    redis: redis.Redis
    hooks: Receiver


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    hooks = Receiver("hooks", lambda receiver, path, headers: (200, {}))
    hooks.start()
    settings = {
        **STACK_SETTINGS,
        "NNKGEO_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{hooks.port}",
        "NNKGEO_WEBHOOK_SECRETS": f"{TENANT}:{SECRET}",
    }
    stack = ServiceStack(tmp_path_factory.mktemp("outbox-stack"), settings=settings)
    try:
        stack.start()
        store = Store.from_settings(Settings(redis_url=stack.redis_url))
        client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        yield World(stack=stack, store=store, redis=client, hooks=hooks)
        store.close()
        client.close()
    finally:
        stack.stop()
        hooks.stop()


@pytest.fixture(scope="module")
def alpha(world: World) -> Iterator[httpx.Client]:
    with world.stack.client(TENANT) as client:
        yield client


@pytest.fixture(scope="module")
def template(world: World, alpha: httpx.Client) -> JobRecord:
    """A job that ran through the API: the tests store copies of its spec."""
    points = np.random.default_rng(3).standard_normal((120, 6)).astype(np.float32)
    response = submit(alpha, job_body(upload_array(alpha, points), name="pts", k=5))
    assert response.status_code == 202, response.text
    assert wait_for_status(alpha, response.json()["id"])["status"] == "succeeded"
    job = world.store.get_job(TENANT, response.json()["id"])
    assert job is not None
    return job


def _copy(template: JobRecord, *, queue: str, callback_url: str | None = None) -> JobRecord:
    """A new queued job of the template's spec, as `JobService._start` stores one."""
    return JobRecord(
        id=new_job_id(),
        tenant=TENANT,
        status=JobStatus.queued,
        spec=template.spec.model_copy(update={"params": AnalysisParams(k=4)}),
        queue=queue,
        cache_key=f"outbox-{new_job_id()}",
        created_at=utc_now(),
        callback_url=callback_url,
    )


def _broker_task_ids(world: World, queue: str) -> list[str]:
    """The task ids of the messages waiting in a Celery queue (kombu's Redis list)."""
    return [json.loads(raw)["headers"]["id"] for raw in world.redis.lrange(queue, 0, -1)]


def _broker_message(world: World, queue: str, task_id: str) -> dict[str, Any]:
    for raw in world.redis.lrange(queue, 0, -1):
        message = json.loads(raw)
        if message["headers"]["id"] == task_id:
            return message
    raise AssertionError(f"no message {task_id} in {queue}")


def _entries_of(world: World, job_id: str) -> list[OutboxEntry]:
    return [e for e in world.store.outbox_entries() if e.message.task_id.startswith(job_id)]


def _cancel(world: World, job: JobRecord) -> None:
    """End a job no worker will run, so that it leaves nothing owed behind."""
    current = world.store.get_job(TENANT, job.id)
    assert current is not None
    world.store.finish_job(
        current,
        status=JobStatus.canceled,
        now=utc_now(),
        from_statuses=(JobStatus.queued, JobStatus.running),
    )


def test_a_job_stored_with_its_message_never_sent_still_runs(
    world: World, alpha: httpx.Client, template: JobRecord
) -> None:
    # The API stored the record and died before sending: the store here has no sender.
    job = _copy(template, queue="cpu")
    before_ms = wall_clock_ms()
    world.store.create_job(job)
    after_ms = wall_clock_ms()

    entry = world.store.outbox_entry(job.id)
    assert entry is not None
    assert entry.message == analysis_message(job.id, TENANT, "cpu")
    assert before_ms + OUTBOX_GRACE_MS <= entry.due_ms <= after_ms + OUTBOX_GRACE_MS
    # Nothing reached the broker: only the dispatcher can run this job.
    assert job.id not in _broker_task_ids(world, "cpu")

    ended = wait_for_status(alpha, job.id, timeout_s=DISPATCHED_WITHIN_S)

    assert ended["status"] == "succeeded"
    assert world.store.outbox_entry(job.id) is None
    stored = world.store.get_job(TENANT, job.id)
    assert stored is not None
    assert stored.attempts == 1
    assert world.store.get_result(TENANT, job.id) is not None


def test_an_api_killed_before_its_message_reached_the_broker_leaves_a_job_that_runs(
    world: World, alpha: httpx.Client
) -> None:
    # A second API whose Redis user may not LPUSH, the one command kombu publishes with:
    # it stores records like any API, and its every send fails, as if it died first.
    user, password = "api-without-broker", "not-a-secret"
    world.redis.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        categories=["+@all"],
        commands=["-lpush"],
    )
    parts = urlsplit(world.stack.redis_url)
    url = urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}"))
    api, base_url = world.stack.spawn_api("api-without-broker", NNKGEO_REDIS_URL=url)
    try:
        headers = {"Authorization": f"Bearer {TENANT_KEYS[TENANT]}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as doomed:
            wait_until(
                lambda: doomed.get("/healthz").status_code == 200, timeout_s=60, what="the API"
            )
            points = np.random.default_rng(5).standard_normal((90, 5)).astype(np.float32)
            response = submit(doomed, job_body(upload_array(doomed, points), name="doomed", k=4))
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            # Killed right after it answered: nothing it owes can leave it now.
            os.killpg(api.process.pid, signal.SIGKILL)
            api.process.wait(timeout=10)
    finally:
        api.stop()
        world.redis.acl_deluser(user)

    entry = world.store.outbox_entry(job_id)
    assert entry is not None, "the fast path sent the message: the test proves nothing"
    assert job_id not in _broker_task_ids(world, "cpu")
    # The API that took the job is gone; a worker's dispatcher sends what it owed.
    ended = wait_for_status(alpha, job_id, timeout_s=DISPATCHED_WITHIN_S)
    assert ended["status"] == "succeeded"
    assert world.store.outbox_entry(job_id) is None
    stored = world.store.get_job(TENANT, job_id)
    assert stored is not None
    assert stored.attempts == 1


def test_the_apis_fast_path_sends_at_once_and_removes_its_entry(
    world: World, alpha: httpx.Client, template: JobRecord
) -> None:
    points = np.random.default_rng(4).standard_normal((80, 5)).astype(np.float32)
    response = submit(alpha, job_body(upload_array(alpha, points), name="fast", k=4))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    # Sent before the answer: the entry is gone already.
    assert world.store.outbox_entry(job_id) is None
    ended = wait_for_status(alpha, job_id)
    assert ended["status"] == "succeeded"
    # Started well before its entry was due: the fast path sent it, not the dispatcher.
    waited = datetime.fromisoformat(ended["started_at"]) - datetime.fromisoformat(
        ended["created_at"]
    )
    assert waited.total_seconds() < OUTBOX_GRACE_MS / 1000, waited


def test_a_message_the_broker_refused_is_sent_by_the_dispatcher(
    world: World, alpha: httpx.Client, template: JobRecord
) -> None:
    refused: list[OutboxMessage] = []

    def refuse(message: OutboxMessage) -> None:
        refused.append(message)
        raise ConnectionError("the broker is down")

    store = Store.from_settings(Settings(redis_url=world.stack.redis_url), sender=refuse)
    job = _copy(template, queue="cpu")
    try:
        # The refusal is logged, not raised: the record is stored and its message owed.
        store.create_job(job)
        assert [m.task_id for m in refused] == [job.id]
        assert store.outbox_entry(job.id) is not None

        ended = wait_for_status(alpha, job.id, timeout_s=DISPATCHED_WITHIN_S)
    finally:
        store.close()

    assert ended["status"] == "succeeded"
    assert world.store.outbox_entry(job.id) is None


def test_a_reaped_job_owes_one_message_however_often_it_is_reaped(
    world: World, template: JobRecord
) -> None:
    job = _copy(template, queue=NOBODY)
    world.store.create_job(job)
    claim = world.store.claim_job(
        TENANT,
        job.id,
        now=utc_now(),
        max_attempts=3,
        token=new_claim_token(),
        lease_ms=SHORT_LEASE_MS,
    )
    assert claim.attempt == 1
    time.sleep(SHORT_LEASE_MS / 1000 + 0.1)

    # Two sweeps here, and the stack's own reaper racing them: one requeue. Each sweep
    # finds the job in the lease index, as a reaper that read it before the first reap.
    for _ in range(2):
        world.redis.zadd(LEASES_KEY, {lease_member(TENANT, job.id): 0})
        world.store.reap_expired_leases(max_attempts=3)
    requeued = world.store.get_job(TENANT, job.id)
    assert requeued is not None
    assert (requeued.status, requeued.attempts) == (JobStatus.queued, 1)
    requeue_id = f"{job.id}.requeue.1"
    assert sorted(e.message.task_id for e in _entries_of(world, job.id)) in (
        [job.id, requeue_id],
        [job.id],  # the dispatcher sent the requeue (due at once) already
    )

    # The dispatcher sends both (the job's own entry once its grace is over), once each.
    wait_until(
        lambda: not _entries_of(world, job.id),
        timeout_s=DISPATCHED_WITHIN_S,
        what="the job's entries to be sent",
    )
    sent = [i for i in _broker_task_ids(world, NOBODY) if i.startswith(job.id)]
    assert sorted(sent) == [job.id, requeue_id]
    message = _broker_message(world, NOBODY, requeue_id)
    assert message["headers"]["task"] == ANALYZE_SETS_TASK
    body = json.loads(base64.b64decode(message["body"]))
    assert body[0] == [job.id, TENANT]
    _cancel(world, job)


def test_a_reaped_block_owes_one_message_however_often_it_is_reaped(
    world: World, template: JobRecord
) -> None:
    job = _copy(template, queue=NOBODY)
    world.store.create_job(job)
    claim = world.store.claim_job(
        TENANT, job.id, now=utc_now(), max_attempts=3, token=new_claim_token(), lease_ms=LEASE_MS
    )
    plan = ShardedRun(
        attempt=claim.attempt,
        queue=NOBODY,
        sets=[SetBlocks(name="pts", n_points=120, blocks=[(0, 60), (60, 120)])],
    )
    world.store.start_run(TENANT, job.id, plan)
    block = block_key(0, 1)
    started = world.store.begin_block(
        TENANT,
        job.id,
        attempt=1,
        block=block,
        worker="w1",
        token=new_claim_token(),
        lease_ms=SHORT_LEASE_MS,
    )
    assert started.deliveries == 1
    time.sleep(SHORT_LEASE_MS / 1000 + 0.1)

    member = block_lease_member(TENANT, job.id, 1, block)
    for _ in range(2):
        world.redis.zadd(LEASES_KEY, {member: 0})
        world.store.reap_expired_leases(max_attempts=3)

    resend_id = f"{job.id}.1.block.0.1.resend.1"
    wait_until(
        lambda: resend_id in _broker_task_ids(world, NOBODY),
        timeout_s=DISPATCHED_WITHIN_S,
        what="the block to be sent again",
    )
    # A sweep after that dispatch (a reaper that read the index long ago) sends nothing.
    world.redis.zadd(LEASES_KEY, {member: 0})
    world.store.reap_expired_leases(max_attempts=3)
    time.sleep(1.5)
    sent = [i for i in _broker_task_ids(world, NOBODY) if i.startswith(f"{job.id}.")]
    assert sent == [resend_id]
    message = _broker_message(world, NOBODY, resend_id)
    assert message["headers"]["task"] == SOLVE_BLOCK_TASK
    assert json.loads(base64.b64decode(message["body"]))[0] == [job.id, TENANT, 1, 0, 1]
    _cancel(world, job)


def test_a_finished_job_owes_one_webhook_however_often_it_is_finished(
    world: World, template: JobRecord
) -> None:
    job = _copy(template, queue=NOBODY, callback_url=f"{world.hooks.url}/ended")
    world.store.create_job(job)
    claim = world.store.claim_job(
        TENANT, job.id, now=utc_now(), max_attempts=3, token=new_claim_token(), lease_ms=LEASE_MS
    )
    assert claim.job is not None
    event_id = event_id_for(job.id, JobStatus.failed)

    # The first finish, then the same finish again (a retry of its caller): one entry.
    for _ in range(2):
        assert world.store.finish_job(claim.job, status=JobStatus.failed, now=utc_now(), attempt=1)
    webhooks = [e for e in _entries_of_webhooks(world) if e.message.args[1] == job.id]
    assert [e.message for e in webhooks] == [
        OutboxMessage(DELIVER_WEBHOOK_TASK, (TENANT, job.id, event_id), "webhooks", event_id)
    ]

    # No sender here: the dispatcher sends it, and the worker POSTs it once.
    (delivered,) = world.hooks.wait_for(job.id, 1, timeout_s=DISPATCHED_WITHIN_S)
    verify(SECRET, delivered.headers, delivered.body)
    assert delivered.headers["webhook-id"] == event_id
    assert delivered.event["type"] == "job.failed"
    wait_until(
        lambda: world.store.outbox_entry(event_id) is None,
        timeout_s=5,
        what="the webhook's entry to be removed",
    )
    # A finish after the send writes nothing again.
    assert world.store.finish_job(claim.job, status=JobStatus.failed, now=utc_now(), attempt=1)
    assert world.store.outbox_entry(event_id) is None
    time.sleep(1.5)
    assert len(world.hooks.of_job(job.id)) == 1


def _entries_of_webhooks(world: World) -> list[OutboxEntry]:
    return [e for e in world.store.outbox_entries() if e.message.task == DELIVER_WEBHOOK_TASK]


def test_an_entry_written_again_after_it_was_read_is_not_removed(world: World) -> None:
    # Far in the future, and of no task: the stack's dispatcher never sends it.
    message = OutboxMessage("nnkgeo.test.never", ("a", 1), NOBODY, f"test-{new_job_id()}")
    due_ms = wall_clock_ms() + 3_600_000
    world.store.add_outbox_entry(message, due_ms=due_ms)
    read = world.store.outbox_entry(message.task_id)
    assert read == OutboxEntry(message, due_ms)
    assert message.task_id not in {
        e.message.task_id for e in world.store.outbox_entries(due_by_ms=due_ms - 1)
    }

    # Written again (same id: still one entry) between its sender's read and removal.
    world.store.add_outbox_entry(message, due_ms=due_ms + 1)
    assert not world.store.remove_sent_outbox_entry(read)
    current = world.store.outbox_entry(message.task_id)
    assert current == OutboxEntry(message, due_ms + 1)
    assert world.store.remove_sent_outbox_entry(current)
    assert world.store.outbox_entry(message.task_id) is None
    assert not world.redis.hexists(OUTBOX_MESSAGES_KEY, message.task_id)


@dataclass
class _Broker:
    """Stands in for the Celery app: refuses the task ids in `refusing`, records the rest."""

    refusing: set[str]
    sent: list[str]

    def send_task(self, name: str, *, args: list[Any], queue: str | None, task_id: str) -> None:
        if task_id in self.refusing:
            raise ConnectionError(f"refused {task_id}")
        self.sent.append(task_id)


def test_a_message_the_broker_keeps_refusing_does_not_hold_back_the_rest(world: World) -> None:
    # Due an hour from now: only the dispatches here, with their own `now`, see them.
    due_ms = wall_clock_ms() + 3_600_000
    refused, taken = (
        OutboxMessage("nnkgeo.test.never", (name,), NOBODY, f"test-{name}-{new_job_id()}")
        for name in ("refused", "taken")
    )
    world.store.add_outbox_entry(refused, due_ms=due_ms)
    world.store.add_outbox_entry(taken, due_ms=due_ms + 1)
    broker = _Broker(refusing={refused.task_id}, sent=[])
    now = datetime.fromtimestamp((due_ms + 1) / 1000, tz=UTC)

    # (Entries of earlier tests still in their grace come first: they are sent too.)
    # The refused send stops the call, and its entry goes behind the others.
    dispatch_pending(world.store, broker, now=now)
    assert taken.task_id not in broker.sent
    assert world.store.outbox_entry(taken.task_id) is not None
    postponed = world.store.outbox_entry(refused.task_id)
    assert postponed is not None
    assert postponed.due_ms == due_ms + 1 + OUTBOX_GRACE_MS
    # The next call sends the rest, and removes only what it sent.
    assert dispatch_pending(world.store, broker, now=now) == 1
    assert broker.sent[-1] == taken.task_id
    assert refused.task_id not in broker.sent
    assert world.store.outbox_entry(taken.task_id) is None
    assert world.store.outbox_entry(refused.task_id) == postponed
    assert world.store.remove_sent_outbox_entry(postponed)
