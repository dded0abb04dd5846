"""The reaper and the outbox's dispatcher: one thread in every worker.

Every worker's main process runs one (a Celery bootstep), and a lock in Redis lets one
act at a time. Each interval, the lock's holder

- reaps: a job whose lease expired is queued again, to be claimed as its next attempt
  (on its last attempt it fails instead, with a problem that says its worker was lost),
  and a block whose lease expired is sent again. The reap itself is a fenced script
  (`jobstate.store.scripts.REAP_LEASE`, ``REAP_BLOCK_LEASE``) that writes the message
  to the outbox in the same step, so two reapers in one sweep (the lock lost in between)
  still requeue a job once, and a reaper dying after the reap loses no message;
- dispatches: every outbox entry that is due is sent (`jobstate.dispatch.dispatch_pending`):
  the reaps' messages, and those whose writer's fast path failed or never ran (an API
  that died between storing a job and sending it, a broker that refused a webhook).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import bootsteps

from api_schemas import JobStatus
from jobstate.dispatch import dispatch_pending
from jobstate.records import utc_now
from jobstate.settings import Settings
from jobstate.store import Reaped, ReapOutcome, Store

logger = logging.getLogger(__name__)


def reap_once(store: Store, settings: Settings, celery: Any = None) -> list[Reaped]:
    """One sweep: requeue (or fail) every job, and resend every block, whose lease expired.

    The messages of what it requeues are in the outbox once it is reaped, due at once.

    Parameters
    ----------
    store
        The worker's store.
    settings
        For the most attempts.
    celery
        When given, the outbox's due entries (these messages among them) are sent
        through it after the sweep (`jobstate.dispatch.dispatch_pending`); None leaves
        them to the next dispatch.

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
            logger.warning(
                "job %s of %s: block %s of attempt %d lost its lease; sent again",
                item.job_id,
                item.tenant,
                item.block,
                item.attempts,
            )
            continue
        if item.outcome is ReapOutcome.requeued:
            logger.warning(
                "job %s of %s: attempt %d lost its lease; requeued",
                item.job_id,
                item.tenant,
                item.attempts,
            )
            continue
        job = store.get_job(item.tenant, item.job_id)
        if job is None:
            continue
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
    if celery is not None:
        dispatch_pending(store, celery, now=utc_now())
    return reaped


class Reaper:
    """A thread that reaps and dispatches every `Settings.reaper_interval_s` while it
    holds the lock."""

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
                if not self._store.take_reaper_lock(self._holder, ttl_ms=lock_ms):
                    continue
            except Exception:
                logger.exception("taking the reaper's lock failed")
                continue
            # Apart: a failed sweep must not hold back the messages already owed.
            try:
                reap_once(self._store, self._settings)
            except Exception:
                logger.exception("reaping expired leases failed")
            try:
                dispatch_pending(self._store, self._celery, now=utc_now())
            except Exception:
                logger.exception("dispatching the outbox failed")


class ReaperStep(bootsteps.StartStopStep):
    """Runs the reaper and dispatcher in the worker's main process, from start-up to
    shutdown."""

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
