"""Every Redis key of nnkgeo: its layout, its lifetime, and the transitions made on it.

Layout (all keys start with ``nnkgeo:``; ``{t}`` is a tenant name, restricted by
`service.auth.TENANT_NAME_PATTERN`; ids are checked against their patterns before use):

    t:{t}:dataset:{id}            string, DatasetRecord JSON; no TTL (lives until DELETE),
                                  so its size is capped instead (`service.datasets`)
    t:{t}:dataset:{id}:jobs       set of unfinished job ids reading the dataset (DELETE -> 409)
    blob:{sha}:datasets           set of "{t}/{id}" dataset records holding blob {sha}
    blobs:graphs                  zset derived blob sha -> unix time its last reference expires
                                  (graphs, report-page maps, and the block files of
                                  sharded jobs)
    lock:blob:{sha}               lock held while a blob file is created or removed
    t:{t}:job:{id}                hash, the job record; TTL JOB_TTL_S
    t:{t}:job:{id}:run:{attempt}  hash, one attempt at a sharded job (below); TTL JOB_TTL_S
    t:{t}:job:{id}:webhook        hash, delivery of the job's end event (`WebhookDelivery`);
                                  TTL JOB_TTL_S
    t:{t}:job:{id}:memory         hash {estimate:{attempt}, died:{attempt}, budget}: each
                                  attempt's memory estimate and how its process died
                                  (`AttemptMemory`); TTL JOB_TTL_S
    t:{t}:jobs                    zset of job ids, all scores 0 (ids sort by creation time)
    t:{t}:result:{id}             hash {report, etag, graphs, created_at}; TTL RESULT_TTL_S
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

Job status changes happen in Lua scripts, so that each is atomic: a worker finishing a
job, a client cancelling it and a redelivered message claiming it cannot interleave.
A claim increments ``attempts``, and a worker may only report progress or finish with
the attempt number it claimed (a fencing token), so a stale run can never overwrite
the outcome of a newer one.

A sharded job (see `workers.sharding`) keeps one hash per attempt: ``plan`` (the
`ShardedRun` JSON), ``total`` and ``done`` (blocks planned and recorded),
``result:{block}`` (blob sha of the block's NNK solve, set once), ``deliveries:{block}``
and ``started_by:{block}`` (each start of a block task, and by which worker),
``deliveries:assemble`` and ``assembly_started``. Recording a block and counting it
happen in one script, so a block delivered twice is counted once, and exactly one
recording sees the run complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.lock import Lock
from redis.retry import Retry

from api_schemas import JobProgress, JobStatus, Problem
from jobstate.records import (
    DatasetRecord,
    GraphFiles,
    JobRecord,
    JobSpec,
    ResultRecord,
    RunProgress,
    ShardedRun,
    job_id_floor,
)
from jobstate.settings import Settings

PREFIX = "nnkgeo:"
JOB_DURATION_BUCKETS_S = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
FINAL_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)
IDEMPOTENCY_IN_FLIGHT_TTL_S = 60
ACTIVE_JOB_ADMISSION_GRACE_S = 60

_LIST_BATCH = 64

JobFinishedHook = Callable[[JobRecord, JobStatus], None]
"""Called once per job that reaches a final status, after the transition is stored."""

logger = logging.getLogger(__name__)

_CLAIM_JOB = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', 0} end
if status ~= 'queued' and status ~= 'running' then return {'finished', 0} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(ARGV[2]) then return {'exhausted', attempts} end
attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'progress_stage', 'starting',
           'progress_fraction', '0')
if redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[1])
end
return {'claimed', attempts}
"""

# KEYS: job, finished counter, duration histogram, the tenant's active jobs, then the
#       job's dataset pin sets.
# ARGV: status, finished_at, attempt ('' = any), allowed current statuses (comma list),
#       error JSON ('' = none), result id ('' = none), duration bucket ('' = none),
#       duration seconds, job id, progress stage.
_FINISH_JOB = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local allowed = false
for candidate in string.gmatch(ARGV[4], '[^,]+') do
  if candidate == status then allowed = true end
end
if not allowed then return 0 end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2],
           'progress_stage', ARGV[10])
if ARGV[1] == 'succeeded' then redis.call('HSET', KEYS[1], 'progress_fraction', '1') end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'result_id', ARGV[6]) end
redis.call('HDEL', KEYS[1], 'cancel_requested')
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if ARGV[7] ~= '' then
  redis.call('HINCRBY', KEYS[3], ARGV[7], 1)
  redis.call('HINCRBYFLOAT', KEYS[3], 'sum', ARGV[8])
  redis.call('HINCRBY', KEYS[3], 'count', 1)
end
redis.call('ZREM', KEYS[4], ARGV[9])
for i = 5, #KEYS do redis.call('SREM', KEYS[i], ARGV[9]) end
return 1
"""

# KEYS: the tenant's active jobs. ARGV: job id, most active jobs, unix time, TTL.
# Returns 1 (admitted) or 0 (the tenant has that many queued or running jobs already).
_ADMIT_ACTIVE_JOB = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

_REQUEST_CANCEL = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
return 1
"""

# Returns -1 when the caller no longer owns the run (finished, or claimed again),
# else 1 when a cancel was requested and 0 otherwise.
_RECORD_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[3] then
  return -1
