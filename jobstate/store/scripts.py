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
`jobstate.store.keys`.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.commands.core import Script

# The current Redis time in milliseconds: leases are timed by Redis's clock alone, so
# that workers on hosts whose clocks disagree still agree on when a lease expires.
_NOW_MS = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# Writes one outbox entry (`jobstate.store.outbox`): the message under its task id, due
# at the given unix ms. Written again with the same id, it stays one entry.
_OUTBOX_ADD = """
local function outbox_add(outbox, messages, id, message, due_ms)
  redis.call('HSET', messages, id, message)
  redis.call('ZADD', outbox, due_ms, id)
end
"""

# KEYS: job, its lease, the lease index.
# ARGV: started_at (ISO time), most attempts, claim token (unique per delivery), lease
#       milliseconds, lease index member ("{tenant}/{job id}").
# Reply: {outcome, attempt}: {'claimed', the new attempt number}, {'missing', 0},
#        {'finished', 0}, {'leased', current attempt} (running, and its lease is live:
#        a redelivered message must not fence out the worker holding it) or
#        {'exhausted', attempts so far}. Only a claim writes: it counts the attempt,
#        takes the lease and (re)starts the job's progress. A claim run again with the
#        same token (redis-py retrying after a lost reply) finds its own lease and
#        answers {'claimed', the same attempt}, counting nothing.
CLAIM_JOB = (
    _NOW_MS
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', 0} end
if status ~= 'queued' and status ~= 'running' then return {'finished', 0} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
local lease = redis.call('GET', KEYS[2])
if lease then
  if lease == attempts .. ':' .. ARGV[3] then return {'claimed', attempts} end
  if status == 'running' then return {'leased', attempts} end
end
if attempts >= tonumber(ARGV[2]) then return {'exhausted', attempts} end
attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'progress_stage', 'starting',
           'progress_fraction', '0')
if redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[1])
end
redis.call('SET', KEYS[2], attempts .. ':' .. ARGV[3], 'PX', ARGV[4])
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[4]), ARGV[5])
return {'claimed', attempts}
"""
)

# KEYS: job lease, the lease index.
# ARGV: lease value ("{attempt}:{claim token}"), lease milliseconds, lease index member.
# Reply: 1 (renewed) or 0 (the lease is no longer this holder's: expired, or released
#        when the job finished or was requeued).
RENEW_LEASE = (
    _NOW_MS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[2]), ARGV[3])
return 1
"""
)

# KEYS: job lease, the lease index.
# ARGV: lease value, lease index member.
# Reply: 1 (released) or 0 (not this holder's lease; left alone).
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

# KEYS: job, run, block lease, the lease index, the outbox, the outbox's messages.
# ARGV: lease index member, attempt, block key, the block's message JSON (its queue is
#       taken from the run's plan), its entry id without the end, the unix ms it is due.
# Reply: 'gone' (the job no longer runs as that attempt, or the block is recorded:
#        dropped from the index), 'alive' (its lease is live) or 'requeued' (its lease
#        expired: the block's message is in the outbox, under the id ended by the
#        block's deliveries so far, for the dispatcher to send; its next delivery is
#        counted, and the job fails past the most attempts, in BEGIN_BLOCK's caller).
#        Each delivery is reaped once (the run's ``resent:{block}`` field holds the
#        deliveries reaped): reaped again before its next start (a retry, a second
#        reaper), the block answers 'gone' and writes no second entry.
REAP_BLOCK_LEASE = (
    _NOW_MS
    + _OUTBOX_ADD
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[2]
   or redis.call('EXISTS', KEYS[2]) == 0
   or redis.call('HEXISTS', KEYS[2], 'result:' .. ARGV[3]) == 1 then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 'gone'
end
local ttl = redis.call('PTTL', KEYS[3])
if ttl > 0 then
  redis.call('ZADD', KEYS[4], now_ms + ttl, ARGV[1])
  return 'alive'
end
redis.call('ZREM', KEYS[4], ARGV[1])
local deliveries = redis.call('HGET', KEYS[2], 'deliveries:' .. ARGV[3]) or '0'
if redis.call('HGET', KEYS[2], 'resent:' .. ARGV[3]) == deliveries then return 'gone' end
redis.call('HSET', KEYS[2], 'resent:' .. ARGV[3], deliveries)
local message = cjson.decode(ARGV[4])
local plan = redis.call('HGET', KEYS[2], 'plan')
if plan then message['queue'] = cjson.decode(plan)['queue'] or message['queue'] end
outbox_add(KEYS[5], KEYS[6], ARGV[5] .. deliveries, cjson.encode(message), ARGV[6])
return 'requeued'
"""
)

# KEYS: job, its lease, the lease index, the outbox, the outbox's messages.
# ARGV: lease index member, most attempts, the job's analyze_sets message JSON (its queue
#       is taken from the job record), its entry id without the end, the unix ms it is
#       due.
# Reply: {outcome, attempts}: 'gone' (not running, or no record: dropped from the
#        index), 'alive' (the lease is live; its index entry moved to its expiry),
#        'requeued' (lease expired: the job is queued again, to be claimed as the next
#        attempt, and its message is in the outbox under the id ended by the attempt
#        that lost the lease, for the dispatcher to send) or 'exhausted' (lease expired
#        on the last attempt: the caller fails the job, fenced by that attempt).
REAP_LEASE = (
    _NOW_MS
    + _OUTBOX_ADD
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {'gone', 0}
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then
  redis.call('ZADD', KEYS[3], now_ms + ttl, ARGV[1])
  return {'alive', attempts}
end
if attempts >= tonumber(ARGV[2]) then return {'exhausted', attempts} end
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress_stage', 'requeued',
           'progress_fraction', '0')
redis.call('ZREM', KEYS[3], ARGV[1])
local message = cjson.decode(ARGV[3])
message['queue'] = redis.call('HGET', KEYS[1], 'queue') or message['queue']
outbox_add(KEYS[4], KEYS[5], ARGV[4] .. attempts, cjson.encode(message), ARGV[5])
return {'requeued', attempts}
"""
)

