"""Job metrics: jobs submitted and finished, the duration histograms, queue lengths.

The counters are written where jobs are created (`JobStore.create_job`) and finished
(the finish script), in the same step as the transition; this module reads them for
the Prometheus collector (`service.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from api_schemas import JobStatus
from jobstate.store.base import StoreBase
from jobstate.store.keys import JOBS_FINISHED_KEY, JOBS_SUBMITTED_KEY, job_duration_key

JOB_DURATION_BUCKETS_S = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
FINAL_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


@dataclass(frozen=True)
class DurationHistogram:
    bucket_counts: dict[str, int]
    total_s: float
    count: int


@dataclass(frozen=True)
class JobMetrics:
    submitted: dict[str, int]
    cache_hits: int
    finished: dict[str, int]
    durations: dict[str, DurationHistogram]


def duration_bucket(seconds: float) -> str:
    """Label of the histogram bucket a job duration falls in (buckets are not cumulative).

    Parameters
    ----------
    seconds
        How long the job ran, from its first claim to its end.

    Returns
    -------
    str
        The smallest bucket upper bound of `JOB_DURATION_BUCKETS_S` not below `seconds`,
        as text, or ``"+Inf"`` beyond the last.
    """
    for upper in JOB_DURATION_BUCKETS_S:
        if seconds <= upper:
            return str(upper)
    return "+Inf"


class MetricsStore(StoreBase):
    """Reads the job counters and histograms, and the length of Celery's queues."""

    def job_metrics(self) -> JobMetrics:
        with self._redis.pipeline() as pipe:
            pipe.hgetall(JOBS_SUBMITTED_KEY)
            pipe.hgetall(JOBS_FINISHED_KEY)
            for status in FINAL_STATUSES:
                pipe.hgetall(job_duration_key(status.value))
            submitted_raw, finished_raw, *duration_fields = pipe.execute()
        submitted = {name: int(count) for name, count in submitted_raw.items()}
        cache_hits = submitted.pop("cache_hit", 0)
        durations = {}
        for status, fields in zip(FINAL_STATUSES, duration_fields, strict=True):
            durations[status.value] = DurationHistogram(
                bucket_counts={k: int(v) for k, v in fields.items() if k not in ("sum", "count")},
                total_s=float(fields.get("sum", 0.0)),
                count=int(fields.get("count", 0)),
            )
        return JobMetrics(
            submitted=submitted,
            cache_hits=cache_hits,
            finished={status: int(count) for status, count in finished_raw.items()},
            durations=durations,
        )

    def queue_lengths(self, queues: Iterable[str]) -> dict[str, int]:
        # Celery's Redis transport keeps each queue as a list named after it.
        names = list(queues)
        with self._redis.pipeline() as pipe:
            for name in names:
                pipe.llen(name)
            return dict(zip(names, (int(n) for n in pipe.execute()), strict=True))
