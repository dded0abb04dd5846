"""The task names, the Celery configuration and the functions that send each task.

The API sends (``analyze_sets`` on submission, ``deliver_webhook`` when a job ends), and so
do the workers (blocks, assembly, webhooks); `workers.celery_app` registers the same names
with the task bodies. Messages carry ids only (job id, tenant, attempt, block numbers):
inputs and results live in the blob store and Redis, never in the broker.

Imports celery, but nothing of the workers: the API process sends without loading torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from api_schemas import AnalysisParams, JobStatus
from jobstate.records import JobRecord
from jobstate.settings import Settings
from jobstate.store import JobFinishedHook
from jobstate.webhooks import event_id_for

ANALYZE_SETS_TASK = "nnkgeo.analyze_sets"
SOLVE_BLOCK_TASK = "nnkgeo.solve_block"
ASSEMBLE_JOB_TASK = "nnkgeo.assemble_job"
DELIVER_WEBHOOK_TASK = "nnkgeo.deliver_webhook"
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


def enqueue_analysis(celery: Celery, *, job_id: str, tenant: str, queue: str) -> None:
    """Queue a job for the workers; the message holds nothing but the two ids."""
    celery.send_task(ANALYZE_SETS_TASK, args=[job_id, tenant], queue=queue, task_id=job_id)


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
    task_id = f"{job_id}.{attempt}.block.{set_index}.{block_index}"
    celery.send_task(
        SOLVE_BLOCK_TASK,
        args=[job_id, tenant, attempt, set_index, block_index],
        queue=queue,
        task_id=task_id,
    )
    return task_id


def enqueue_assembly(celery: Celery, *, job_id: str, tenant: str, attempt: int, queue: str) -> str:
    """Queue the assembly of a sharded job whose blocks are all recorded."""
    task_id = f"{job_id}.{attempt}.assemble"
    celery.send_task(
        ASSEMBLE_JOB_TASK, args=[job_id, tenant, attempt], queue=queue, task_id=task_id
    )
    return task_id


def enqueue_webhook(celery: Celery, *, tenant: str, job_id: str, event_id: str, queue: str) -> None:
    """Queue the delivery of one job event; the message holds ids only, never the body."""
    celery.send_task(
        DELIVER_WEBHOOK_TASK, args=[tenant, job_id, event_id], queue=queue, task_id=event_id
    )


def job_end_announcer(celery: Celery, settings: Settings) -> JobFinishedHook:
    """The store's `on_job_finished` hook: queue a webhook for jobs with a callback_url."""
    queue = webhook_queue(settings)

    def announce(job: JobRecord, status: JobStatus) -> None:
        if job.callback_url is None:
            return
        enqueue_webhook(
            celery,
            tenant=job.tenant,
            job_id=job.id,
            event_id=event_id_for(job.id, status),
            queue=queue,
        )

    return announce
