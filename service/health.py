"""Readiness: can this API process serve jobs end to end right now?"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from celery import Celery

from jobstate.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadinessReport:
    redis_ok: bool
    workers: list[str]
    problems: list[tuple[str, str]]
    """(check, what is wrong), empty when ready."""

    @property
    def ready(self) -> bool:
        return not self.problems


def check_readiness(store: Store, celery: Celery, *, timeout_s: float) -> ReadinessReport:
    """Redis answers a PING, and at least one Celery worker answers a ping in time."""
    problems: list[tuple[str, str]] = []
    try:
        redis_ok = store.ping()
    except redis.RedisError as error:
        logger.warning("readiness: Redis did not answer: %s", error)
        return ReadinessReport(redis_ok=False, workers=[], problems=[("redis", "not reachable")])
    try:
        # limit=1 returns on the first answer instead of waiting out the timeout.
        replies = celery.control.ping(timeout=timeout_s, limit=1)
    except Exception as error:  # kombu raises transport-specific errors
        logger.warning("readiness: could not ping workers: %s", error)
        replies = []
    workers = sorted(name for reply in replies for name in reply)
    if not workers:
        problems.append(("workers", f"none answered within {timeout_s:g} s"))
    return ReadinessReport(redis_ok=redis_ok, workers=workers, problems=problems)