# KEYS: job, finished counter, duration histogram, the tenant's active jobs, the job's
#       lease, the lease index, the outbox, the outbox's messages, then the job's dataset
#       pin sets.
# ARGV: status, finished_at, attempt ('' = any), allowed current statuses (comma list),
#       error JSON ('' = none), result id ('' = none), duration bucket ('' = none),
#       duration seconds, job id, progress stage, lease index member, the webhook's entry
#       id (its event id; '' = the job has no callback_url), its message JSON, the unix
#       ms it is due.
# Reply: 1 when the job moved to the final status (counted in the metrics, its active
#        entry, lease and dataset pins released, its webhook written to the outbox), 0
#        when it was not in an allowed status or, given an attempt, was claimed (or
#        requeued) since. Given an attempt, a finish run again (redis-py retrying after a
#        lost reply) finds the job already ended by that attempt with that status and
#        answers 1 again, changing nothing (and writing no second webhook entry).
FINISH_JOB = (
    _OUTBOX_ADD
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if ARGV[3] ~= '' and status == ARGV[1]
   and redis.call('HGET', KEYS[1], 'finished_attempt') == ARGV[3] then
  return 1
end
local allowed = false
for candidate in string.gmatch(ARGV[4], '[^,]+') do
  if candidate == status then allowed = true end
end
if not allowed then return 0 end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2],
           'progress_stage', ARGV[10])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'finished_attempt', ARGV[3]) end
redis.call('DEL', KEYS[5])
redis.call('ZREM', KEYS[6], ARGV[11])
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
for i = 9, #KEYS do redis.call('SREM', KEYS[i], ARGV[9]) end
if ARGV[12] ~= '' then outbox_add(KEYS[7], KEYS[8], ARGV[12], ARGV[13], ARGV[14]) end
return 1
"""
)

# KEYS: the outbox, the outbox's messages.
# ARGV: entry id (the message's task id), the unix ms it was due when its sender read it.
# Reply: 1 (the sent entry removed) or 0 (gone already, or written again since it was read:
#        that write's message is still owed, so it stays).
REMOVE_OUTBOX_ENTRY = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
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

# KEYS: job, run, the block's lease, the lease index.
# ARGV: attempt, block key, worker name, claim token, lease milliseconds, lease index
#       member.
# Reply: {outcome, deliveries of the block, 1 if the run awaits its assembly else 0};
#        outcome is 'start' (the delivery counted, the block's lease taken), 'leased'
#        (another delivery holds a live lease on the block: a redelivered message),
#        'recorded', 'canceled', 'stale' or 'missing'. Run again with the same token
#        (a client retry), it answers 'start' with the same count.
BEGIN_BLOCK = (
    _NOW_MS
    + """
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
local lease = redis.call('GET', KEYS[3])
if lease then
  local deliveries = tonumber(redis.call('HGET', KEYS[2], 'deliveries:' .. ARGV[2]) or '0')
  if lease == ARGV[1] .. ':' .. ARGV[4] then return {'start', deliveries, 0} end
  return {'leased', deliveries, 0}
