"""The reaper: requeues jobs (and blocks) whose lease expired, in every worker.

Every worker's main process runs one (a Celery bootstep), and a lock in Redis lets one
act at a time. A job whose lease expired is queued again, to be claimed as its next
attempt; on its last attempt it fails instead, with a problem that says its worker was
lost. The reap itself is a fenced script (`jobstate.store.scripts.REAP_LEASE`), so two
reapers in one sweep (the lock lost in between) still requeue a job once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import bootsteps

from api_schemas import JobStatus
from jobstate.dispatch import enqueue_analysis, enqueue_block
from jobstate.records import utc_now
from jobstate.settings import Settings
from jobstate.store import Reaped, ReapOutcome, Store

logger = logging.getLogger(__name__)


def reap_once(store: Store, settings: Settings, celery: Any) -> list[Reaped]:
    """One sweep: requeue (or fail) every job whose lease expired.

    Parameters
    ----------
    store
        The worker's store.
    settings
        For the most attempts and the queue of jobs that name none.
    celery
        The app whose broker gets the requeued jobs' messages.

    Returns
    -------
    list of Reaped
        What was requeued or failed.
    """
    # Imported here: workers.celery_app imports this module, and outcomes imports the
    # worker runtime, which imports workers.celery_app.
    from workers.outcomes import lease_lost_problem

    reaped = store.reap_expired_leases(max_attempts=settings.task_max_attempts)
    for item in reaped:
        if item.block is not None:
            _resend_block(store, celery, item)
            continue
        job = store.get_job(item.tenant, item.job_id)
        if job is None:
            continue
        if item.outcome is ReapOutcome.requeued:
            logger.warning(
                "job %s of %s: attempt %d lost its lease; requeued",
                item.job_id,
                item.tenant,
                item.attempts,
            )
            enqueue_analysis(
                celery,
                job_id=item.job_id,
                tenant=item.tenant,
                queue=job.queue or settings.cpu_queue,
            )
        else:
            logger.error(
                "job %s of %s: its last attempt (%d) lost its lease; failing it",
                item.job_id,
                item.tenant,
                item.attempts,
            )
            store.finish_job(
                job,
                status=JobStatus.failed,
                now=utc_now(),
                attempt=item.attempts,
                error=lease_lost_problem(item.job_id, item.attempts),
            )
    return reaped


def _resend_block(store: Store, celery: Any, item: Reaped) -> None:
    """Send again a block whose worker died: its next delivery is counted (and the job
    fails once a block has had the most attempts, in `workers.sharded.run_block`)."""
    assert item.block is not None
    run = store.get_run(item.tenant, item.job_id, item.attempts)
    if run is None:
        return
    set_index, block_index = (int(part) for part in item.block.split(":"))
    logger.warning(
        "job %s of %s: block %s of attempt %d lost its lease; sent again",
        item.job_id,
        item.tenant,
        item.block,
        item.attempts,
    )
    enqueue_block(
        celery,
        job_id=item.job_id,
        tenant=item.tenant,
        attempt=item.attempts,
        set_index=set_index,
        block_index=block_index,
        queue=run.plan.queue,
    )


class Reaper:
    """A thread that sweeps every `Settings.reaper_interval_s` while it holds the lock."""

    def __init__(self, store: Store, settings: Settings, celery: Any) -> None:
        self._store = store
        self._settings = settings
        self._celery = celery
        self._holder = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nnkgeo-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = self._settings.reaper_interval_s
        # The lock outlives one interval, so its holder keeps it from sweep to sweep,
        # and passes to another worker within about two intervals of its holder dying.
        lock_ms = int(interval * 2000)
        while not self._stopped.wait(interval):
            try:
                if self._store.take_reaper_lock(self._holder, ttl_ms=lock_ms):
                    reap_once(self._store, self._settings, self._celery)
            except Exception:
                logger.exception("reaping expired leases failed")


class ReaperStep(bootsteps.StartStopStep):
    """Runs the reaper in the worker's main process, from start-up to shutdown."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._reaper: Reaper | None = None

    def start(self, parent: Any) -> None:
        from workers.runtime import worker_runtime

        runtime = worker_runtime()
        self._reaper = Reaper(runtime.store, runtime.settings, parent.app)
        self._reaper.start()

    def stop(self, parent: Any) -> None:
        if self._reaper is not None:
            self._reaper.stop()
