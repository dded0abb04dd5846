"""The Lua scripts of the store: each check-then-write that must happen in one step.

Job status changes happen in scripts, so that each is atomic: a worker finishing a job,
a client cancelling it and a redelivered message claiming it cannot interleave. A claim
increments the job's ``attempts``, and a worker may only report progress, plan a run,
start or record a block, or finish with the attempt number it claimed (a fencing
token), so a stale run can never overwrite the outcome of a newer one.

Above each script: its KEYS, its ARGV and its reply. The store's client decodes replies,
so a Lua string comes back as `str` and a Lua number as `int`. Keys are named in
`jobstate.store.keys`.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.commands.core import Script

# KEYS: job.
# ARGV: started_at (ISO time), most attempts.
# Reply: {outcome, attempt}: {'claimed', the new attempt number}, {'missing', 0},
#        {'finished', 0} or {'exhausted', attempts so far}. Only a claim writes: it
#        counts the attempt and (re)starts the job's progress.
CLAIM_JOB = """
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
# Reply: 1 when the job moved to the final status (counted in the metrics, its active
#        entry and dataset pins released), 0 when it was not in an allowed status or,
#        given an attempt, was claimed again since.
FINISH_JOB = """
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

# KEYS: the tenant's active jobs.
# ARGV: job id, most active jobs, unix time, TTL.
# Reply: 1 (admitted) or 0 (the tenant has that many queued or running jobs already).
ADMIT_ACTIVE_JOB = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: job.
# ARGV: none.
# Reply: 1 when the running job is now asked to cancel, 0 when it is not running.
REQUEST_CANCEL = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
return 1
"""

# KEYS: job.
# ARGV: progress stage, progress fraction, attempt.
# Reply: -1 when the caller no longer owns the run (finished, or claimed again), else 1
#        when a cancel was requested and 0 otherwise (the progress is written then).
RECORD_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[3] then
  return -1
end
redis.call('HSET', KEYS[1], 'progress_stage', ARGV[1], 'progress_fraction', ARGV[2])
return redis.call('HEXISTS', KEYS[1], 'cancel_requested')
"""

# KEYS: job, run.
# ARGV: attempt, plan JSON, total blocks, run TTL, progress stage.
# Reply: -1 (no longer this attempt's), 1 (cancel requested) or 0 (run recorded; a run
#        recorded before keeps its plan and counts).
START_RUN = """
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

# KEYS: job, run.
# ARGV: attempt, block key, worker name.
# Reply: {outcome, deliveries of the block, 1 if the run awaits its assembly else 0};
#        outcome is 'start' (the delivery counted), 'recorded', 'canceled', 'stale' or
#        'missing'.
BEGIN_BLOCK = """
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

# KEYS: job, run.
# ARGV: attempt, block key, blob sha, share of progress the blocks span.
# Reply: {1 if this call recorded the block else 0 (-1: no longer this attempt's), done,
#        total}. Recording and counting are one step: a block delivered twice is counted
#        once, and exactly one recording sees done == total.
RECORD_BLOCK = """
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

# KEYS: job, run.
# ARGV: attempt.
# Reply: {outcome, deliveries of the assembly}; outcome is 'start' (the delivery
#        counted), 'canceled', 'stale', 'missing' or 'incomplete'.
BEGIN_ASSEMBLY = """
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

# KEYS: result.
# ARGV: report, etag, graphs JSON, created_at, TTL, page blob sha256 ('' = none).
# Reply: 1 (stored) or 0 (a result exists already, and stays).
PUT_RESULT_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'report', ARGV[1], 'etag', ARGV[2], 'graphs', ARGV[3],
           'created_at', ARGV[4], 'page', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: dataset record, its blob's reference set, the tenant's stored bytes.
# ARGV: record JSON, reference member, size in bytes, most stored bytes (0 = no limit).
# Reply: {1, record} (stored), {0, the record stored before} or {-1, bytes stored now}
#        (over the quota). A record the tenant has already costs nothing.
ADD_DATASET = """
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
# Reply: -1 (no such dataset), -2 (pinned by unfinished jobs) or the blob's remaining
#        references (the record deleted and its bytes uncounted).
DELETE_DATASET = """
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


@dataclass(frozen=True)
class Scripts:
    """Every script, registered on one client (loaded into Redis on first use)."""

    claim_job: Script
    finish_job: Script
    admit_active_job: Script
    request_cancel: Script
    record_progress: Script
    start_run: Script
    begin_block: Script
    record_block: Script
    begin_assembly: Script
    put_result_once: Script
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
            finish_job=client.register_script(FINISH_JOB),
            admit_active_job=client.register_script(ADMIT_ACTIVE_JOB),
            request_cancel=client.register_script(REQUEST_CANCEL),
            record_progress=client.register_script(RECORD_PROGRESS),
            start_run=client.register_script(START_RUN),
            begin_block=client.register_script(BEGIN_BLOCK),
            record_block=client.register_script(RECORD_BLOCK),
            begin_assembly=client.register_script(BEGIN_ASSEMBLY),
            put_result_once=client.register_script(PUT_RESULT_ONCE),
            add_dataset=client.register_script(ADD_DATASET),
            delete_dataset=client.register_script(DELETE_DATASET),
        )
