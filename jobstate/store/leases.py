"""Leases of running jobs: their renewal by a worker's heartbeat, and the reaper's sweep.

A claim takes the job's lease (`jobstate.store.jobs.JobStore.claim_job`) and a finish
releases it; a block of a sharded job takes its own when it starts
(`jobstate.store.runs.RunStore.begin_block`), released once it is recorded, and the
assembly of a sharded run takes the job's lease again
(`jobstate.store.runs.RunStore.begin_assembly`) until it ends the job. In between,
the worker holding a lease renews it every `Settings.heartbeat_interval_s`. A lease that
expired means its worker died (or stalled past LEASE_S): the reaper queues the job again,
to be claimed as the next attempt (or fails it on its last attempt), or sends the block
again, whose next delivery is counted against the most attempts.
Leases are timed by Redis's clock alone (see `jobstate.store.scripts`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum

from jobstate.store.base import StoreBase
from jobstate.store.keys import (
    LEASES_KEY,
    OUTBOX_KEY,
    OUTBOX_MESSAGES_KEY,
    REAPER_LOCK_KEY,
    block_lease_key,
    block_lease_member,
    job_key,
    lease_key,
    lease_member,
    run_key,
)
from jobstate.store.outbox import block_resend_script_args, requeue_script_args, wall_clock_ms


@dataclass(frozen=True)
class Lease:
    """The lease one attempt holds on a job, or on one block (``block``) of its run."""

    tenant: str
    job_id: str
    attempt: int
    token: str
    block: str | None = None

    @property
    def value(self) -> str:
        return f"{self.attempt}:{self.token}"

    @property
    def key(self) -> str:
        if self.block is None:
            return lease_key(self.tenant, self.job_id)
        return block_lease_key(self.tenant, self.job_id, self.attempt, self.block)

    @property
    def member(self) -> str:
        if self.block is None:
            return lease_member(self.tenant, self.job_id)
        return block_lease_member(self.tenant, self.job_id, self.attempt, self.block)


class ReapOutcome(StrEnum):
    gone = "gone"
    alive = "alive"
    requeued = "requeued"
    exhausted = "exhausted"


@dataclass(frozen=True)
class Reaped:
    """What the reaper did with one job, or block, whose lease had expired.

    ``attempts`` is the job's attempts so far; for a block, the attempt whose run it is.
    """

    tenant: str
    job_id: str
    outcome: ReapOutcome
    attempts: int
    block: str | None = None


def new_claim_token() -> str:
    """A token unique to one delivery's claim, so a retried claim recognises itself."""
    return secrets.token_hex(8)


class LeaseStore(StoreBase):
    """Renewal and release of leases, the reaper's sweep and its lock."""

    def renew_lease(self, lease: Lease, *, lease_ms: int) -> bool:
        """Extend `lease` by `lease_ms`; False when it is no longer this holder's."""
        return bool(
            self._scripts.renew_lease(
                keys=[lease.key, LEASES_KEY],
                args=[lease.value, lease_ms, lease.member],
            )
        )

    def release_lease(self, lease: Lease) -> bool:
        """Drop `lease` (a job's, once its blocks are sent; a block's, once recorded).

        False when it is not this holder's.
        """
        return bool(
            self._scripts.release_lease(
                keys=[lease.key, LEASES_KEY],
                args=[lease.value, lease.member],
            )
        )

    def lease_ttl_ms(self, tenant: str, job_id: str) -> int:
        """Milliseconds the job's lease has left (negative: none)."""
        return int(self._redis.pttl(lease_key(tenant, job_id)))

    def reap_expired_leases(self, *, max_attempts: int, limit: int = 100) -> list[Reaped]:
        """Requeue (or, on their last attempt, report) jobs whose lease expired.

        Parameters
        ----------
        max_attempts
            Attempts a job may make; a lease lost on the last one is reported
            ``exhausted``, for the caller to fail the job.
        limit
            Most index entries looked at in one sweep.

        Returns
        -------
        list of Reaped
            Jobs requeued (their message written to the outbox) or exhausted; jobs found
            alive or gone are left out.
        """
        seconds, micros = self._redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        members: list[str] = self._redis.zrangebyscore(
            LEASES_KEY, "-inf", now_ms, start=0, num=limit
        )
        reaped: list[Reaped] = []
        for member in members:
            parts = member.split("/")
            if len(parts) == 4:
                block_reaped = self._reap_block(member, *parts)
                if block_reaped is not None:
                    reaped.append(block_reaped)
                continue
            tenant, job_id = parts
            # A requeue writes the job's message to the outbox, due at once: the
            # dispatcher that runs after each sweep sends it (`jobstate.store.outbox`).
            outcome, attempts = self._scripts.reap_lease(
                keys=[
                    job_key(tenant, job_id),
                    lease_key(tenant, job_id),
                    LEASES_KEY,
                    OUTBOX_KEY,
                    OUTBOX_MESSAGES_KEY,
                ],
                args=[
                    member,
                    max_attempts,
                    *requeue_script_args(tenant, job_id, due_ms=wall_clock_ms()),
                ],
            )
            result = ReapOutcome(outcome)
            if result in (ReapOutcome.requeued, ReapOutcome.exhausted):
                reaped.append(Reaped(tenant, job_id, result, int(attempts)))
        return reaped

    def _reap_block(
        self, member: str, tenant: str, job_id: str, attempt: str, block: str
    ) -> Reaped | None:
        outcome = self._scripts.reap_block_lease(
            keys=[
                job_key(tenant, job_id),
                run_key(tenant, job_id, int(attempt)),
                block_lease_key(tenant, job_id, int(attempt), block),
                LEASES_KEY,
                OUTBOX_KEY,
                OUTBOX_MESSAGES_KEY,
            ],
            args=[
                member,
                attempt,
                block,
                *block_resend_script_args(
                    tenant, job_id, attempt=int(attempt), block=block, due_ms=wall_clock_ms()
                ),
            ],
        )
        if outcome != ReapOutcome.requeued:
            return None
        return Reaped(tenant, job_id, ReapOutcome.requeued, int(attempt), block=block)

    def take_reaper_lock(self, holder: str, *, ttl_ms: int) -> bool:
        """Hold the reaper's lock for `ttl_ms` (renewed when `holder` has it already)."""
        if self._redis.set(REAPER_LOCK_KEY, holder, nx=True, px=ttl_ms):
            return True
        # Check-then-extend is not atomic, but a lock lost in between only means two
        # reapers for one sweep, which the fenced reap script makes harmless.
        if self._redis.get(REAPER_LOCK_KEY) == holder:
            self._redis.pexpire(REAPER_LOCK_KEY, ttl_ms)
            return True
        return False
