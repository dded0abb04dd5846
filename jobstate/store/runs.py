"""Sharded runs: one hash per attempt at a sharded job (see `workers.sharding`).

The hash holds ``plan`` (the `ShardedRun` JSON), ``total`` and ``done`` (blocks planned
and recorded), ``result:{block}`` (blob sha of the block's NNK solve, set once),
``deliveries:{block}`` and ``started_by:{block}`` (each start of a block task, and by
which worker), ``deliveries:assemble`` and ``assembly_started``. Recording a block and
counting it happen in one script, so a block delivered twice is counted once, and
exactly one recording sees the run complete. Every write is fenced by the attempt, as
the job's own transitions are. A block's start takes the block's lease; the assembly's
start takes the job's own lease, so that a worker dying mid-assembly has the job
requeued as its next attempt by the reaper.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from api_schemas import JobStatus
from jobstate.records import RunProgress, ShardedRun
from jobstate.store.base import StoreBase
from jobstate.store.jobs import ProgressVerdict
from jobstate.store.keys import LEASES_KEY, job_key, lease_key, run_key
from jobstate.store.leases import Lease

# Marks an assembly's lease on its job apart from the claim's (whose fan-out releases it
# once the blocks are sent): an assembly takes the claim's over, never another's.
ASSEMBLY_TOKEN_PREFIX = "assemble-"


class BlockStartOutcome(StrEnum):
    start = "start"
    """The block is to be solved (its delivery counted)."""
    recorded = "recorded"
    """Its result is recorded already (a redelivered or duplicated message)."""
    canceled = "canceled"
    stale = "stale"
    """The job finished, or a newer attempt replaced this run."""
    missing = "missing"
    """No such run (expired)."""
    leased = "leased"
    """Another delivery holds a live lease on the block (a redelivered message)."""


@dataclass(frozen=True)
class BlockStart:
    outcome: BlockStartOutcome
    deliveries: int = 0
    run_awaits_assembly: bool = False
    lease: Lease | None = None


@dataclass(frozen=True)
class BlockRecording:
    """What recording a block's result did: at most one recording has ``completes_run``."""

    recorded: bool
    superseded: bool
    done: int
    total: int

    @property
    def completes_run(self) -> bool:
        return self.recorded and self.done == self.total


class AssemblyStartOutcome(StrEnum):
    start = "start"
    """The run is to be assembled (its delivery counted, the job's lease taken)."""
    canceled = "canceled"
    """A cancel was requested: the job's lease taken, for the caller to end the job."""
    stale = "stale"
    missing = "missing"
    incomplete = "incomplete"
    leased = "leased"
    """Another assembly of this attempt holds a live lease (a redelivered message)."""


@dataclass(frozen=True)
class AssemblyStart:
    outcome: AssemblyStartOutcome
    deliveries: int = 0
    lease: Lease | None = None