end
redis.call('HSET', KEYS[1], 'progress_stage', ARGV[1], 'progress_fraction', ARGV[2])
return redis.call('HEXISTS', KEYS[1], 'cancel_requested')
"""

# KEYS: job, run. ARGV: attempt, plan JSON, total blocks, run TTL, progress stage.
# Returns -1 (no longer this attempt's), 1 (cancel requested) or 0 (run recorded).
_START_RUN = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then
  return -1
end
if redis.call('HEXISTS', KEYS[1], 'cancel_requested') == 1 then return 1 end
redis.call('HSETNX', KEYS[2], 'plan', ARGV[2])
redis.call('HSETNX', KEYS[2], 'total', ARGV[3])
redis.call('HSETNX', KEYS[2], 'done', 0)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[1], 'progress_stage', ARGV[5], 'progress_fraction', '0')
return 0
"""

# KEYS: job, run. ARGV: attempt, block key, worker name.
# Returns {outcome, deliveries of the block, whether the run awaits its assembly}.
_BEGIN_BLOCK = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then
  return {'stale', 0, 0}
end
if redis.call('HEXISTS', KEYS[1], 'cancel_requested') == 1 then return {'canceled', 0, 0} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'missing', 0, 0} end
if redis.call('HEXISTS', KEYS[2], 'result:' .. ARGV[2]) == 1 then
  local awaiting = redis.call('HGET', KEYS[2], 'done') == redis.call('HGET', KEYS[2], 'total')
                   and redis.call('HEXISTS', KEYS[2], 'assembly_started') == 0
  return {'recorded', 0, awaiting and 1 or 0}
end
local deliveries = redis.call('HINCRBY', KEYS[2], 'deliveries:' .. ARGV[2], 1)
redis.call('HSET', KEYS[2], 'started_by:' .. ARGV[2], ARGV[3])
return {'start', deliveries, 0}
"""

# KEYS: job, run. ARGV: attempt, block key, blob sha, share of progress the blocks span.
# Returns {1 if this call recorded the block else 0 (-1: no longer this attempt's), done,
# total}.
_RECORD_BLOCK = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1]
   or redis.call('EXISTS', KEYS[2]) == 0 then
  return {-1, 0, 0}
end
local recorded = redis.call('HSETNX', KEYS[2], 'result:' .. ARGV[2], ARGV[3])
local done = tonumber(redis.call('HGET', KEYS[2], 'done'))
local total = tonumber(redis.call('HGET', KEYS[2], 'total'))
if recorded == 1 then
  done = redis.call('HINCRBY', KEYS[2], 'done', 1)
  redis.call('HSET', KEYS[1], 'progress_stage', 'blocks', 'progress_fraction',
             string.format('%.4f', done / total * tonumber(ARGV[4])))
end
return {recorded, done, total}
"""

# KEYS: job, run. ARGV: attempt. Returns {outcome, deliveries of the assembly}.
_BEGIN_ASSEMBLY = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then
  return {'stale', 0}
end
if redis.call('HEXISTS', KEYS[1], 'cancel_requested') == 1 then return {'canceled', 0} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'missing', 0} end
if redis.call('HGET', KEYS[2], 'done') ~= redis.call('HGET', KEYS[2], 'total') then
  return {'incomplete', 0}
end
redis.call('HSET', KEYS[2], 'assembly_started', '1')
return {'start', redis.call('HINCRBY', KEYS[2], 'deliveries:assemble', 1)}
"""

# KEYS: result. ARGV: report, etag, graphs JSON, created_at, TTL. 0 if a result exists.
_PUT_RESULT_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'report', ARGV[1], 'etag', ARGV[2], 'graphs', ARGV[3],
           'created_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: dataset record, its blob's reference set, the tenant's stored bytes.
# ARGV: record JSON, reference member, size in bytes, most stored bytes (0 = no limit).
# Returns {1, record} (stored), {0, the record stored before} or {-1, bytes stored now}
# (over the quota). A record the tenant has already costs nothing.
_ADD_DATASET = """
local existing = redis.call('GET', KEYS[1])
if existing then
  redis.call('SADD', KEYS[2], ARGV[2])
  return {0, existing}
end
local stored = tonumber(redis.call('GET', KEYS[3]) or '0')
local limit = tonumber(ARGV[4])
if limit > 0 and stored + tonumber(ARGV[3]) > limit then return {-1, stored} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('INCRBY', KEYS[3], ARGV[3])
return {1, ARGV[1]}
"""

# KEYS: dataset record, its pin set, its blob's reference set, the tenant's stored bytes.
# ARGV: reference member.
# Returns -1 (no such dataset), -2 (pinned by unfinished jobs) or the blob's remaining refs.
_DELETE_DATASET = """
local record = redis.call('GET', KEYS[1])
if not record then return -1 end
if redis.call('SCARD', KEYS[2]) > 0 then return -2 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
-- Records stored before the counter existed were never counted: never go below zero.
if redis.call('DECRBY', KEYS[4], cjson.decode(record)['size_bytes']) < 0 then
  redis.call('SET', KEYS[4], 0)
