"""What every part of the store shares: one Redis client, its scripts, the lifetimes."""

from __future__ import annotations

from datetime import datetime

import redis

from jobstate.store.scripts import Scripts


class StoreBase:
    """The state each record kind's part of `jobstate.store.Store` works on.

    `Store` sets these once; the parts (``JobStore``, ``RunStore``, ...) only read them.
    The client decodes replies (``decode_responses=True``): every value read is a `str`.
    """

    _redis: redis.Redis
    _scripts: Scripts
    result_ttl_s: int
    job_ttl_s: int
    idempotency_ttl_s: int


def isoformat_or_none(moment: datetime | None) -> str | None:
    """The ISO 8601 text of `moment`, or None for no time."""
    return moment.isoformat() if moment is not None else None


def parse_time(value: str | None) -> datetime | None:
    """The time an ISO 8601 field holds, or None for an absent or empty field."""
    return datetime.fromisoformat(value) if value else None