class RunStore(StoreBase):
    """The plan, blocks and assembly of each attempt at a sharded job."""

    def start_run(self, tenant: str, job_id: str, plan: ShardedRun) -> ProgressVerdict:
        """Record the plan of a sharded attempt, unless the job moved on or was canceled."""
        verdict = int(
            self._scripts.start_run(
                keys=[job_key(tenant, job_id), run_key(tenant, job_id, plan.attempt)],
                args=[
                    plan.attempt,
                    plan.model_dump_json(),
                    plan.total_blocks,
                    self.job_ttl_s,
                    "blocks",
                ],
            )
        )
        if verdict < 0:
            return ProgressVerdict.superseded
        return ProgressVerdict.cancel_requested if verdict else ProgressVerdict.carry_on

    def get_run(self, tenant: str, job_id: str, attempt: int) -> RunProgress | None:
        fields: dict[str, str] = self._redis.hgetall(run_key(tenant, job_id, attempt))
        if not fields:
            return None
        return RunProgress(
            plan=ShardedRun.model_validate_json(fields["plan"]),
            block_results={
                name.removeprefix("result:"): sha
                for name, sha in fields.items()
                if name.startswith("result:")
            },
            deliveries={
                name.removeprefix("deliveries:"): int(count)
                for name, count in fields.items()
                if name.startswith("deliveries:")
            },
            started_by={
                name.removeprefix("started_by:"): worker
                for name, worker in fields.items()
                if name.startswith("started_by:")
            },
            assembly_started=fields.get("assembly_started") == "1",
        )

    def run_verdict(self, tenant: str, job_id: str, *, attempt: int) -> ProgressVerdict:
        """Whether a task of this attempt should carry on (read-only; for blocks, which
        must not write the job's progress over each other's)."""
        status, attempts, cancel = self._redis.hmget(
            job_key(tenant, job_id), ["status", "attempts", "cancel_requested"]
        )
        if status != JobStatus.running.value or attempts != str(attempt):
            return ProgressVerdict.superseded
        return ProgressVerdict.cancel_requested if cancel else ProgressVerdict.carry_on

    def begin_block(
        self,
        tenant: str,
        job_id: str,
        *,
        attempt: int,
        block: str,
        worker: str,
        token: str,
        lease_ms: int,
    ) -> BlockStart:
        """Decide whether a delivered block task solves its block; count the start if so.

        A start takes the block's lease (``BlockStart.lease``), for the worker to renew
        while it solves the block and release once it is recorded; a delivery finding a
        live lease held by another answers ``leased``.
        """
        lease = Lease(tenant, job_id, attempt, token, block=block)
        outcome, deliveries, awaiting = self._scripts.begin_block(
            keys=[job_key(tenant, job_id), run_key(tenant, job_id, attempt), lease.key, LEASES_KEY],
            args=[attempt, block, worker, token, lease_ms, lease.member],
        )
        start_outcome = BlockStartOutcome(outcome)
        return BlockStart(
            outcome=start_outcome,
            deliveries=int(deliveries),
            run_awaits_assembly=bool(awaiting),
            lease=lease if start_outcome is BlockStartOutcome.start else None,
        )

    def record_block(
        self, tenant: str, job_id: str, *, attempt: int, block: str, sha256: str, share: float
    ) -> BlockRecording:
        """Record a block's result once, and count it in the job's progress.

        The first recording of a block wins; the job's progress becomes
        ``share * done / total`` (stage "blocks").
        """
        recorded, done, total = self._scripts.record_block(
            keys=[job_key(tenant, job_id), run_key(tenant, job_id, attempt)],
            args=[attempt, block, sha256, f"{share:.4f}"],
        )
        return BlockRecording(
            recorded=int(recorded) == 1,
            superseded=int(recorded) < 0,
            done=int(done),
            total=int(total),
        )

    def begin_assembly(
        self, tenant: str, job_id: str, *, attempt: int, token: str, lease_ms: int
    ) -> AssemblyStart:
        """Decide whether a delivered assembly runs; count the start and take the lease.

        Parameters
        ----------
        tenant, job_id, attempt
            The run to assemble.
        token
            Unique to this delivery (`jobstate.store.leases.new_claim_token`): a start
            retried with it answers as the first run did.
        lease_ms
            The lease it takes, for its holder to renew.

        Returns
        -------
        AssemblyStart
            ``start`` and ``canceled`` carry the job's lease (`Lease`, as
            `jobstate.store.jobs.JobStore.claim_job` takes it), for the worker to renew
            while it assembles and release at the end; should the worker die, the
            reaper requeues the job as its next attempt once the lease expires.
            ``leased`` when another assembly of this attempt holds a live lease (leave
            it be); ``stale``, ``missing`` or ``incomplete`` otherwise.
        """
        lease = Lease(tenant, job_id, attempt, f"{ASSEMBLY_TOKEN_PREFIX}{token}")
        outcome, deliveries = self._scripts.begin_assembly(
            keys=[
                job_key(tenant, job_id),
                run_key(tenant, job_id, attempt),
                lease_key(tenant, job_id),
                LEASES_KEY,
            ],
            args=[
                attempt,
                lease.value,
                lease_ms,
                lease.member,
                f"{attempt}:{ASSEMBLY_TOKEN_PREFIX}",
            ],
        )
        start_outcome = AssemblyStartOutcome(outcome)
        holds_lease = start_outcome in (AssemblyStartOutcome.start, AssemblyStartOutcome.canceled)
        return AssemblyStart(
            outcome=start_outcome,
            deliveries=int(deliveries),
            lease=lease if holds_lease else None,
        )
