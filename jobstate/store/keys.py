"""Every Redis key of nnkgeo: its name, its type and its lifetime, in one place.

All keys start with ``nnkgeo:`` (`PREFIX`); ``{t}`` is a tenant name, restricted by
`service.auth.TENANT_NAME_PATTERN`, and ids are checked against their patterns before
they are used in a key.

    t:{t}:dataset:{id}            string, DatasetRecord JSON; no TTL (lives until DELETE),
                                  so its size is capped instead (`service.datasets`)
    t:{t}:dataset:{id}:jobs       set of unfinished job ids reading the dataset (DELETE -> 409)
    t:{t}:datasets                zset dataset id -> unix ms of its record's created_at: the
                                  tenant's datasets newest first (GET /v1/datasets); no TTL,
                                  written and cleared with the records (a member whose record
                                  is gone is dropped when a listing meets it)
    t:{t}:datasets:backfilled     string "1" once records stored before that index existed
                                  were indexed (by the tenant's first listing); no TTL
    blob:{sha}:datasets           set of "{t}/{id}" dataset records holding blob {sha}
    blobs:graphs                  zset derived blob sha -> unix time its last reference expires
                                  (graphs, report-page maps, and the block files of
                                  sharded jobs)
    lock:blob:{sha}               lock held while a blob file is created or removed
    t:{t}:job:{id}                hash, the job record; TTL JOB_TTL_S
    t:{t}:job:{id}:run:{attempt}  hash, one attempt at a sharded job (`jobstate.store.runs`);
                                  TTL JOB_TTL_S
    t:{t}:job:{id}:lease          string "{attempt}:{claim token}": the running attempt's
                                  lease, renewed by its worker's heartbeat; TTL LEASE_S
    t:{t}:job:{id}:run:{attempt}:lease:{block}
                                  string "{attempt}:{token}": the lease of one block being
                                  solved, renewed by its worker's heartbeat; TTL LEASE_S
    leases                        zset "{t}/{id}" (a job) or "{t}/{id}/{attempt}/{block}"
                                  (a block) -> unix ms its lease expires: the reaper's index
                                  of running work (`jobstate.store.leases`)
    lock:reaper                   string, the reaper acting now (one across all workers),
                                  which also runs the outbox's dispatcher; TTL about LEASE_S
    outbox                        zset Celery task id -> unix ms its message is due: messages
                                  written with the record change that calls for them, removed
                                  once sent (`jobstate.store.outbox`); no TTL
    outbox:messages               hash Celery task id -> message JSON {"task", "args",
                                  "queue"}, the same entries; no TTL
    t:{t}:job:{id}:webhook        hash, delivery of the job's end event (`WebhookDelivery`);
                                  TTL JOB_TTL_S
    t:{t}:job:{id}:memory         hash {estimate:{attempt}, died:{attempt}, budget}: each
                                  attempt's memory estimate and how its process died
                                  (`AttemptMemory`); TTL JOB_TTL_S
    t:{t}:jobs                    zset of job ids, all scores 0 (ids sort by creation time)
    t:{t}:result:{id}             hash {report, etag, graphs, created_at, page}; TTL RESULT_TTL_S
    t:{t}:cache:{cache_key}       string, result id; TTL RESULT_TTL_S
    t:{t}:idempotency:{sha(key)}  string {"body", "job"} JSON; TTL IDEMPOTENCY_TTL_S
    t:{t}:stored_bytes            string, the sum of size_bytes over the tenant's dataset
                                  records (its NNKGEO_TENANT_MAX_STORED_BYTES quota); no TTL
    t:{t}:active_jobs             zset job id -> unix time admitted: the tenant's queued and
                                  running jobs, kept only under NNKGEO_TENANT_MAX_ACTIVE_JOBS;
                                  TTL JOB_TTL_S
    metrics:jobs_submitted        hash queue -> count, and "cache_hit" -> count
    metrics:jobs_finished         hash final status -> count
    metrics:job_duration:{status} hash bucket upper bound -> count, "sum", "count"

Celery's queues (lists named after each queue) share the database; they are the broker's,
not ours, and carry no prefix.
"""

from __future__ import annotations

import hashlib

PREFIX = "nnkgeo:"

