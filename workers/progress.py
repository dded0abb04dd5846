"""The progress callbacks handed to the core: they record progress and relay cancels.

The core calls its callback often and stops when it raises `AnalysisCanceled`; these
touch Redis at most every `PROGRESS_INTERVAL_S`, and raise when the job was canceled or
its run was replaced by a newer attempt.
"""

from __future__ import annotations

import time

from jobstate.errors import AnalysisCanceled
from jobstate.records import JobRecord
from jobstate.store import ProgressVerdict, Store
from workers.geometry.analysis import ProgressCallback

PROGRESS_INTERVAL_S = 0.5
# Share of an embed or study job's progress spent making its sets (training, embedding).
MODEL_PROGRESS_SHARE = 0.8
# Share of a sharded job's progress that its blocks span; the assembly (metrics) the rest.
BLOCKS_PROGRESS_SHARE = 0.9


class JobProgressReporter:
    """The progress callback of a job's own task: records progress, relays cancels.

    Redis is touched at most every PROGRESS_INTERVAL_S (and on each new stage), since
    the core calls this often.
    """

    def __init__(self, store: Store, job: JobRecord, *, attempt: int) -> None:
        self._store = store
        self._job = job
        self._attempt = attempt
        self._last_stage: str | None = None
        self._last_write = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage == self._last_stage and now - self._last_write < PROGRESS_INTERVAL_S:
            return
        self._last_stage, self._last_write = stage, now
        verdict = self._store.record_progress(
            self._job.tenant, self._job.id, attempt=self._attempt, stage=stage, fraction=fraction
        )
        raise_unless_carrying_on(verdict, self._job.id)


class CancelCheck:
    """The progress callback of a block: relays cancels, records nothing.

    Blocks of one job run side by side; the job's progress counts finished blocks
    (`Store.record_block`), not rows within each.
    """

    def __init__(self, store: Store, job: JobRecord, *, attempt: int) -> None:
        self._store = store
        self._job = job
        self._attempt = attempt
        self._last_check = time.monotonic()

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if now - self._last_check < PROGRESS_INTERVAL_S:
            return
        self._last_check = now
        verdict = self._store.run_verdict(self._job.tenant, self._job.id, attempt=self._attempt)
        raise_unless_carrying_on(verdict, self._job.id)


def raise_unless_carrying_on(verdict: ProgressVerdict, job_id: str) -> None:
    """Stop the run (`AnalysisCanceled`) when the job was canceled or is no longer its."""
    if verdict is ProgressVerdict.cancel_requested:
        raise AnalysisCanceled(f"job {job_id} was canceled")
    if verdict is ProgressVerdict.superseded:
        raise AnalysisCanceled(f"job {job_id} is no longer this run's")


def progress_share(progress: ProgressCallback, start: float, share: float) -> ProgressCallback:
    """A callback that maps a step's fractions 0..1 onto ``start .. start + share``."""

    def report(stage: str, fraction: float) -> None:
        progress(stage, start + share * fraction)

    return report
