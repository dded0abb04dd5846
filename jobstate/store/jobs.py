"""Job records: creation, the claim/progress/finish transitions, cancels, the job index,
and the admission of active jobs against a tenant's limit.

A job's status only changes in the scripts of `jobstate.store.scripts`, each fenced by
the attempt number its claim returned (see there). The messages a job's creation and end
call for (its ``analyze_sets``, its webhook) are written to the outbox in the same step
(`jobstate.store.outbox`), then sent at once by the store's sender where it has one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from api_schemas import JobProgress, JobStatus, Problem
from jobstate.records import JobRecord, JobSpec, job_id_floor
from jobstate.store.base import isoformat_or_none, parse_time
from jobstate.store.keys import (
    JOBS_FINISHED_KEY,
    JOBS_SUBMITTED_KEY,
    LEASES_KEY,
    OUTBOX_KEY,
    OUTBOX_MESSAGES_KEY,
    active_jobs_key,
    dataset_pins_key,
    job_duration_key,
    job_index_key,
    job_key,
    lease_key,
    lease_member,
)
from jobstate.store.leases import Lease
from jobstate.store.metrics import duration_bucket
from jobstate.store.outbox import (
    OutboxEntry,
    OutboxMessage,
    OutboxStore,
    analysis_message,
    queue_outbox_entry,
    wall_clock_ms,
    webhook_message,
)

ACTIVE_JOB_ADMISSION_GRACE_S = 60

# Job records fetched per round trip while paging through the index.
_LIST_BATCH = 64


class ClaimOutcome(StrEnum):
    claimed = "claimed"
    missing = "missing"
    finished = "finished"
    exhausted = "exhausted"
    leased = "leased"


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    attempt: int
    job: JobRecord | None
    lease: Lease | None = None


class CancelOutcome(StrEnum):
    canceled = "canceled"
    requested = "requested"
    already_finished = "already_finished"
    missing = "missing"


class ProgressVerdict(StrEnum):
    carry_on = "carry_on"
    cancel_requested = "cancel_requested"
    superseded = "superseded"


class JobStore(OutboxStore):
    """Job records, their transitions, the job index and active-job admission."""

    webhook_queue: str

    def create_job(self, job: JobRecord) -> None:
        """Store a new job record (queued, or already succeeded from the cache).

        A queued job's ``analyze_sets`` is written to the outbox with the record (one
        MULTI), as is the webhook of a finished one that has a callback_url; then it is
        sent at once (`OutboxStore.send_outbox_entries`). Should that send fail, or the
        process die before it, the dispatcher sends it: the job is never left queued
        with no message.
        """
        created_ms = wall_clock_ms()
        index = job_index_key(job.tenant)
        message = self._creation_message(job)
        entry = (
            OutboxEntry(message, created_ms + self.outbox_grace_ms) if message is not None else None
        )
        with self._redis.pipeline() as pipe:
            pipe.hset(job_key(job.tenant, job.id), mapping=_job_to_hash(job))
            pipe.expire(job_key(job.tenant, job.id), self.job_ttl_s)
            pipe.zadd(index, {job.id: 0})
            # Entries of expired job records: their ids sort before the TTL's horizon.
            horizon = job_id_floor(created_before_ms=created_ms - self.job_ttl_s * 1000)
            pipe.zremrangebylex(index, "-", f"({horizon}")
            pipe.expire(index, self.job_ttl_s)
            if job.cached:
                pipe.hincrby(JOBS_SUBMITTED_KEY, "cache_hit", 1)
            elif job.queue:
                pipe.hincrby(JOBS_SUBMITTED_KEY, job.queue, 1)
            if job.status.finished:
                pipe.hincrby(JOBS_FINISHED_KEY, job.status.value, 1)
            if entry is not None:
                queue_outbox_entry(pipe, entry.message, due_ms=entry.due_ms)
            pipe.execute()
        if entry is not None:
            self.send_outbox_entries([entry])

    def get_job(self, tenant: str, job_id: str) -> JobRecord | None:
        fields = self._redis.hgetall(job_key(tenant, job_id))
        return _job_from_hash(fields) if fields else None

    def list_jobs(
        self, tenant: str, *, limit: int, before: str | None
    ) -> tuple[list[JobRecord], str | None]:
        """The tenant's jobs, newest first, starting after the job id `before`."""
        index = job_index_key(tenant)
        upper = f"({before}" if before else "+"
        collected: list[JobRecord] = []
        expired: list[str] = []
        while len(collected) <= limit:
            ids: list[str] = self._redis.zrevrangebylex(index, upper, "-", start=0, num=_LIST_BATCH)
            if not ids:
                break
            with self._redis.pipeline() as pipe:
                for job_id in ids:
                    pipe.hgetall(job_key(tenant, job_id))
                records = pipe.execute()
            for job_id, fields in zip(ids, records, strict=True):
                if fields:
                    collected.append(_job_from_hash(fields))
                else:
                    expired.append(job_id)
            upper = f"({ids[-1]}"
        if expired:
            self._redis.zrem(index, *expired)
        page = collected[:limit]
        next_cursor = page[-1].id if len(collected) > limit and page else None
        return page, next_cursor

    def claim_job(
        self,
        tenant: str,
        job_id: str,
        *,
        now: datetime,
        max_attempts: int,
        token: str,
        lease_ms: int,
    ) -> Claim:
        """Start a queued job, or restart a running one whose lease expired.

        Parameters
        ----------
        tenant, job_id
            The job.
        now
            Its start time, kept from the first attempt.
        max_attempts
            Attempts it may make; past them the claim answers ``exhausted``.
        token
            Unique to this delivery (`jobstate.store.leases.new_claim_token`): a claim
            retried with it answers as the first run did.
        lease_ms
            The lease the claim takes, for its holder to renew.

        Returns
        -------
        Claim
            ``claimed`` with the attempt and its lease; ``leased`` when another attempt
            holds a live lease (a redelivered message: leave it be); ``missing``,
            ``finished`` or ``exhausted`` otherwise.
        """
        outcome, attempt = self._scripts.claim_job(
            keys=[job_key(tenant, job_id), lease_key(tenant, job_id), LEASES_KEY],
            args=[now.isoformat(), max_attempts, token, lease_ms, lease_member(tenant, job_id)],
        )
        claim_outcome = ClaimOutcome(outcome)
        job = self.get_job(tenant, job_id) if claim_outcome is not ClaimOutcome.missing else None
        lease = (
            Lease(tenant, job_id, int(attempt), token)
            if claim_outcome is ClaimOutcome.claimed
            else None
        )
        return Claim(outcome=claim_outcome, attempt=int(attempt), job=job, lease=lease)

    def record_progress(
        self, tenant: str, job_id: str, *, attempt: int, stage: str, fraction: float
    ) -> ProgressVerdict:
        fraction = min(1.0, max(0.0, fraction)) if math.isfinite(fraction) else 0.0
        verdict = int(
            self._scripts.record_progress(
                keys=[job_key(tenant, job_id)], args=[stage[:64], f"{fraction:.4f}", attempt]
            )
        )
        if verdict < 0:
            return ProgressVerdict.superseded
        return ProgressVerdict.cancel_requested if verdict else ProgressVerdict.carry_on

    def finish_job(
        self,
        job: JobRecord,
        *,
        status: JobStatus,
        now: datetime,
        from_statuses: Sequence[JobStatus] = (JobStatus.running,),
        attempt: int | None = None,
        error: Problem | None = None,
        result_id: str | None = None,
    ) -> bool:
        """Move a job to a final status; False when it was not in `from_statuses`
        (or, given `attempt`, was claimed again since).

        Counts the job in the metrics, releases its dataset pins and, when it has a
        callback_url, writes its webhook to the outbox, all in the same step; then sends
        the webhook at once (`OutboxStore.send_outbox_entries`), or leaves it to the
        dispatcher when that fails.
        """
        duration_s = (now - job.started_at).total_seconds() if job.started_at else None
        webhook = self._webhook_message(job, status)
        entry = OutboxEntry(webhook, wall_clock_ms() + self.outbox_grace_ms) if webhook else None
        keys = [
            job_key(job.tenant, job.id),
            JOBS_FINISHED_KEY,
            job_duration_key(status.value),
            active_jobs_key(job.tenant),
            lease_key(job.tenant, job.id),
            LEASES_KEY,
            OUTBOX_KEY,
            OUTBOX_MESSAGES_KEY,
            *(dataset_pins_key(job.tenant, d) for d in job.spec.dataset_ids()),
        ]
        args = [
            status.value,
            now.isoformat(),
            "" if attempt is None else str(attempt),
            ",".join(s.value for s in from_statuses),
            error.model_dump_json(exclude_none=True) if error else "",
            result_id or "",
            duration_bucket(duration_s) if duration_s is not None else "",
            f"{duration_s or 0.0:.6f}",
            job.id,
            status.value,
            lease_member(job.tenant, job.id),
            entry.message.task_id if entry else "",
            entry.message.to_json() if entry else "",
            entry.due_ms if entry else 0,
        ]
        ended = bool(self._scripts.finish_job(keys=keys, args=args))
        if ended and entry is not None:
            # A finish called again after it ended the job answers True too: its entry is
            # sent only if it is still there (`send_outbox_entries` checks).
            self.send_outbox_entries([entry])
        return ended

    def request_cancel(self, job: JobRecord, *, now: datetime) -> CancelOutcome:
        if self.finish_job(
            job, status=JobStatus.canceled, now=now, from_statuses=(JobStatus.queued,)
        ):
            return CancelOutcome.canceled
        if self._scripts.request_cancel(keys=[job_key(job.tenant, job.id)]):
            return CancelOutcome.requested
        current = self.get_job(job.tenant, job.id)
        if current is None:
            return CancelOutcome.missing
        if current.status is JobStatus.canceled:
            return CancelOutcome.canceled
        return CancelOutcome.already_finished

    def job_is_unfinished(self, tenant: str, job_id: str) -> bool:
        status = self._redis.hget(job_key(tenant, job_id), "status")
        return status is not None and not JobStatus(status).finished

    def admit_active_job(self, tenant: str, job_id: str, *, limit: int) -> bool:
        """Count a job about to be queued against the tenant's `limit` of active jobs.

        False when the tenant has `limit` queued or running jobs already (0 = no limit,
        nothing counted). The job leaves the count when it finishes (`finish_job`), or
        with `release_active_job` when it is not queued after all.
        """
        if limit <= 0:
            return True
        key = active_jobs_key(tenant)
        args = [job_id, limit, time.time(), self.job_ttl_s]
        if self._scripts.admit_active_job(keys=[key], args=args):
            return True
        # Entries a finish never removed (a record that expired unfinished, a submission
        # that died between admission and queueing) must not hold the quota forever.
        if self._prune_active_jobs(tenant):
            return bool(self._scripts.admit_active_job(keys=[key], args=args))
        return False

    def release_active_job(self, tenant: str, job_id: str) -> None:
        self._redis.zrem(active_jobs_key(tenant), job_id)

    def _prune_active_jobs(self, tenant: str) -> int:
        """Drop counted jobs that finished, or whose record never appeared or expired.

        Only entries admitted more than ACTIVE_JOB_ADMISSION_GRACE_S ago are looked at:
        a younger one may belong to a submission that has not stored its record yet.
        """
        key = active_jobs_key(tenant)
        horizon = time.time() - ACTIVE_JOB_ADMISSION_GRACE_S
        candidates: list[str] = self._redis.zrangebyscore(key, "-inf", horizon)
        if not candidates:
            return 0
        with self._redis.pipeline() as pipe:
            for job_id in candidates:
                pipe.hget(job_key(tenant, job_id), "status")
            statuses: list[str | None] = pipe.execute()
        stale = [
            job_id
            for job_id, status in zip(candidates, statuses, strict=True)
            if status is None or JobStatus(status).finished
        ]
        if stale:
            self._redis.zrem(key, *stale)
        return len(stale)

    def _creation_message(self, job: JobRecord) -> OutboxMessage | None:
        """What a new job calls for: a queued one its analysis, a finished one (a cache
        hit) its webhook."""
        if job.status is JobStatus.queued and job.queue:
            return analysis_message(job.id, job.tenant, job.queue)
        if job.status.finished:
            return self._webhook_message(job, job.status)
        return None

    def _webhook_message(self, job: JobRecord, status: JobStatus) -> OutboxMessage | None:
        """The webhook of the job's end, for a job with a callback_url; else None."""
        if job.callback_url is None:
            return None
        return webhook_message(job.tenant, job.id, status.value, self.webhook_queue)


