"""Webhook delivery records: where the delivery of each job's end event stands.

The policy (when to POST, retry or give up) is `jobstate.webhooks`; this module only
keeps its bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from jobstate.store.base import StoreBase, parse_time
from jobstate.store.keys import webhook_key


class WebhookState(StrEnum):
    pending = "pending"
    delivered = "delivered"
    given_up = "given_up"


@dataclass(frozen=True)
class WebhookDelivery:
    """Where the delivery of a job's end event stands (its POSTs so far)."""

    event_id: str
    state: WebhookState
    attempts: int
    last_outcome: str | None
    updated_at: datetime | None


class WebhookStore(StoreBase):
    """One delivery record per job, living as long as the job record."""

    def get_webhook_delivery(self, tenant: str, job_id: str) -> WebhookDelivery | None:
        fields: dict[str, str] = self._redis.hgetall(webhook_key(tenant, job_id))
        if not fields:
            return None
        return WebhookDelivery(
            event_id=fields["event_id"],
            state=WebhookState(fields["state"]),
            attempts=int(fields.get("attempts", "0")),
            last_outcome=fields.get("last_outcome"),
            updated_at=parse_time(fields.get("updated_at")),
        )

    def record_webhook_attempt(
        self,
        tenant: str,
        job_id: str,
        *,
        event_id: str,
        outcome: str,
        state: WebhookState,
        now: datetime,
    ) -> int:
        """Count one POST of the job's event and its outcome; returns the POSTs so far."""
        key = webhook_key(tenant, job_id)
        with self._redis.pipeline() as pipe:
            pipe.hincrby(key, "attempts", 1)
            pipe.hset(
                key,
                mapping={
                    "event_id": event_id,
                    "state": state.value,
                    "last_outcome": outcome,
                    "updated_at": now.isoformat(),
                },
            )
            pipe.expire(key, self.job_ttl_s)
            attempts, *_ = pipe.execute()
        return int(attempts)

    def give_up_webhook(
        self, tenant: str, job_id: str, *, event_id: str, reason: str, now: datetime
    ) -> None:
        """Mark the event as never to be sent (again), without counting a POST."""
        key = webhook_key(tenant, job_id)
        with self._redis.pipeline() as pipe:
            pipe.hsetnx(key, "attempts", 0)
            pipe.hset(
                key,
                mapping={
                    "event_id": event_id,
                    "state": WebhookState.given_up.value,
                    "last_outcome": reason,
                    "updated_at": now.isoformat(),
                },
            )
            pipe.expire(key, self.job_ttl_s)
            pipe.execute()
