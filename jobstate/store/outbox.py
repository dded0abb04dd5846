"""The outbox: every Celery message the service must not lose, kept in Redis until sent.

A message that a record change calls for is written in the same step as that change (the
same MULTI, or the same script), so that no crash can leave one without the other:

- `jobstate.store.jobs.JobStore.create_job` of a queued job writes its ``analyze_sets``;
- FINISH_JOB (and `create_job` of a cache hit, born finished) writes the job's
  ``deliver_webhook`` when it has a callback_url;
- the reaper's REAP_LEASE writes the ``analyze_sets`` of a job it requeues, and
  REAP_BLOCK_LEASE the ``solve_block`` of a block it sends again.

Whoever made the change then sends the message at once (the fast path: the store's
`MessageSender`, `OutboxStore.send_outbox_entries`) and removes the entry once the broker
took it; the reaper leaves its own to the dispatch that follows each of its sweeps. An
entry whose sender died, or whose broker refused it, is sent later by the dispatcher
(`jobstate.dispatch.dispatch_pending`, run by every worker's bootstep thread).
Delivery is at least once: an entry is removed only after its send succeeded, so a crash
in between sends it twice. Every task tolerates that: a claim finding a live lease or a
finished job drops its message, a block start finding its block leased or recorded drops
its, and a webhook keeps its event id (receivers de-duplicate on it).

The layout (`jobstate.store.keys`):

    outbox            zset entry id -> unix ms the entry is due
    outbox:messages   hash entry id -> the message JSON {"task", "args", "queue"}

The entry id is the message's Celery task id, and the same change always writes the same
id, so an entry is idempotent: a script that redis-py runs twice, or two reapers reaping
one block, leave one entry. An entry is due `OUTBOX_GRACE_MS` after it was written
(a reaper's at once: nobody else sends those), so that the dispatcher does not race the
fast path of a live sender. Removal compares the due time too (REMOVE_OUTBOX_ENTRY):
an entry written again with the same id after it was read (a new due time) stays.

The task names are defined here, where the store writes its messages; `jobstate.dispatch`
re-exports them with the functions that send.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jobstate.store.base import StoreBase
from jobstate.store.keys import OUTBOX_KEY, OUTBOX_MESSAGES_KEY

ANALYZE_SETS_TASK = "nnkgeo.analyze_sets"
SOLVE_BLOCK_TASK = "nnkgeo.solve_block"
ASSEMBLE_JOB_TASK = "nnkgeo.assemble_job"
DELIVER_WEBHOOK_TASK = "nnkgeo.deliver_webhook"

# How long an entry waits for the fast path of its writer before the dispatcher sends it:
# the fast path takes milliseconds, and the dispatcher runs every REAPER_INTERVAL_S.
OUTBOX_GRACE_MS = 5000

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxMessage:
    """One Celery message: the task, its arguments (ids only), its queue and task id."""

    task: str
    args: tuple[Any, ...]
    queue: str
    task_id: str

    def to_json(self) -> str:
        """The entry's value (the task id is its key, so it is not repeated)."""
        return json.dumps(
            {"task": self.task, "args": list(self.args), "queue": self.queue},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, task_id: str, text: str) -> OutboxMessage:
        fields = json.loads(text)
        return cls(
            task=fields["task"],
            args=tuple(fields["args"]),
            queue=fields.get("queue") or "",
            task_id=task_id,
        )


@dataclass(frozen=True)
class OutboxEntry:
    """A message waiting in the outbox, and the unix ms it is due."""

    message: OutboxMessage
    due_ms: int


MessageSender = Callable[[OutboxMessage], None]
"""Hands one message to the broker (`jobstate.dispatch.message_sender`); raises if it
could not."""


def wall_clock_ms() -> int:
    """This host's clock in unix milliseconds: the clock of every due time."""
    return time.time_ns() // 1_000_000


def analysis_message(job_id: str, tenant: str, queue: str) -> OutboxMessage:
    """The ``analyze_sets`` of a new job; its task id is the job id."""
    return OutboxMessage(ANALYZE_SETS_TASK, (job_id, tenant), queue, task_id=job_id)


def webhook_message(tenant: str, job_id: str, status: str, queue: str) -> OutboxMessage:
    """The ``deliver_webhook`` of a job's end; its task id is the event id."""
    # Imported here: jobstate.webhooks reads the store's webhook records.
    from jobstate.webhooks import event_id_for

    event_id = event_id_for(job_id, status)
    return OutboxMessage(DELIVER_WEBHOOK_TASK, (tenant, job_id, event_id), queue, event_id)


def block_message(
    job_id: str, tenant: str, *, attempt: int, set_index: int, block_index: int, queue: str
) -> OutboxMessage:
    """The ``solve_block`` of one row block of a sharded attempt."""
    return OutboxMessage(
        SOLVE_BLOCK_TASK,
        (job_id, tenant, attempt, set_index, block_index),
        queue,
        task_id=f"{job_id}.{attempt}.block.{set_index}.{block_index}",
    )


def assembly_message(job_id: str, tenant: str, *, attempt: int, queue: str) -> OutboxMessage:
    """The ``assemble_job`` of a sharded attempt whose blocks are all recorded."""
    return OutboxMessage(
        ASSEMBLE_JOB_TASK, (job_id, tenant, attempt), queue, task_id=f"{job_id}.{attempt}.assemble"
    )


