"""The Lua scripts of the store: each check-then-write that must happen in one step.

Job status changes happen in scripts, so that each is atomic: a worker finishing a job,
a client cancelling it and a redelivered message claiming it cannot interleave. A claim
increments the job's ``attempts`` and takes its lease, and succeeds only on a queued job
or one whose lease expired; a worker may only report progress, plan a run, start or
record a block, store the result, or finish with the attempt number it claimed (a
fencing token), so a stale run can never overwrite the outcome of a newer one. The
reaper puts a job whose lease expired back to ``queued``, which fences out its old
attempt at once. A script that calls for a message (a requeue, a resent block, a job's
webhook) writes it to the outbox in the same step (`jobstate.store.outbox`). Scripts
that redis-py may run twice (it retries once on a dropped connection) answer the second
run as they did the first: a claim and a block start recognise their own token, a finish
its own attempt and status.

Above each script: its KEYS, its ARGV and its reply. The store's client decodes replies,
so a Lua string comes back as `str` and a Lua number as `int`. Keys are named in
`jobstate.store.keys`. The scripts live beside the record kind they change
(jobs, leases, runs, results, datasets, outbox); this module registers them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.commands.core import Script

from jobstate.store.scripts.datasets import ADD_DATASET, DELETE_DATASET
from jobstate.store.scripts.jobs import (
    ADMIT_ACTIVE_JOB,
    CLAIM_JOB,
    FINISH_JOB,
    RECORD_PROGRESS,
    REQUEST_CANCEL,
)
from jobstate.store.scripts.leases import REAP_BLOCK_LEASE, REAP_LEASE, RELEASE_LEASE, RENEW_LEASE
from jobstate.store.scripts.outbox import REMOVE_OUTBOX_ENTRY
from jobstate.store.scripts.results import EXTEND_RESULT, PUT_RESULT
from jobstate.store.scripts.runs import BEGIN_ASSEMBLY, BEGIN_BLOCK, RECORD_BLOCK, START_RUN

__all__ = [
    "ADD_DATASET",
    "ADMIT_ACTIVE_JOB",
    "BEGIN_ASSEMBLY",
    "BEGIN_BLOCK",
    "CLAIM_JOB",
    "DELETE_DATASET",
    "EXTEND_RESULT",
    "FINISH_JOB",
    "PUT_RESULT",
    "REAP_BLOCK_LEASE",
    "REAP_LEASE",
    "RECORD_BLOCK",
    "RECORD_PROGRESS",
    "RELEASE_LEASE",
    "REMOVE_OUTBOX_ENTRY",
    "RENEW_LEASE",
    "REQUEST_CANCEL",
    "START_RUN",
    "Scripts",
]


@dataclass(frozen=True)
class Scripts:
    """Every script, registered on one client (loaded into Redis on first use)."""

    claim_job: Script
    renew_lease: Script
    release_lease: Script
    reap_lease: Script
    reap_block_lease: Script
    finish_job: Script
    remove_outbox_entry: Script
    admit_active_job: Script
    request_cancel: Script
    record_progress: Script
    start_run: Script
    begin_block: Script
    record_block: Script
    begin_assembly: Script
    put_result: Script
    extend_result: Script
    add_dataset: Script
    delete_dataset: Script

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        """Register every script on `client`.

        Parameters
        ----------
        client
            The store's Redis client; the scripts run on its connection pool.

        Returns
        -------
        Scripts
            Callables ``script(keys=[...], args=[...])`` that run each script by its SHA
            (and load it first where Redis does not have it).
        """
        return cls(
            claim_job=client.register_script(CLAIM_JOB),
            renew_lease=client.register_script(RENEW_LEASE),
            release_lease=client.register_script(RELEASE_LEASE),
            reap_lease=client.register_script(REAP_LEASE),
            reap_block_lease=client.register_script(REAP_BLOCK_LEASE),
            finish_job=client.register_script(FINISH_JOB),
            remove_outbox_entry=client.register_script(REMOVE_OUTBOX_ENTRY),
            admit_active_job=client.register_script(ADMIT_ACTIVE_JOB),
            request_cancel=client.register_script(REQUEST_CANCEL),
            record_progress=client.register_script(RECORD_PROGRESS),
            start_run=client.register_script(START_RUN),
            begin_block=client.register_script(BEGIN_BLOCK),
            record_block=client.register_script(RECORD_BLOCK),
            begin_assembly=client.register_script(BEGIN_ASSEMBLY),
            put_result=client.register_script(PUT_RESULT),
            extend_result=client.register_script(EXTEND_RESULT),
            add_dataset=client.register_script(ADD_DATASET),
            delete_dataset=client.register_script(DELETE_DATASET),
        )
