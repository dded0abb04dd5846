"""The scripts of leases: renew and release by their holder, reap when expired."""

from __future__ import annotations

from jobstate.store.scripts._fragments import NOW_MS, OUTBOX_ADD

# KEYS: job lease, the lease index.
# ARGV: lease value ("{attempt}:{claim token}"), lease milliseconds, lease index member.
# Reply: 1 (renewed) or 0 (the lease is no longer this holder's: expired, or released
#        when the job finished or was requeued).
RENEW_LEASE = (
    NOW_MS
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
    NOW_MS
    + OUTBOX_ADD
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
    NOW_MS
    + OUTBOX_ADD
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
