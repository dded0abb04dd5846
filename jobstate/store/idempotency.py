"""Idempotency keys: the request each client-chosen Idempotency-Key is bound to."""

from __future__ import annotations

import json
from dataclasses import dataclass

from jobstate.store.base import StoreBase
from jobstate.store.keys import idempotency_key

IDEMPOTENCY_IN_FLIGHT_TTL_S = 60


@dataclass(frozen=True)
class IdempotentRequest:
    body_sha256: str
    job_id: str


class IdempotencyStore(StoreBase):
    """Bindings of Idempotency-Keys to requests: short while in flight, long once done."""

    def reserve_idempotency_key(
        self, tenant: str, key: str, *, body_sha256: str, job_id: str
    ) -> IdempotentRequest | None:
        """Bind the key to this request; return the earlier request if it was bound.

        The binding lasts IDEMPOTENCY_IN_FLIGHT_TTL_S until `confirm_idempotency_key`:
        a process that dies mid-request does not lock the key for a day.
        """
        redis_key = idempotency_key(tenant, key)
        value = json.dumps({"body": body_sha256, "job": job_id})
        if self._redis.set(redis_key, value, nx=True, ex=IDEMPOTENCY_IN_FLIGHT_TTL_S):
            return None
        stored = self._redis.get(redis_key)
        if stored is None:  # expired in between: the key is free again
            return self.reserve_idempotency_key(tenant, key, body_sha256=body_sha256, job_id=job_id)
        earlier = json.loads(stored)
        return IdempotentRequest(body_sha256=earlier["body"], job_id=earlier["job"])

    def confirm_idempotency_key(self, tenant: str, key: str) -> None:
        """The request succeeded: replay it for IDEMPOTENCY_TTL_S."""
        self._redis.expire(idempotency_key(tenant, key), self.idempotency_ttl_s)

    def release_idempotency_key(self, tenant: str, key: str) -> None:
        self._redis.delete(idempotency_key(tenant, key))
