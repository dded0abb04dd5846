"""The Celery application: broker, serialization, delivery guarantees and queues.

The task names, the configuration and the send functions are `jobstate.dispatch`'s; this
module builds the worker's app from them, with the task modules, and sets up its pool
processes. Start a worker with ``celery -A workers.celery_app worker -Q cpu`` (add ``gpu`` on hosts
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

import importlib.util
import logging
import os
import resource
import subprocess
import sys

from celery.signals import celeryd_after_setup, worker_process_init

from jobstate.dispatch import create_celery_app
from jobstate.settings import get_settings, refuse_to_start_on_configuration_error
from jobstate.telemetry.setup import configure_worker
from workers.reaper import ReaperStep

logger = logging.getLogger(__name__)

# A misconfigured worker says what to fix (a line per setting, exit code 2), no traceback.
with refuse_to_start_on_configuration_error("worker"):
    app = create_celery_app(get_settings(), include=["workers.tasks", "workers.webhooks"])
    # NNKGEO_LOG_FORMAT and NNKGEO_OTEL: log lines that name their job, traced tasks.
    configure_worker(get_settings())
# Every worker runs the reaper of expired leases and the outbox's dispatcher (one acts at
# a time; workers.reaper).
app.steps["worker"].add(ReaperStep)


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


# A cold numba cache compiles the CPU solve for 10-40 s; warmed, loading takes a second.
_WARM_UP_TIMEOUT_S = 300


@celeryd_after_setup.connect
def _warm_the_compiled_solve(**_: object) -> None:
    """Compile the CPU solve into numba's cache before the first job, not inside it.

    The image warms the cache at build time; a worker installed otherwise would spend its
    first job's time limit compiling. It runs in a child process: numba's thread pool
    started in this process would not survive the pool's fork (the OpenMP and workqueue
    layers are not fork-safe), and the pool processes load the cached code themselves.
    """
    if importlib.util.find_spec("numba") is None:
        return
    try:
        subprocess.run(
            [sys.executable, "-m", "workers.geometry.nnk_kernel"],
            check=True,
            timeout=_WARM_UP_TIMEOUT_S,
            capture_output=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        # Not fatal: the first job compiles instead, within its own time limit.
        logger.warning("could not warm the compiled NNK solve: %s", error)


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
