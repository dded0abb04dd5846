"""Every record nnkgeo keeps in Redis, one module per kind of record.

    keys         the key layout: every key's name, type and lifetime
    scripts      the Lua scripts (every job transition), with their KEYS/ARGV contracts
    jobs         job records: claim, progress, finish, cancel; the job index; admission
    attempts     each attempt's memory estimate and how its process died
    runs         sharded runs: plan, blocks, assembly
    results      results and the result cache
    idempotency  Idempotency-Key bindings
    datasets     dataset records, their pins, blob references and locks, graph blobs,
                 the stored-bytes quota
    webhooks     webhook delivery records
    outbox       the Celery messages record changes call for, kept until sent
    metrics      job counters, duration histograms, queue lengths

`Store` puts the parts together over one Redis client, which decodes every reply to
`str` (``decode_responses=True``).
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from jobstate.settings import Settings
from jobstate.store.attempts import AttemptMemory, AttemptMemoryStore
from jobstate.store.datasets import (
    DatasetDeletion,
    DatasetPosition,
    DatasetStore,
    StoredBytesQuotaError,
)
from jobstate.store.idempotency import (
    IDEMPOTENCY_IN_FLIGHT_TTL_S,
    IdempotencyStore,
    IdempotentRequest,
)
from jobstate.store.jobs import (
    ACTIVE_JOB_ADMISSION_GRACE_S,
    CancelOutcome,
    Claim,
    ClaimOutcome,
    JobStore,
    ProgressVerdict,
)
from jobstate.store.keys import PREFIX
from jobstate.store.leases import Lease, LeaseStore, Reaped, ReapOutcome, new_claim_token
from jobstate.store.metrics import (
    FINAL_STATUSES,
    JOB_DURATION_BUCKETS_S,
    DurationHistogram,
    JobMetrics,
    MetricsStore,
    duration_bucket,
)
from jobstate.store.outbox import (
    OUTBOX_GRACE_MS,
    MessageSender,
    OutboxEntry,
    OutboxMessage,
    OutboxStore,
)
from jobstate.store.results import ResultStore
from jobstate.store.runs import (
    AssemblyStart,
    AssemblyStartOutcome,
    BlockRecording,
    BlockStart,
    BlockStartOutcome,
    RunStore,
)
from jobstate.store.scripts import Scripts
from jobstate.store.webhooks import WebhookDelivery, WebhookState, WebhookStore

__all__ = [
    "ACTIVE_JOB_ADMISSION_GRACE_S",
    "FINAL_STATUSES",
    "IDEMPOTENCY_IN_FLIGHT_TTL_S",
    "JOB_DURATION_BUCKETS_S",
    "OUTBOX_GRACE_MS",
    "PREFIX",
    "AssemblyStart",
    "AssemblyStartOutcome",
    "AttemptMemory",
    "BlockRecording",
    "BlockStart",
    "BlockStartOutcome",
    "CancelOutcome",
    "Claim",
    "ClaimOutcome",
    "DatasetDeletion",
    "DatasetPosition",
    "DurationHistogram",
    "IdempotentRequest",
    "JobMetrics",
    "Lease",
    "MessageSender",
    "OutboxEntry",
    "OutboxMessage",
    "ProgressVerdict",
    "ReapOutcome",
    "Reaped",
    "Store",
    "StoredBytesQuotaError",
    "WebhookDelivery",
    "WebhookState",
    "duration_bucket",
    "new_claim_token",
]


class Store(
    JobStore,
    LeaseStore,
    AttemptMemoryStore,
    RunStore,
    ResultStore,
    IdempotencyStore,
    DatasetStore,
    WebhookStore,
    MetricsStore,
    OutboxStore,
):
    """Tenant-scoped access to every record nnkgeo keeps in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        result_ttl_s: int,
        job_ttl_s: int,
        idempotency_ttl_s: int,
        sender: MessageSender | None = None,
        webhook_queue: str = "webhooks",
        outbox_grace_ms: int = OUTBOX_GRACE_MS,
    ) -> None:
        """Use `client` for every record.

        Parameters
        ----------
        client
            A Redis client made with ``decode_responses=True``: the parts read every
            value as `str`.
        result_ttl_s, job_ttl_s, idempotency_ttl_s
            Lifetimes of results (and the cache, and graph blobs), of job records (and
            their runs, webhook and memory records), and of confirmed idempotency keys.
        sender
            Sends one outbox message to the broker (`jobstate.dispatch.message_sender`):
            the fast path of the messages this store writes with a record change. None
            (a store that only reads, or a test's) leaves them to the dispatcher.
        webhook_queue
            The queue of the webhooks the store writes when a job with a callback_url
            ends (`jobstate.dispatch.webhook_queue`).
        outbox_grace_ms
            How long an entry waits for its writer's fast path before it is due for the
            dispatcher (`jobstate.store.outbox`).

        Raises
        ------
        ValueError
            When `client` returns bytes.
        """
        if not client.get_encoder().decode_responses:
            raise ValueError("the store's Redis client must be made with decode_responses=True")
        self._redis = client
        self._scripts = Scripts.register(client)
        self._sender = sender
        self.webhook_queue = webhook_queue
        self.outbox_grace_ms = outbox_grace_ms
        self.result_ttl_s = result_ttl_s
        self.job_ttl_s = job_ttl_s
        self.idempotency_ttl_s = idempotency_ttl_s

    @classmethod
    def from_settings(cls, settings: Settings, *, sender: MessageSender | None = None) -> Store:
        """A store on a fresh client for ``settings.redis_url``, with its timeouts."""
        # A hung Redis (paused, swapping, partitioned) must cost a request one timeout,
        # not minutes: redis-py's default retries timeouts three times with backoff.
        # A connection error (Redis restarted, a pooled connection reset) fails at once,
        # so it is retried once, immediately, on a fresh connection; a timeout is not.
        client = redis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        return cls(
            client,
            result_ttl_s=settings.result_ttl_s,
            job_ttl_s=settings.job_ttl_s,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            sender=sender,
            # As `jobstate.dispatch.webhook_queue`, which imports this package.
            webhook_queue=settings.webhook_queue or settings.cpu_queue,
        )

    def ping(self) -> bool:
        return bool(self._redis.ping())

    def close(self) -> None:
        self._redis.close()