def _job_to_hash(job: JobRecord) -> dict[str, str]:
    fields: dict[str, str | None] = {
        "id": job.id,
        "tenant": job.tenant,
        "status": job.status.value,
        "spec": job.spec.model_dump_json(),
        "queue": job.queue,
        "cache_key": job.cache_key,
        "created_at": isoformat_or_none(job.created_at),
        "started_at": isoformat_or_none(job.started_at),
        "finished_at": isoformat_or_none(job.finished_at),
        "progress_stage": job.progress.stage,
        "progress_fraction": f"{job.progress.fraction:.4f}",
        "cached": "1" if job.cached else "0",
        "error": job.error.model_dump_json(exclude_none=True) if job.error else None,
        "result_id": job.result_id,
        "attempts": str(job.attempts),
        "cancel_requested": "1" if job.cancel_requested else None,
        "callback_url": job.callback_url,
    }
    # An absent field is left out of the hash, not stored as an empty string.
    return {name: value for name, value in fields.items() if value is not None}


def _job_from_hash(fields: dict[str, str]) -> JobRecord:
    error = fields.get("error")
    return JobRecord(
        id=fields["id"],
        tenant=fields["tenant"],
        status=JobStatus(fields["status"]),
        spec=JobSpec.model_validate_json(fields["spec"]),
        queue=fields.get("queue"),
        cache_key=fields["cache_key"],
        created_at=datetime.fromisoformat(fields["created_at"]),
        started_at=parse_time(fields.get("started_at")),
        finished_at=parse_time(fields.get("finished_at")),
        progress=JobProgress(
            stage=fields.get("progress_stage", "queued"),
            fraction=float(fields.get("progress_fraction", "0")),
        ),
        cached=fields.get("cached") == "1",
        error=Problem.model_validate_json(error) if error else None,
        result_id=fields.get("result_id"),
        attempts=int(fields.get("attempts", "0")),
        cancel_requested=fields.get("cancel_requested") == "1",
        callback_url=fields.get("callback_url"),
    )
