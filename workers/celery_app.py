"""The Celery application: broker, serialization, delivery guarantees and queues.

Start a worker with ``celery -A workers.celery_app worker -Q cpu`` (add ``gpu`` on hosts
with a GPU, or run ``-Q gpu`` there). Messages carry ids only (job id, tenant, attempt,
block numbers): inputs and results live in the blob store and Redis, never in the broker.

Three tasks: ``analyze_sets`` (every job starts there; a small job ends there too),
``solve_block`` (one row block of a sharded job) and ``assemble_job`` (the report of a
sharded job, once all its blocks are recorded). See `workers.tasks`. And
``deliver_webhook``, which POSTs a job's end to its callback_url (`workers.webhooks`), on
a queue of its own (``NNKGEO_WEBHOOK_QUEUE``, ``webhooks``): serve it with a small worker,
``celery -A workers.celery_app worker -Q webhooks --concurrency 4``.
"""

from __future__ import annotations

import logging
import os
import resource

from celery import Celery
from celery.signals import celeryd_after_setup, worker_process_init

from api_schemas import AnalysisParams, JobStatus
from service.records import JobRecord
from service.settings import Settings, get_settings
from service.store import JobFinishedHook
from service.webhooks import event_id_for

logger = logging.getLogger(__name__)

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


def create_celery_app(settings: Settings) -> Celery:
    celery = Celery(
        "nnkgeo",
        broker=settings.redis_url,
        backend=settings.redis_url,
        include=["workers.tasks", "workers.webhooks"],
    )
    celery.conf.update(
        # JSON only: a pickle-accepting worker runs whatever a broker writer sends it.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Job outcomes live in the job record (service.store), not in Celery results.
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
            # Must exceed the hard time limit (Settings checks it): Redis redelivers any
            # message unacknowledged this long, even if its worker is still busy with it.
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


app = create_celery_app(get_settings())


# Address space a worker's pool process maps beyond its job's memory budget: what it has
# mapped when it starts (torch, faiss, numpy), plus glibc's per-thread malloc arenas.
_ADDRESS_SPACE_SLACK_BYTES = 1024**3


@worker_process_init.connect
def _limit_address_space(**_: object) -> None:
    """Backstop of the memory budget in each pool process: past it an allocation fails
    (MemoryError, or a RuntimeError from torch and faiss) instead of the kernel's OOM
    killer taking the process, or the host, down."""
    settings = get_settings()
    with open("/proc/self/status") as status:
        mapped = next(
            (int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:")), 0
        )
    limit = mapped + settings.worker_memory_bytes + _ADDRESS_SPACE_SLACK_BYTES
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


@celeryd_after_setup.connect
def _warn_when_budgets_exceed_the_machine(instance: object = None, **_: object) -> None:
    settings = get_settings()
    concurrency = int(getattr(instance, "concurrency", None) or os.cpu_count() or 1)
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if settings.worker_memory_bytes * concurrency > 0.75 * machine:
        logger.warning(
            "NNKGEO_WORKER_MEMORY_BYTES x concurrency = %d x %d bytes exceeds 75%% of this "
            "machine's %d bytes: jobs may be killed by the kernel before their budget "
            "stops them; lower the budget or the concurrency",
            settings.worker_memory_bytes,
            concurrency,
            machine,
        )


@celeryd_after_setup.connect
def _check_model_sandbox(**_: object) -> None:
    """Say at start-up whether this worker can run uploaded models, and why not.

    Probed once in the main process, once logging is set up and before the pool forks:
    its children inherit the answer (`workers.models.sandbox.runner.sandbox_support` caches it).
    """
    from workers.models.sandbox.runner import sandbox_support

    settings = get_settings()
    status = sandbox_support(
        min_landlock_abi=settings.sandbox_min_landlock_abi,
        allow_unsandboxed=settings.unsafe_allow_unsandboxed_models,
    )
    if status.enforceable:
        logger.info("%s", status.description)
    elif status.allowed:
        logger.warning(
            "%s; uploaded models WILL run unconfined (NNKGEO_UNSAFE_ALLOW_UNSANDBOXED_MODELS)",
            status.description,
        )
    else:
        logger.error("%s; jobs with uploaded models will be refused", status.description)


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