end
return redis.call('SCARD', KEYS[3])
"""


class StoredBytesQuotaError(Exception):
    """Storing a dataset record would take its tenant past its stored-bytes quota."""

    def __init__(self, *, stored_bytes: int, size_bytes: int, limit: int) -> None:
        super().__init__(
            f"{stored_bytes} bytes stored, {size_bytes} more would pass the limit of {limit}"
        )
        self.stored_bytes = stored_bytes
        self.size_bytes = size_bytes
        self.limit = limit


class ClaimOutcome(StrEnum):
    claimed = "claimed"
    missing = "missing"
    finished = "finished"
    exhausted = "exhausted"


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    attempt: int
    job: JobRecord | None


@dataclass(frozen=True)
class AttemptMemory:
    """What one attempt of a job was estimated to need, and how its process died, if so."""

    estimate_bytes: int | None
    budget_bytes: int | None
    died_of: str | None


class WebhookState(StrEnum):
    pending = "pending"
    delivered = "delivered"
    given_up = "given_up"


@dataclass(frozen=True)
class WebhookDelivery:
    """Where the delivery of a job's end event stands (its POSTs so far)."""

    event_id: str
    state: WebhookState
    attempts: int
    last_outcome: str | None
    updated_at: datetime | None


class CancelOutcome(StrEnum):
    canceled = "canceled"
    requested = "requested"
    already_finished = "already_finished"
    missing = "missing"


class ProgressVerdict(StrEnum):
    carry_on = "carry_on"
    cancel_requested = "cancel_requested"
    superseded = "superseded"


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


@dataclass(frozen=True)
class BlockStart:
    outcome: BlockStartOutcome
    deliveries: int = 0
    run_awaits_assembly: bool = False


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
    canceled = "canceled"
    stale = "stale"
    missing = "missing"
    incomplete = "incomplete"


@dataclass(frozen=True)
class AssemblyStart:
    outcome: AssemblyStartOutcome
    deliveries: int = 0


@dataclass(frozen=True)
class DatasetDeletion:
    deleted: bool
    missing: bool = False
    pinned_by: tuple[str, ...] = ()
    blob_unreferenced: bool = False


@dataclass(frozen=True)
class IdempotentRequest:
    body_sha256: str
    job_id: str


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
    """Label of the histogram bucket a job duration falls in (buckets are not cumulative)."""
    for upper in JOB_DURATION_BUCKETS_S:
        if seconds <= upper:
            return str(upper)
    return "+Inf"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


