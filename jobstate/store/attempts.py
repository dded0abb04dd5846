"""What each attempt of a job was estimated to need, and how its process died.

Written by the worker before an attempt allocates (the estimate) and by the worker's
main process when a child dies (the cause), so that the next attempt, or the job's
error, can tell an out-of-memory death from any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobstate.store.base import StoreBase
from jobstate.store.keys import attempt_memory_key


@dataclass(frozen=True)
class AttemptMemory:
    """What one attempt of a job was estimated to need, and how its process died, if so."""

    estimate_bytes: int | None
    budget_bytes: int | None
    died_of: str | None


class AttemptMemoryStore(StoreBase):
    """The memory record of a job's attempts (one hash per job)."""

    def record_attempt_memory(
        self, tenant: str, job_id: str, *, attempt: int, estimate_bytes: int, budget_bytes: int
    ) -> None:
        """Note, before an attempt allocates, what it was estimated to need."""
        key = attempt_memory_key(tenant, job_id)
        with self._redis.pipeline() as pipe:
            pipe.hset(key, mapping={f"estimate:{attempt}": estimate_bytes, "budget": budget_bytes})
            pipe.expire(key, self.job_ttl_s)
            pipe.execute()

    def record_attempt_death(self, tenant: str, job_id: str, *, attempt: int, cause: str) -> None:
        """Note how an attempt's process died (recorded by the worker's main process)."""
        key = attempt_memory_key(tenant, job_id)
        with self._redis.pipeline() as pipe:
            pipe.hset(key, f"died:{attempt}", cause[:200])
            pipe.expire(key, self.job_ttl_s)
            pipe.execute()

    def attempt_memory(self, tenant: str, job_id: str, *, attempt: int) -> AttemptMemory:
        fields: dict[str, str] = self._redis.hgetall(attempt_memory_key(tenant, job_id))
        estimate = fields.get(f"estimate:{attempt}")
        budget = fields.get("budget")
        return AttemptMemory(
            estimate_bytes=int(estimate) if estimate else None,
            budget_bytes=int(budget) if budget else None,
            died_of=fields.get(f"died:{attempt}"),
        )
