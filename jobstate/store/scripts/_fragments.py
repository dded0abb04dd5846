"""Lua fragments that several scripts share: Redis's clock, and writing an outbox entry."""

from __future__ import annotations

# The current Redis time in milliseconds: leases are timed by Redis's clock alone, so
# that workers on hosts whose clocks disagree still agree on when a lease expires.
NOW_MS = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""


# Writes one outbox entry (`jobstate.store.outbox`): the message under its task id, due
# at the given unix ms. Written again with the same id, it stays one entry.
OUTBOX_ADD = """
local function outbox_add(outbox, messages, id, message, due_ms)
  redis.call('HSET', messages, id, message)
  redis.call('ZADD', outbox, due_ms, id)
end
"""