class Store:
    """Tenant-scoped access to every record nnkgeo keeps in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        result_ttl_s: int,
        job_ttl_s: int,
        idempotency_ttl_s: int,
        on_job_finished: JobFinishedHook | None = None,
    ) -> None:
        self._redis = client
        self._on_job_finished = on_job_finished
        self.result_ttl_s = result_ttl_s
        self.job_ttl_s = job_ttl_s
        self.idempotency_ttl_s = idempotency_ttl_s
        self._claim_job = client.register_script(_CLAIM_JOB)
        self._finish_job = client.register_script(_FINISH_JOB)
        self._request_cancel = client.register_script(_REQUEST_CANCEL)
        self._record_progress = client.register_script(_RECORD_PROGRESS)
        self._add_dataset = client.register_script(_ADD_DATASET)
        self._delete_dataset = client.register_script(_DELETE_DATASET)
        self._admit_active_job = client.register_script(_ADMIT_ACTIVE_JOB)
        self._start_run = client.register_script(_START_RUN)
        self._begin_block = client.register_script(_BEGIN_BLOCK)
        self._record_block = client.register_script(_RECORD_BLOCK)
        self._begin_assembly = client.register_script(_BEGIN_ASSEMBLY)
        self._put_result_once = client.register_script(_PUT_RESULT_ONCE)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, on_job_finished: JobFinishedHook | None = None
    ) -> Store:
        # A hung Redis (paused, swapping, partitioned) must cost a request one timeout,
        # not minutes: redis-py's default retries timeouts three times with backoff.
        # A connection error (Redis restarted, a pooled connection reset) fails at once,
        # so it is retried once, immediately, on a fresh connection; a timeout is not.
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        return cls(
            client,
            result_ttl_s=settings.result_ttl_s,
            job_ttl_s=settings.job_ttl_s,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            on_job_finished=on_job_finished,
        )

    def ping(self) -> bool:
        return bool(self._redis.ping())

    def close(self) -> None:
        self._redis.close()

    # Keys -----------------------------------------------------------------------------

    @staticmethod
    def _dataset_key(tenant: str, dataset_id: str) -> str:
        return f"{PREFIX}t:{tenant}:dataset:{dataset_id}"

    @staticmethod
    def _dataset_pins_key(tenant: str, dataset_id: str) -> str:
        return f"{PREFIX}t:{tenant}:dataset:{dataset_id}:jobs"

    @staticmethod
    def _blob_datasets_key(sha256: str) -> str:
        return f"{PREFIX}blob:{sha256}:datasets"

    @staticmethod
    def _blob_lock_key(sha256: str) -> str:
        return f"{PREFIX}lock:blob:{sha256}"

    _GRAPH_BLOBS_KEY = f"{PREFIX}blobs:graphs"

    @staticmethod
    def _job_key(tenant: str, job_id: str) -> str:
        return f"{PREFIX}t:{tenant}:job:{job_id}"

    @staticmethod
    def _run_key(tenant: str, job_id: str, attempt: int) -> str:
        return f"{PREFIX}t:{tenant}:job:{job_id}:run:{attempt}"

    @staticmethod
    def _attempt_memory_key(tenant: str, job_id: str) -> str:
        return f"{PREFIX}t:{tenant}:job:{job_id}:memory"

    @staticmethod
    def _webhook_key(tenant: str, job_id: str) -> str:
        return f"{PREFIX}t:{tenant}:job:{job_id}:webhook"

    @staticmethod
    def _stored_bytes_key(tenant: str) -> str:
        return f"{PREFIX}t:{tenant}:stored_bytes"

    @staticmethod
    def _active_jobs_key(tenant: str) -> str:
        return f"{PREFIX}t:{tenant}:active_jobs"

    @staticmethod
    def _job_index_key(tenant: str) -> str:
        return f"{PREFIX}t:{tenant}:jobs"

    @staticmethod
    def _result_key(tenant: str, result_id: str) -> str:
        return f"{PREFIX}t:{tenant}:result:{result_id}"

    @staticmethod
    def _cache_key(tenant: str, cache_key: str) -> str:
        return f"{PREFIX}t:{tenant}:cache:{cache_key}"

    @staticmethod
    def _idempotency_key(tenant: str, key: str) -> str:
        # Hashed: the client chooses the key, and its text must not shape ours.
        return f"{PREFIX}t:{tenant}:idempotency:{hashlib.sha256(key.encode()).hexdigest()}"

    _SUBMITTED_KEY = f"{PREFIX}metrics:jobs_submitted"
    _FINISHED_KEY = f"{PREFIX}metrics:jobs_finished"

    @staticmethod
    def _duration_key(status: str) -> str:
        return f"{PREFIX}metrics:job_duration:{status}"

    # Datasets and blobs -----------------------------------------------------------------

    def get_dataset(self, tenant: str, dataset_id: str) -> DatasetRecord | None:
        raw = self._redis.get(self._dataset_key(tenant, dataset_id))
        return DatasetRecord.model_validate_json(raw) if raw is not None else None

    def add_dataset(
        self, record: DatasetRecord, *, max_stored_bytes: int = 0
    ) -> tuple[DatasetRecord, bool]:
        """Store a dataset record unless the tenant has it already, and count its bytes.

        Returns the stored record and whether it is new. Call under
        `blob_lock(record.sha256)`, once the blob file is in place.

        Raises
        ------
        StoredBytesQuotaError
            When `max_stored_bytes` is set and a new record would take the tenant's
            stored bytes past it (checked and counted in one step, so concurrent uploads
            cannot both slip under it). A record the tenant already has costs nothing.
        """
        outcome, value = self._add_dataset(
            keys=[
                self._dataset_key(record.tenant, record.id),
                self._blob_datasets_key(record.sha256),
                self._stored_bytes_key(record.tenant),
            ],
            args=[
                record.model_dump_json(),
                f"{record.tenant}/{record.id}",
                record.size_bytes,
                max_stored_bytes,
            ],
        )
        if int(outcome) < 0:
            raise StoredBytesQuotaError(
                stored_bytes=int(value), size_bytes=record.size_bytes, limit=max_stored_bytes
            )
        return DatasetRecord.model_validate_json(value), int(outcome) == 1

    def stored_bytes(self, tenant: str) -> int:
        """Bytes of the tenant's dataset records (their files' sizes, summed)."""
        return int(self._redis.get(self._stored_bytes_key(tenant)) or 0)

    def delete_dataset(self, tenant: str, dataset_id: str, sha256: str) -> DatasetDeletion:
        keys = [
            self._dataset_key(tenant, dataset_id),
            self._dataset_pins_key(tenant, dataset_id),
            self._blob_datasets_key(sha256),
            self._stored_bytes_key(tenant),
        ]
        remaining = int(self._delete_dataset(keys=keys, args=[f"{tenant}/{dataset_id}"]))
        if remaining == -1:
            return DatasetDeletion(deleted=False, missing=True)
        if remaining == -2:
            pinned = sorted(
                _text(member) or ""
                for member in self._redis.smembers(self._dataset_pins_key(tenant, dataset_id))
            )
            return DatasetDeletion(deleted=False, pinned_by=tuple(pinned))
        return DatasetDeletion(deleted=True, blob_unreferenced=remaining == 0)

    def drop_stale_pins(self, tenant: str, dataset_id: str, job_ids: Iterable[str]) -> None:
        members = list(job_ids)
        if members:
            self._redis.srem(self._dataset_pins_key(tenant, dataset_id), *members)

    def pin_datasets(self, tenant: str, job_id: str, dataset_ids: Sequence[str]) -> list[str]:
        """Mark the datasets as read by an unfinished job; return those that no longer exist.

        The pin is written before the existence check, and DELETE checks pins before it
        removes a record (atomically): whichever comes second sees the other.
        """
        with self._redis.pipeline() as pipe:
            for dataset_id in dataset_ids:
                pipe.sadd(self._dataset_pins_key(tenant, dataset_id), job_id)
            for dataset_id in dataset_ids:
                pipe.exists(self._dataset_key(tenant, dataset_id))
            replies = pipe.execute()
        exists = replies[len(dataset_ids) :]
        missing = [d for d, found in zip(dataset_ids, exists, strict=True) if not found]
        if missing:
            self.unpin_datasets(tenant, job_id, dataset_ids)
        return missing

    def unpin_datasets(self, tenant: str, job_id: str, dataset_ids: Sequence[str]) -> None:
        with self._redis.pipeline() as pipe:
            for dataset_id in dataset_ids:
                pipe.srem(self._dataset_pins_key(tenant, dataset_id), job_id)
            pipe.execute()

    def blob_lock(self, sha256: str) -> Lock:
        """Serialises creating and removing one blob file across processes and hosts."""
        return self._redis.lock(self._blob_lock_key(sha256), timeout=120, blocking_timeout=60)

    def blob_has_datasets(self, sha256: str) -> bool:
        return bool(self._redis.scard(self._blob_datasets_key(sha256)))

    def register_graph_blobs(self, sha256s: Iterable[str]) -> None:
        """Keep graph blobs at least as long as the results that name them."""
        expires_at = time.time() + self.result_ttl_s
        mapping = {sha: expires_at for sha in sha256s}
        if mapping:
            # GT only ever extends a lifetime, and still adds blobs not yet listed.
            self._redis.zadd(self._GRAPH_BLOBS_KEY, mapping, gt=True)

    def graph_blob_is_live(self, sha256: str) -> bool:
        expires_at = self._redis.zscore(self._GRAPH_BLOBS_KEY, sha256)
        return expires_at is not None and expires_at > time.time()

    def expired_graph_blobs(self, *, limit: int = 100) -> list[str]:
        expired = self._redis.zrangebyscore(
            self._GRAPH_BLOBS_KEY, "-inf", time.time(), start=0, num=limit
        )
        return [cast(str, _text(sha)) for sha in expired]

    def forget_graph_blob(self, sha256: str) -> None:
        self._redis.zrem(self._GRAPH_BLOBS_KEY, sha256)

    # Jobs -----------------------------------------------------------------------------

    def create_job(self, job: JobRecord) -> None:
        """Store a new job record (queued, or already succeeded from the cache)."""
        now_ms = time.time_ns() // 1_000_000
        index = self._job_index_key(job.tenant)
        with self._redis.pipeline() as pipe:
            pipe.hset(self._job_key(job.tenant, job.id), mapping=self._job_to_hash(job))
            pipe.expire(self._job_key(job.tenant, job.id), self.job_ttl_s)
            pipe.zadd(index, {job.id: 0})
            # Entries of expired job records: their ids sort before the TTL's horizon.
            horizon = job_id_floor(created_before_ms=now_ms - self.job_ttl_s * 1000)
            pipe.zremrangebylex(index, "-", f"({horizon}")
            pipe.expire(index, self.job_ttl_s)
            if job.cached:
                pipe.hincrby(self._SUBMITTED_KEY, "cache_hit", 1)
            elif job.queue:
                pipe.hincrby(self._SUBMITTED_KEY, job.queue, 1)
            if job.status.finished:
                pipe.hincrby(self._FINISHED_KEY, job.status.value, 1)
            pipe.execute()
        if job.status.finished:
            self._announce_finished(job, job.status)

    def get_job(self, tenant: str, job_id: str) -> JobRecord | None:
        fields = self._redis.hgetall(self._job_key(tenant, job_id))
        return self._job_from_hash(fields) if fields else None

    def list_jobs(
        self, tenant: str, *, limit: int, before: str | None
    ) -> tuple[list[JobRecord], str | None]:
        """The tenant's jobs, newest first, starting after the job id `before`."""
        index = self._job_index_key(tenant)
        upper = f"({before}" if before else "+"
        collected: list[JobRecord] = []
        expired: list[str] = []
        while len(collected) <= limit:
            ids = [
                cast(str, _text(i))
                for i in self._redis.zrevrangebylex(index, upper, "-", start=0, num=_LIST_BATCH)
            ]
            if not ids:
                break
            with self._redis.pipeline() as pipe:
                for job_id in ids:
                    pipe.hgetall(self._job_key(tenant, job_id))
                records = pipe.execute()
            for job_id, fields in zip(ids, records, strict=True):
                if fields:
                    collected.append(self._job_from_hash(fields))
                else:
                    expired.append(job_id)
            upper = f"({ids[-1]}"
        if expired:
            self._redis.zrem(index, *expired)
        page = collected[:limit]
        next_cursor = page[-1].id if len(collected) > limit and page else None
        return page, next_cursor

    def claim_job(self, tenant: str, job_id: str, *, now: datetime, max_attempts: int) -> Claim:
        """Start (or, after a worker died, restart) a queued or running job."""
        outcome, attempt = self._claim_job(
            keys=[self._job_key(tenant, job_id)], args=[now.isoformat(), max_attempts]
        )
        claim_outcome = ClaimOutcome(cast(str, _text(outcome)))
        job = self.get_job(tenant, job_id) if claim_outcome is not ClaimOutcome.missing else None
        return Claim(outcome=claim_outcome, attempt=int(attempt), job=job)

    def record_progress(
        self, tenant: str, job_id: str, *, attempt: int, stage: str, fraction: float
    ) -> ProgressVerdict:
        fraction = min(1.0, max(0.0, fraction)) if math.isfinite(fraction) else 0.0
        verdict = int(
            self._record_progress(
                keys=[self._job_key(tenant, job_id)], args=[stage[:64], f"{fraction:.4f}", attempt]
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

        Counts the job in the metrics and releases its dataset pins, in the same step.
        """
        duration_s = (now - job.started_at).total_seconds() if job.started_at else None
        keys = [
            self._job_key(job.tenant, job.id),
            self._FINISHED_KEY,
            self._duration_key(status.value),
            self._active_jobs_key(job.tenant),
            *(self._dataset_pins_key(job.tenant, d) for d in job.spec.dataset_ids()),
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
        ]
        ended = bool(self._finish_job(keys=keys, args=args))
        if ended:
            self._announce_finished(job, status)
        return ended

    def admit_active_job(self, tenant: str, job_id: str, *, limit: int) -> bool:
        """Count a job about to be queued against the tenant's `limit` of active jobs.

        False when the tenant has `limit` queued or running jobs already (0 = no limit,
        nothing counted). The job leaves the count when it finishes (`finish_job`), or
        with `release_active_job` when it is not queued after all.
        """
        if limit <= 0:
            return True
        key = self._active_jobs_key(tenant)
        args = [job_id, limit, time.time(), self.job_ttl_s]
        if self._admit_active_job(keys=[key], args=args):
            return True
        # Entries a finish never removed (a record that expired unfinished, a submission
        # that died between admission and queueing) must not hold the quota forever.
        if self._prune_active_jobs(tenant):
            return bool(self._admit_active_job(keys=[key], args=args))
        return False

    def release_active_job(self, tenant: str, job_id: str) -> None:
        self._redis.zrem(self._active_jobs_key(tenant), job_id)

    def _prune_active_jobs(self, tenant: str) -> int:
        """Drop counted jobs that finished, or whose record never appeared or expired.

        Only entries admitted more than ACTIVE_JOB_ADMISSION_GRACE_S ago are looked at:
        a younger one may belong to a submission that has not stored its record yet.
        """
        key = self._active_jobs_key(tenant)
        horizon = time.time() - ACTIVE_JOB_ADMISSION_GRACE_S
        candidates = [cast(str, _text(m)) for m in self._redis.zrangebyscore(key, "-inf", horizon)]
        if not candidates:
            return 0
        with self._redis.pipeline() as pipe:
            for job_id in candidates:
                pipe.hget(self._job_key(tenant, job_id), "status")
            statuses = [_text(status) for status in pipe.execute()]
        stale = [
            job_id
            for job_id, status in zip(candidates, statuses, strict=True)
            if status is None or JobStatus(status).finished
        ]
        if stale:
            self._redis.zrem(key, *stale)
        return len(stale)

    def _announce_finished(self, job: JobRecord, status: JobStatus) -> None:
        # Every final transition passes here (worker, cancel, cache hit, failed enqueue),
        # and only the caller whose script made the transition gets here: so each job's
        # end is announced once. The transition is already stored: a failing hook (the
        # broker down) must not fail or undo it, so it is logged, not raised.
        if self._on_job_finished is None:
            return
        try:
            self._on_job_finished(job, status)
        except Exception:
            logger.exception("job %s: announcing its end (%s) failed", job.id, status.value)

    def request_cancel(self, job: JobRecord, *, now: datetime) -> CancelOutcome:
        if self.finish_job(
            job, status=JobStatus.canceled, now=now, from_statuses=(JobStatus.queued,)
        ):
            return CancelOutcome.canceled
        if self._request_cancel(keys=[self._job_key(job.tenant, job.id)]):
            return CancelOutcome.requested
        current = self.get_job(job.tenant, job.id)
        if current is None:
            return CancelOutcome.missing
        if current.status is JobStatus.canceled:
            return CancelOutcome.canceled
        return CancelOutcome.already_finished

    def job_is_unfinished(self, tenant: str, job_id: str) -> bool:
        status = _text(self._redis.hget(self._job_key(tenant, job_id), "status"))
        return status is not None and not JobStatus(status).finished

    def _job_to_hash(self, job: JobRecord) -> dict[str, str]:
        fields: dict[str, str | None] = {
            "id": job.id,
            "tenant": job.tenant,
            "status": job.status.value,
            "spec": job.spec.model_dump_json(),
            "queue": job.queue,
            "cache_key": job.cache_key,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            "progress_stage": job.progress.stage,
            "progress_fraction": f"{job.progress.fraction:.4f}",
            "cached": "1" if job.cached else "0",
            "error": job.error.model_dump_json(exclude_none=True) if job.error else None,
            "result_id": job.result_id,
            "attempts": str(job.attempts),
            "cancel_requested": "1" if job.cancel_requested else None,
            "callback_url": job.callback_url,
        }
        return {name: value for name, value in fields.items() if value is not None}

    @staticmethod
    def _job_from_hash(raw: dict[Any, Any]) -> JobRecord:
        fields = {cast(str, _text(k)): cast(str, _text(v)) for k, v in raw.items()}
        error = fields.get("error")
        return JobRecord(
            id=fields["id"],
            tenant=fields["tenant"],
            status=JobStatus(fields["status"]),
            spec=JobSpec.model_validate_json(fields["spec"]),
            queue=fields.get("queue"),
            cache_key=fields["cache_key"],
            created_at=datetime.fromisoformat(fields["created_at"]),
            started_at=_parse_time(fields.get("started_at")),
            finished_at=_parse_time(fields.get("finished_at")),
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

    # Attempts' memory -----------------------------------------------------------------

    def record_attempt_memory(
        self, tenant: str, job_id: str, *, attempt: int, estimate_bytes: int, budget_bytes: int
    ) -> None:
        """Note, before an attempt allocates, what it was estimated to need."""
        key = self._attempt_memory_key(tenant, job_id)
        with self._redis.pipeline() as pipe:
            pipe.hset(key, mapping={f"estimate:{attempt}": estimate_bytes, "budget": budget_bytes})
            pipe.expire(key, self.job_ttl_s)
            pipe.execute()

    def record_attempt_death(self, tenant: str, job_id: str, *, attempt: int, cause: str) -> None:
        """Note how an attempt's process died (recorded by the worker's main process)."""
        key = self._attempt_memory_key(tenant, job_id)
        with self._redis.pipeline() as pipe:
            pipe.hset(key, f"died:{attempt}", cause[:200])
            pipe.expire(key, self.job_ttl_s)
            pipe.execute()

    def attempt_memory(self, tenant: str, job_id: str, *, attempt: int) -> AttemptMemory:
        fields = {
            _text(name): _text(value)
            for name, value in self._redis.hgetall(self._attempt_memory_key(tenant, job_id)).items()
        }
        estimate = fields.get(f"estimate:{attempt}")
        budget = fields.get("budget")
        return AttemptMemory(
            estimate_bytes=int(estimate) if estimate else None,
            budget_bytes=int(budget) if budget else None,
            died_of=fields.get(f"died:{attempt}"),
        )

    # Webhook deliveries ---------------------------------------------------------------

    def get_webhook_delivery(self, tenant: str, job_id: str) -> WebhookDelivery | None:
        raw = self._redis.hgetall(self._webhook_key(tenant, job_id))
        if not raw:
            return None
        fields = {cast(str, _text(k)): cast(str, _text(v)) for k, v in raw.items()}
        return WebhookDelivery(
            event_id=fields["event_id"],
            state=WebhookState(fields["state"]),
            attempts=int(fields.get("attempts", "0")),
            last_outcome=fields.get("last_outcome"),
            updated_at=_parse_time(fields.get("updated_at")),
        )

    def record_webhook_attempt(
        self,
        tenant: str,
        job_id: str,
        *,
        event_id: str,
        outcome: str,
        state: WebhookState,
        now: datetime,
    ) -> int:
        """Count one POST of the job's event and its outcome; returns the POSTs so far."""
        key = self._webhook_key(tenant, job_id)
        with self._redis.pipeline() as pipe:
            pipe.hincrby(key, "attempts", 1)
            pipe.hset(
                key,
                mapping={
                    "event_id": event_id,
                    "state": state.value,
                    "last_outcome": outcome,
                    "updated_at": now.isoformat(),
                },
            )
            pipe.expire(key, self.job_ttl_s)
            attempts, *_ = pipe.execute()
        return int(attempts)

    def give_up_webhook(
        self, tenant: str, job_id: str, *, event_id: str, reason: str, now: datetime
    ) -> None:
        """Mark the event as never to be sent (again), without counting a POST."""
        key = self._webhook_key(tenant, job_id)
        with self._redis.pipeline() as pipe:
            pipe.hsetnx(key, "attempts", 0)
            pipe.hset(
                key,
                mapping={
                    "event_id": event_id,
                    "state": WebhookState.given_up.value,
                    "last_outcome": reason,
                    "updated_at": now.isoformat(),
                },
            )
            pipe.expire(key, self.job_ttl_s)
            pipe.execute()

    # Sharded runs ---------------------------------------------------------------------

    def start_run(self, tenant: str, job_id: str, plan: ShardedRun) -> ProgressVerdict:
        """Record the plan of a sharded attempt, unless the job moved on or was canceled."""
        verdict = int(
            self._start_run(
                keys=[self._job_key(tenant, job_id), self._run_key(tenant, job_id, plan.attempt)],
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
        raw = self._redis.hgetall(self._run_key(tenant, job_id, attempt))
        if not raw:
            return None
        fields = {cast(str, _text(k)): cast(str, _text(v)) for k, v in raw.items()}
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
            self._job_key(tenant, job_id), ["status", "attempts", "cancel_requested"]
        )
        if _text(status) != JobStatus.running.value or _text(attempts) != str(attempt):
            return ProgressVerdict.superseded
        return ProgressVerdict.cancel_requested if cancel else ProgressVerdict.carry_on

    def begin_block(
        self, tenant: str, job_id: str, *, attempt: int, block: str, worker: str
    ) -> BlockStart:
        """Decide whether a delivered block task solves its block; count the start if so."""
        outcome, deliveries, awaiting = self._begin_block(
            keys=[self._job_key(tenant, job_id), self._run_key(tenant, job_id, attempt)],
            args=[attempt, block, worker],
        )
        return BlockStart(
            outcome=BlockStartOutcome(cast(str, _text(outcome))),
            deliveries=int(deliveries),
            run_awaits_assembly=bool(awaiting),
        )

    def record_block(
        self, tenant: str, job_id: str, *, attempt: int, block: str, sha256: str, share: float
    ) -> BlockRecording:
        """Record a block's result once, and count it in the job's progress.

        The first recording of a block wins; the job's progress becomes
        ``share * done / total`` (stage "blocks").
        """
        recorded, done, total = self._record_block(
            keys=[self._job_key(tenant, job_id), self._run_key(tenant, job_id, attempt)],
            args=[attempt, block, sha256, f"{share:.4f}"],
        )
        return BlockRecording(
            recorded=int(recorded) == 1,
            superseded=int(recorded) < 0,
            done=int(done),
            total=int(total),
        )

    def begin_assembly(self, tenant: str, job_id: str, *, attempt: int) -> AssemblyStart:
        outcome, deliveries = self._begin_assembly(
            keys=[self._job_key(tenant, job_id), self._run_key(tenant, job_id, attempt)],
            args=[attempt],
        )
        return AssemblyStart(
            outcome=AssemblyStartOutcome(cast(str, _text(outcome))), deliveries=int(deliveries)
        )

    # Results and the cache ------------------------------------------------------------

    def put_result(
        self, tenant: str, result: ResultRecord, *, only_if_absent: bool = False
    ) -> bool:
        """Store a result; with `only_if_absent`, keep the one stored first (False then).

        Two copies of one job's last step may race (a redelivered message); the first
        result stays, so its report and ETag never change once a client has seen them.
        """
        key = self._result_key(tenant, result.id)
        graphs = {name: files.model_dump() for name, files in result.graphs.items()}
        graphs_json = json.dumps(graphs, separators=(",", ":"))
        if only_if_absent:
            stored = self._put_result_once(
                keys=[key],
                args=[
                    result.report_json,
                    result.etag,
                    graphs_json,
                    result.created_at.isoformat(),
                    self.result_ttl_s,
                ],
            )
            return bool(stored)
        with self._redis.pipeline() as pipe:
            pipe.hset(
                key,
                mapping={
                    "report": result.report_json,
                    "etag": result.etag,
                    "graphs": graphs_json,
                    "created_at": result.created_at.isoformat(),
                },
            )
            pipe.expire(key, self.result_ttl_s)
            pipe.execute()
        return True

    def get_result(self, tenant: str, result_id: str) -> ResultRecord | None:
        raw = self._redis.hgetall(self._result_key(tenant, result_id))
        if not raw:
            return None
        fields = {cast(str, _text(k)): cast(str, _text(v)) for k, v in raw.items()}
        return ResultRecord(
            id=result_id,
            report_json=fields["report"],
            etag=fields["etag"],
            graphs={
                name: GraphFiles.model_validate(files)
                for name, files in json.loads(fields["graphs"]).items()
            },
            created_at=datetime.fromisoformat(fields["created_at"]),
        )

    def remember_result(self, tenant: str, cache_key: str, result_id: str) -> None:
        self._redis.set(self._cache_key(tenant, cache_key), result_id, ex=self.result_ttl_s)

    def cached_result(self, tenant: str, cache_key: str) -> ResultRecord | None:
        """The tenant's live result for these inputs, its lifetime renewed; else None."""
        result_id = _text(self._redis.get(self._cache_key(tenant, cache_key)))
        if result_id is None:
            return None
        result = self.get_result(tenant, result_id)
        if result is None:
            return None
        with self._redis.pipeline() as pipe:
            pipe.expire(self._cache_key(tenant, cache_key), self.result_ttl_s)
            pipe.expire(self._result_key(tenant, result_id), self.result_ttl_s)
            pipe.execute()
        self.register_graph_blobs(
            sha for files in result.graphs.values() for sha in files.sha256s()
        )
        return result

    # Idempotency keys -----------------------------------------------------------------

    def reserve_idempotency_key(
        self, tenant: str, key: str, *, body_sha256: str, job_id: str
    ) -> IdempotentRequest | None:
        """Bind the key to this request; return the earlier request if it was bound.

        The binding lasts IDEMPOTENCY_IN_FLIGHT_TTL_S until `confirm_idempotency_key`:
        a process that dies mid-request does not lock the key for a day.
        """
        redis_key = self._idempotency_key(tenant, key)
        value = json.dumps({"body": body_sha256, "job": job_id})
        if self._redis.set(redis_key, value, nx=True, ex=IDEMPOTENCY_IN_FLIGHT_TTL_S):
            return None
        stored = _text(self._redis.get(redis_key))
        if stored is None:  # expired in between: the key is free again
            return self.reserve_idempotency_key(tenant, key, body_sha256=body_sha256, job_id=job_id)
        earlier = json.loads(stored)
        return IdempotentRequest(body_sha256=earlier["body"], job_id=earlier["job"])

    def confirm_idempotency_key(self, tenant: str, key: str) -> None:
        """The request succeeded: replay it for IDEMPOTENCY_TTL_S."""
        self._redis.expire(self._idempotency_key(tenant, key), self.idempotency_ttl_s)

    def release_idempotency_key(self, tenant: str, key: str) -> None:
        self._redis.delete(self._idempotency_key(tenant, key))

    # Metrics --------------------------------------------------------------------------

    def job_metrics(self) -> JobMetrics:
        with self._redis.pipeline() as pipe:
            pipe.hgetall(self._SUBMITTED_KEY)
            pipe.hgetall(self._FINISHED_KEY)
            for status in FINAL_STATUSES:
                pipe.hgetall(self._duration_key(status.value))
            submitted_raw, finished_raw, *duration_raws = pipe.execute()
        submitted = {cast(str, _text(k)): int(v) for k, v in submitted_raw.items()}
        cache_hits = submitted.pop("cache_hit", 0)
        durations = {}
        for status, raw in zip(FINAL_STATUSES, duration_raws, strict=True):
            fields = {cast(str, _text(k)): cast(str, _text(v)) for k, v in raw.items()}
            durations[status.value] = DurationHistogram(
                bucket_counts={k: int(v) for k, v in fields.items() if k not in ("sum", "count")},
                total_s=float(fields.get("sum", 0.0)),
                count=int(fields.get("count", 0)),
            )
        return JobMetrics(
            submitted=submitted,
            cache_hits=cache_hits,
            finished={cast(str, _text(k)): int(v) for k, v in finished_raw.items()},
            durations=durations,
        )

    def queue_lengths(self, queues: Iterable[str]) -> dict[str, int]:
        # Celery's Redis transport keeps each queue as a list named after it.
        names = list(queues)
        with self._redis.pipeline() as pipe:
            for name in names:
                pipe.llen(name)
            return dict(zip(names, (int(n) for n in pipe.execute()), strict=True))


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
