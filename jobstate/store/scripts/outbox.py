"""The script of the outbox: remove an entry once its message was sent."""

from __future__ import annotations

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