def requeue_script_args(tenant: str, job_id: str, *, due_ms: int) -> list[str | int]:
    """The ARGV tail of REAP_LEASE: the ``analyze_sets`` it writes if it requeues the job.

    The script fills in the job's queue from its record and ends the entry id with the
    attempt that lost its lease, so one reap writes one entry however often it runs.
    """
    message = analysis_message(job_id, tenant, queue="")
    return [message.to_json(), f"{job_id}.requeue.", due_ms]


def block_resend_script_args(
    tenant: str, job_id: str, *, attempt: int, block: str, due_ms: int
) -> list[str | int]:
    """The ARGV tail of REAP_BLOCK_LEASE: the ``solve_block`` it writes if it resends.

    The script fills in the run's queue from its plan and ends the entry id with the
    block's deliveries so far: a block reaped twice before its next start has one entry.
    """
    set_index, block_index = (int(part) for part in block.split(":"))
    message = block_message(
        job_id, tenant, attempt=attempt, set_index=set_index, block_index=block_index, queue=""
    )
    return [message.to_json(), f"{message.task_id}.resend.", due_ms]


class OutboxStore(StoreBase):
    """The outbox's entries: read, removed once sent, and sent at once where possible."""

    _sender: MessageSender | None
    outbox_grace_ms: int

    def add_outbox_entry(self, message: OutboxMessage, *, due_ms: int) -> None:
        """Write one entry on its own (a message no record change calls for)."""
        with self._redis.pipeline() as pipe:
            queue_outbox_entry(pipe, message, due_ms=due_ms)
            pipe.execute()

    def outbox_entries(
        self, *, due_by_ms: int | None = None, limit: int = 100
    ) -> list[OutboxEntry]:
        """The entries due by `due_by_ms` (all of them for None), earliest first.

        An id whose message is missing (the two keys disagree, which no script leaves)
        is dropped rather than read again and again.
        """
        upper: int | str = "+inf" if due_by_ms is None else due_by_ms
        scored: list[tuple[str, float]] = self._redis.zrangebyscore(
            OUTBOX_KEY, "-inf", upper, start=0, num=limit, withscores=True
        )
        if not scored:
            return []
        texts: list[str | None] = self._redis.hmget(OUTBOX_MESSAGES_KEY, [i for i, _ in scored])
        entries: list[OutboxEntry] = []
        for (task_id, due), text in zip(scored, texts, strict=True):
            if text is None:
                self._redis.zrem(OUTBOX_KEY, task_id)
                continue
            entries.append(OutboxEntry(OutboxMessage.from_json(task_id, text), int(due)))
        return entries

    def outbox_entry(self, task_id: str) -> OutboxEntry | None:
        """The entry of one task id, or None once it was sent (or never written)."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(OUTBOX_KEY, task_id)
            pipe.hget(OUTBOX_MESSAGES_KEY, task_id)
            due, text = pipe.execute()
        if due is None or text is None:
            return None
        return OutboxEntry(OutboxMessage.from_json(task_id, text), int(due))

    def remove_sent_outbox_entry(self, entry: OutboxEntry) -> bool:
        """Drop an entry its sender sent; False when it is gone or was written again
        since it was read (its due time changed: that write's message is still owed)."""
        return bool(
            self._scripts.remove_outbox_entry(
                keys=[OUTBOX_KEY, OUTBOX_MESSAGES_KEY], args=[entry.message.task_id, entry.due_ms]
            )
        )

    def postpone_outbox_entry(self, entry: OutboxEntry, *, due_ms: int) -> None:
        """Make an entry whose send failed due again at `due_ms`, behind the others (a
        message the broker keeps refusing must not hold back the rest). An entry gone
        meanwhile stays gone, and one written again with a later due time keeps it."""
        self._redis.zadd(OUTBOX_KEY, {entry.message.task_id: due_ms}, xx=True, gt=True)

    def send_outbox_entries(self, entries: Sequence[OutboxEntry]) -> int:
        """The fast path: send entries this process just wrote, and remove each one sent.

        Without a sender (a store made for reading), or when the broker refuses, the
        entries stay for the dispatcher; a failure is logged, never raised, since the
        record change that wrote them is already stored. An entry already removed (sent
        by the dispatcher, or by an earlier call for the same change) is not sent again.

        Returns
        -------
        int
            Entries sent.
        """
        if self._sender is None:
            return 0
        sent = 0
        for entry in entries:
            current = self.outbox_entry(entry.message.task_id)
            if current is None or current.due_ms != entry.due_ms:
                continue
            try:
                self._sender(entry.message)
            except Exception:
                logger.exception(
                    "sending %s %s failed; the dispatcher sends it later",
                    entry.message.task,
                    entry.message.task_id,
                )
                continue
            self.remove_sent_outbox_entry(entry)
            sent += 1
        return sent


def queue_outbox_entry(pipe: Any, message: OutboxMessage, *, due_ms: int) -> None:
    """Add one entry to `pipe` (a MULTI pipeline), with the record change it belongs to."""
    pipe.hset(OUTBOX_MESSAGES_KEY, message.task_id, message.to_json())
    pipe.zadd(OUTBOX_KEY, {message.task_id: due_ms})
