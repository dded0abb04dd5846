"""The scripts of datasets: add and delete, with the tenant's quota, pins and index."""

from __future__ import annotations

# KEYS: dataset record, its blob's reference set, the tenant's stored bytes, the tenant's
#       dataset index.
# ARGV: record JSON, reference member, size in bytes, most stored bytes (0 = no limit),
#       dataset id, its creation time (unix ms).
# Reply: {1, record} (stored), {0, the record stored before} or {-1, bytes stored now}
#        (over the quota). A record the tenant has already costs nothing, and keeps its
#        place in the index (the caller indexes it by its own creation time).
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
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5])
return {1, ARGV[1]}
"""


# KEYS: dataset record, its pin set, its blob's reference set, the tenant's stored bytes,
#       the tenant's dataset index.
# ARGV: reference member, dataset id.
# Reply: -1 (no such dataset), -2 (pinned by unfinished jobs) or the blob's remaining
#        references (the record deleted, its bytes uncounted, its index entry removed).
DELETE_DATASET = """
local record = redis.call('GET', KEYS[1])
if not record then
  redis.call('ZREM', KEYS[5], ARGV[2])
  return -1
end
if redis.call('SCARD', KEYS[2]) > 0 then return -2 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[2])
-- Records stored before the counter existed were never counted: never go below zero.
if redis.call('DECRBY', KEYS[4], cjson.decode(record)['size_bytes']) < 0 then
  redis.call('SET', KEYS[4], 0)
end
return redis.call('SCARD', KEYS[3])
"""