end
local deliveries = redis.call('HINCRBY', KEYS[2], 'deliveries:' .. ARGV[2], 1)
redis.call('HSET', KEYS[2], 'started_by:' .. ARGV[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[1] .. ':' .. ARGV[4], 'PX', ARGV[5])
redis.call('ZADD', KEYS[4], now_ms + tonumber(ARGV[5]), ARGV[6])
return {'start', deliveries, 0}
"""
)

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

# KEYS: job, run, the job's lease, the lease index.
# ARGV: attempt, lease value ("{attempt}:assemble-{claim token}"), lease milliseconds,
#       lease index member ("{tenant}/{job id}"), the prefix of any assembly's lease
#       value of this attempt ("{attempt}:assemble-").
# Reply: {outcome, deliveries of the assembly}; outcome is 'start' (the delivery
#        counted, the job's lease taken), 'canceled' (the job's lease taken, nothing
#        counted: the caller ends the job), 'leased' (another assembly of this attempt
#        holds a live lease: a redelivered message), 'stale', 'missing' or 'incomplete'.
#        The lease is the job's own, as CLAIM_JOB takes it, so REAP_LEASE requeues the
#        job as its next attempt once it expires. A live lease that is not an
#        assembly's is the claim's, which its fan-out releases once the blocks are sent
#        (and all are recorded by now): the assembly takes it over. Run again with the
#        same token (a client retry), it answers as the first run did, counting nothing.
BEGIN_ASSEMBLY = (
    _NOW_MS
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then
  return {'stale', 0}
end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'missing', 0} end
if redis.call('HGET', KEYS[2], 'done') ~= redis.call('HGET', KEYS[2], 'total') then
  return {'incomplete', 0}
end
local canceled = redis.call('HEXISTS', KEYS[1], 'cancel_requested') == 1
local lease = redis.call('GET', KEYS[3])
if lease and lease == ARGV[2] then
  if canceled then return {'canceled', 0} end
  return {'start', tonumber(redis.call('HGET', KEYS[2], 'deliveries:assemble') or '0')}
end
if lease and string.sub(lease, 1, #ARGV[5]) == ARGV[5] then
  return {'leased', tonumber(redis.call('HGET', KEYS[2], 'deliveries:assemble') or '0')}
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[4], now_ms + tonumber(ARGV[3]), ARGV[4])
if canceled then return {'canceled', 0} end
redis.call('HSET', KEYS[2], 'assembly_started', '1')
return {'start', redis.call('HINCRBY', KEYS[2], 'deliveries:assemble', 1)}
"""
)

# KEYS: result record, job record, graph-blob lifetimes, and the result cache entry (only
#       when the job is cacheable).
# ARGV: report, etag, graphs JSON, created_at, result TTL (s), page sha256 (or ''),
#       attempt, now (unix s), result id, then every blob sha256 the result names.
# Reply: 1 (stored), 0 (a result of this attempt was stored first: kept, as its report and
#        ETag may have been seen) or -1 (the job no longer runs as this attempt: nothing
#        stored). The result, the lifetimes of its blobs and its cache entry are written
#        here together, so that graphs never expire before the report that names them.
PUT_RESULT = """
if redis.call('HGET', KEYS[2], 'status') ~= 'running'
   or redis.call('HGET', KEYS[2], 'attempts') ~= ARGV[7] then
  return -1
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'report', ARGV[1], 'etag', ARGV[2], 'graphs', ARGV[3],
           'created_at', ARGV[4], 'page', ARGV[6])
redis.call('EXPIRE', KEYS[1], ttl)
local expires_at = tonumber(ARGV[8]) + ttl
-- GT only ever extends a lifetime, and still adds blobs not yet listed.
for i = 10, #ARGV do redis.call('ZADD', KEYS[3], 'GT', expires_at, ARGV[i]) end
if KEYS[4] then redis.call('SET', KEYS[4], ARGV[9], 'EX', ttl) end
return 1
"""

# KEYS: result cache entry, result record, graph-blob lifetimes.
# ARGV: result TTL (s), now (unix s), then every blob sha256 the result names.
# Reply: 1 (the entry, the result and its blobs all live another TTL) or 0 (the result is
#        gone: nothing extended). A cache hit extends them together.
EXTEND_RESULT = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local ttl = tonumber(ARGV[1])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
local expires_at = tonumber(ARGV[2]) + ttl
for i = 3, #ARGV do redis.call('ZADD', KEYS[3], 'GT', expires_at, ARGV[i]) end
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
