"""The scripts of a sharded job's run: start, blocks, assembly."""

from __future__ import annotations

from jobstate.store.scripts._fragments import NOW_MS

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
    NOW_MS
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
    NOW_MS
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
