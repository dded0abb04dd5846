"""The scripts of results: stored with lifetimes and cache entry at once, extended together."""

from __future__ import annotations

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
