"""The heartbeat of a running attempt: a thread that renews its job's lease.

The lease is renewed on a timer, not on progress: a long step of the core that reports
nothing for minutes still holds its job, and only a dead (or frozen) worker loses it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from jobstate.store import Lease, Store

logger = logging.getLogger(__name__)


class Heartbeat:
    """Renews one lease every `interval_s` until stopped, or until it is lost."""

    def __init__(self, store: Store, lease: Lease, *, lease_ms: int, interval_s: float) -> None:
        self._store = store
        self._lease = lease
        self._lease_ms = lease_ms
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{lease.job_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self._interval_s + 5)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                renewed = self._store.renew_lease(self._lease, lease_ms=self._lease_ms)
            except Exception:
                # Redis unreachable for a beat: try again at the next one; the lease
                # has two more beats before it expires.
                logger.warning("job %s: renewing its lease failed", self._lease.job_id)
                continue
            if not renewed:
                # Reaped (the job is queued again) or finished: the fenced writes of this
                # attempt are refused from now on, so there is nothing left to hold.
                logger.warning(
                    "job %s: attempt %d lost its lease", self._lease.job_id, self._lease.attempt
                )
                self.lost.set()
                return


@contextmanager
def holding_lease(
    store: Store, lease: Lease, *, lease_ms: int, interval_s: float
) -> Iterator[Heartbeat]:
    """Renew `lease` in the background while the block runs.

    Parameters
    ----------
    store
        The worker's store.
    lease
        The lease the claim took.
    lease_ms, interval_s
        The lease each renewal grants, and the time between renewals (about a third).

    Yields
    ------
    Heartbeat
        Its ``lost`` event is set once the lease is no longer this attempt's.
    """
    heartbeat = Heartbeat(store, lease, lease_ms=lease_ms, interval_s=interval_s)
    heartbeat.start()
    try:
        yield heartbeat
    finally:
        heartbeat.stop()
