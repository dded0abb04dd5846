"""The scripts of job records: claim, progress, cancel, admission and finish."""

from __future__ import annotations

from jobstate.store.scripts._fragments import NOW_MS, OUTBOX_ADD

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
    NOW_MS
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
    OUTBOX_ADD
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
