"""The task names, the Celery configuration, the functions that send each task, and the
outbox's dispatcher.

The messages the service must not lose (``analyze_sets`` of a new or requeued job, a
block sent again, ``deliver_webhook`` when a job ends) are written to the store's outbox
with the record change that calls for them, and sent from there (`jobstate.store.outbox`):
at once by the store's sender (`message_sender`), else by `dispatch_pending`, which every
worker runs each reaper interval. The workers also send blocks and assemblies directly;
`workers.celery_app` registers the same names with the task bodies. Messages carry ids
only (job id, tenant, attempt, block numbers): inputs and results live in the blob store
and Redis, never in the broker.

Imports celery, but nothing of the workers: the API process sends without loading torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from celery import Celery

from api_schemas import AnalysisParams
from jobstate.settings import Settings
from jobstate.store import MessageSender, OutboxMessage, Store
from jobstate.store.outbox import (
    ANALYZE_SETS_TASK,
    ASSEMBLE_JOB_TASK,
    DELIVER_WEBHOOK_TASK,
    SOLVE_BLOCK_TASK,
    assembly_message,
    block_message,
)

__all__ = [
    "ANALYZE_SETS_TASK",
    "ASSEMBLE_JOB_TASK",
    "DELIVER_WEBHOOK_TASK",
    "SOLVE_BLOCK_TASK",
    "TASK_OUTCOME_TTL_S",
    "create_celery_app",
    "dispatch_pending",
    "enqueue_assembly",
    "enqueue_block",
    "message_sender",
    "queue_for",
    "send_message",
    "webhook_queue",
]

logger = logging.getLogger(__name__)
# Block and assembly tasks return a one-word outcome ("solved", "recorded", "stale"...),
# for logs and tests; job outcomes themselves live in the job record.
TASK_OUTCOME_TTL_S = 3600


def queue_for(params: AnalysisParams, settings: Settings) -> str:
    """The queue a job goes to: only `device="cuda"` needs a worker that holds a GPU.

    `auto` stays on the CPU queue so that a deployment without GPU workers still runs it.
    """
    return settings.gpu_queue if params.device == "cuda" else settings.cpu_queue


def webhook_queue(settings: Settings) -> str:
    """The queue of webhook deliveries: ``WEBHOOK_QUEUE``, or the CPU queue if empty.

    A queue of its own by default: a receiver may take up to ``WEBHOOK_DEADLINE_S`` per
    attempt, and that wait must occupy a webhook worker, never one that runs jobs.
    """
    return settings.webhook_queue or settings.cpu_queue


def create_celery_app(settings: Settings, *, include: Sequence[str] = ()) -> Celery:
    """The Celery app of every process: the API sends with it, a worker also runs the
    task modules named in ``include``."""
    celery = Celery(
        "nnkgeo",
        broker=settings.redis_url,
        backend=settings.redis_url,
        include=list(include),
    )
    celery.conf.update(
        # JSON only: a pickle-accepting worker runs whatever a broker writer sends it.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Job outcomes live in the job record (jobstate.store), not in Celery results.
        task_ignore_result=True,
        result_expires=TASK_OUTCOME_TTL_S,
        # Ack only once the task returned, and requeue when the child process dies: a job
        # whose worker crashed runs again (the task is idempotent; see workers.tasks).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job at a time per process: a prefetched job would wait behind a long one
        # while another worker idles.
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        broker_transport_options={
            # Redis redelivers any message unacknowledged this long, even if its worker is
            # still busy with it; the redelivery finds the job's lease live and is dropped.
            # A dead worker's job is recovered sooner by the reaper (workers.reaper): this
            # is the fallback, and the redelivery of an unacked webhook message.
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu sweeps for such messages every interval x throttle seconds (100 s by
            # default); a throttle of 1 makes the interval the only knob.
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
        },
        # With acks_late, a task still running when the broker connection drops has its
        # message redelivered anyway; stop it rather than finish a duplicate.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.cpu_queue,
        task_routes={
            ANALYZE_SETS_TASK: {"queue": settings.cpu_queue},
            # Retries and any send that names no queue stay off the job queues too.
            DELIVER_WEBHOOK_TASK: {"queue": webhook_queue(settings)},
        },
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return celery


def send_message(celery: Celery, message: OutboxMessage) -> None:
    """Hand one message to the broker; raises when the broker did not take it."""
    celery.send_task(
        message.task,
        args=list(message.args),
        # An empty queue (a record that names none) leaves the route to task_routes.
        queue=message.queue or None,
        task_id=message.task_id,
    )


def message_sender(celery: Celery) -> MessageSender:
    """The store's sender (`jobstate.store.Store`): the outbox's fast path."""

    def send(message: OutboxMessage) -> None:
        send_message(celery, message)

    return send


def dispatch_pending(store: Store, celery: Celery, *, now: datetime, limit: int = 100) -> int:
    """Send every outbox entry due by `now`; remove each only once the broker took it.

    At least once: a crash between a send and its removal sends that entry again next
    time (every task drops a duplicate; see `jobstate.store.outbox`). One dispatcher at a
    time is enough (the workers run it under the reaper's lock), but two are harmless.

    Parameters
    ----------
    store
        Whose outbox to empty.
    celery
        The app whose broker gets the messages.
    now
        Entries due by then are sent (a later time sends entries still in their grace).
    limit
        Most entries sent in one call.

    Returns
    -------
    int
        Entries sent. A send that fails stops the call (the broker is likely down, and
        each refused send takes its retries' time), and its entry is postponed by the
        outbox's grace, behind the others: the entries left are sent by a later call.
    """
    due_by_ms = int(now.timestamp() * 1000)
    sent = 0
    for entry in store.outbox_entries(due_by_ms=due_by_ms, limit=limit):
        try:
            send_message(celery, entry.message)
        except Exception:
            logger.exception(
                "outbox: sending %s %s failed; retried at a later dispatch",
                entry.message.task,
                entry.message.task_id,
            )
            store.postpone_outbox_entry(entry, due_ms=due_by_ms + store.outbox_grace_ms)
            break
        store.remove_sent_outbox_entry(entry)
        sent += 1
        logger.info("outbox: sent %s %s", entry.message.task, entry.message.task_id)
    return sent


def enqueue_block(
    celery: Celery,
    *,
    job_id: str,
    tenant: str,
    attempt: int,
    set_index: int,
    block_index: int,
    queue: str,
) -> str:
    """Queue one row block of a sharded job; returns the task id."""
    message = block_message(
        job_id,
        tenant,
        attempt=attempt,
        set_index=set_index,
        block_index=block_index,
        queue=queue,
    )
    send_message(celery, message)
    return message.task_id


def enqueue_assembly(celery: Celery, *, job_id: str, tenant: str, attempt: int, queue: str) -> str:
    """Queue the assembly of a sharded job whose blocks are all recorded."""
    message = assembly_message(job_id, tenant, attempt=attempt, queue=queue)
    send_message(celery, message)
    return message.task_id