GRAPH_BLOBS_KEY = f"{PREFIX}blobs:graphs"
JOBS_SUBMITTED_KEY = f"{PREFIX}metrics:jobs_submitted"
JOBS_FINISHED_KEY = f"{PREFIX}metrics:jobs_finished"
LEASES_KEY = f"{PREFIX}leases"
REAPER_LOCK_KEY = f"{PREFIX}lock:reaper"
OUTBOX_KEY = f"{PREFIX}outbox"
OUTBOX_MESSAGES_KEY = f"{PREFIX}outbox:messages"


def dataset_key(tenant: str, dataset_id: str) -> str:
    """The tenant's dataset record."""
    return f"{PREFIX}t:{tenant}:dataset:{dataset_id}"


def dataset_pins_key(tenant: str, dataset_id: str) -> str:
    """The unfinished jobs reading a dataset (its pins)."""
    return f"{PREFIX}t:{tenant}:dataset:{dataset_id}:jobs"


def dataset_index_key(tenant: str) -> str:
    """The tenant's dataset ids, scored by creation time (unix ms)."""
    return f"{PREFIX}t:{tenant}:datasets"


def dataset_index_backfilled_key(tenant: str) -> str:
    """Set once the tenant's records older than its dataset index were indexed."""
    return f"{PREFIX}t:{tenant}:datasets:backfilled"


def blob_datasets_key(sha256: str) -> str:
    """The dataset records, of any tenant, that hold a blob."""
    return f"{PREFIX}blob:{sha256}:datasets"


def blob_lock_key(sha256: str) -> str:
    """The lock held while a blob file is created or removed."""
    return f"{PREFIX}lock:blob:{sha256}"


def job_key(tenant: str, job_id: str) -> str:
    """The job record."""
    return f"{PREFIX}t:{tenant}:job:{job_id}"


def run_key(tenant: str, job_id: str, attempt: int) -> str:
    """One attempt at a sharded job."""
    return f"{PREFIX}t:{tenant}:job:{job_id}:run:{attempt}"


def lease_key(tenant: str, job_id: str) -> str:
    """The lease of a job's running attempt."""
    return f"{PREFIX}t:{tenant}:job:{job_id}:lease"


def lease_member(tenant: str, job_id: str) -> str:
    """A job's member in the lease index (tenant names and job ids hold no "/")."""
    return f"{tenant}/{job_id}"


def block_lease_key(tenant: str, job_id: str, attempt: int, block: str) -> str:
    """The lease of one block of a sharded attempt."""
    return f"{PREFIX}t:{tenant}:job:{job_id}:run:{attempt}:lease:{block}"


def block_lease_member(tenant: str, job_id: str, attempt: int, block: str) -> str:
    """A block's member in the lease index (block keys are "{set}:{block}")."""
    return f"{tenant}/{job_id}/{attempt}/{block}"


def attempt_memory_key(tenant: str, job_id: str) -> str:
    """The memory estimates and deaths of a job's attempts."""
    return f"{PREFIX}t:{tenant}:job:{job_id}:memory"


def webhook_key(tenant: str, job_id: str) -> str:
    """The delivery of a job's end event."""
    return f"{PREFIX}t:{tenant}:job:{job_id}:webhook"


def job_index_key(tenant: str) -> str:
    """The tenant's job ids, in creation order."""
    return f"{PREFIX}t:{tenant}:jobs"


def active_jobs_key(tenant: str) -> str:
    """The tenant's queued and running jobs, counted against its active-job limit."""
    return f"{PREFIX}t:{tenant}:active_jobs"


def stored_bytes_key(tenant: str) -> str:
    """The bytes of the tenant's dataset records, counted against its quota."""
    return f"{PREFIX}t:{tenant}:stored_bytes"


def result_key(tenant: str, result_id: str) -> str:
    """A result record."""
    return f"{PREFIX}t:{tenant}:result:{result_id}"


def result_cache_key(tenant: str, cache_key: str) -> str:
    """The result id the tenant's inputs `cache_key` last produced."""
    return f"{PREFIX}t:{tenant}:cache:{cache_key}"


def idempotency_key(tenant: str, key: str) -> str:
    """The request an Idempotency-Key is bound to."""
    # Hashed: the client chooses the key, and its text must not shape ours.
    return f"{PREFIX}t:{tenant}:idempotency:{hashlib.sha256(key.encode()).hexdigest()}"


def job_duration_key(status: str) -> str:
    """The duration histogram of jobs that ended with `status`."""
    return f"{PREFIX}metrics:job_duration:{status}"
