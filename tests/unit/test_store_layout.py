"""The store's key layout and its client contract, without a Redis server.

The key names are a storage format: records written before an upgrade must be found
after it, so each name is pinned here as `jobstate.store.keys` documents it.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import redis

from jobstate.store import Store, outbox
from jobstate.store import keys as store_keys

TENANT = "alpha"
JOB_ID = "j0001"


@pytest.mark.parametrize(
    ("key", "documented"),
    [
        (store_keys.dataset_key(TENANT, "d1"), "nnkgeo:t:alpha:dataset:d1"),
        (store_keys.dataset_pins_key(TENANT, "d1"), "nnkgeo:t:alpha:dataset:d1:jobs"),
        (store_keys.dataset_index_key(TENANT), "nnkgeo:t:alpha:datasets"),
        (store_keys.dataset_index_backfilled_key(TENANT), "nnkgeo:t:alpha:datasets:backfilled"),
        (store_keys.blob_datasets_key("ab" * 32), f"nnkgeo:blob:{'ab' * 32}:datasets"),
        (store_keys.GRAPH_BLOBS_KEY, "nnkgeo:blobs:graphs"),
        (store_keys.blob_lock_key("ab" * 32), f"nnkgeo:lock:blob:{'ab' * 32}"),
        (store_keys.job_key(TENANT, JOB_ID), "nnkgeo:t:alpha:job:j0001"),
        (store_keys.run_key(TENANT, JOB_ID, 2), "nnkgeo:t:alpha:job:j0001:run:2"),
        (store_keys.webhook_key(TENANT, JOB_ID), "nnkgeo:t:alpha:job:j0001:webhook"),
        (store_keys.lease_key(TENANT, JOB_ID), "nnkgeo:t:alpha:job:j0001:lease"),
        (store_keys.lease_member(TENANT, JOB_ID), "alpha/j0001"),
        (store_keys.LEASES_KEY, "nnkgeo:leases"),
        (store_keys.REAPER_LOCK_KEY, "nnkgeo:lock:reaper"),
        (store_keys.OUTBOX_KEY, "nnkgeo:outbox"),
        (store_keys.OUTBOX_MESSAGES_KEY, "nnkgeo:outbox:messages"),
        (store_keys.attempt_memory_key(TENANT, JOB_ID), "nnkgeo:t:alpha:job:j0001:memory"),
        (store_keys.job_index_key(TENANT), "nnkgeo:t:alpha:jobs"),
        (store_keys.result_key(TENANT, JOB_ID), "nnkgeo:t:alpha:result:j0001"),
        (store_keys.result_cache_key(TENANT, "c" * 64), f"nnkgeo:t:alpha:cache:{'c' * 64}"),
        (store_keys.stored_bytes_key(TENANT), "nnkgeo:t:alpha:stored_bytes"),
        (store_keys.active_jobs_key(TENANT), "nnkgeo:t:alpha:active_jobs"),
        (store_keys.JOBS_SUBMITTED_KEY, "nnkgeo:metrics:jobs_submitted"),
        (store_keys.JOBS_FINISHED_KEY, "nnkgeo:metrics:jobs_finished"),
        (store_keys.job_duration_key("failed"), "nnkgeo:metrics:job_duration:failed"),
    ],
)
def test_every_key_is_named_as_the_layout_documents(key: str, documented: str) -> None:
    assert key == documented


def test_idempotency_key_names_the_hash_of_the_clients_key_never_its_text() -> None:
    client_key = "order 17: {retry}"

    key = store_keys.idempotency_key(TENANT, client_key)

    assert key == f"nnkgeo:t:alpha:idempotency:{hashlib.sha256(client_key.encode()).hexdigest()}"
    assert client_key not in key


def test_store_refuses_a_client_that_returns_bytes() -> None:
    # Constructing a client opens no connection, so no server is needed here.
    bytes_client = redis.Redis()

    with pytest.raises(ValueError, match="decode_responses=True"):
        Store(bytes_client, result_ttl_s=60, job_ttl_s=60, idempotency_ttl_s=60)


def test_store_accepts_a_client_that_decodes_replies() -> None:
    store = Store(
        redis.Redis(decode_responses=True), result_ttl_s=60, job_ttl_s=120, idempotency_ttl_s=30
    )

    assert (store.result_ttl_s, store.job_ttl_s, store.idempotency_ttl_s) == (60, 120, 30)
    store.close()


def test_outbox_messages_are_stored_as_the_layout_documents() -> None:
    # Entries outlive a deploy: a dispatcher of the next version must read them.
    message = outbox.analysis_message(JOB_ID, TENANT, "cpu")
    stored = message.to_json()

    assert message.task_id == JOB_ID
    assert json.loads(stored) == {
        "task": "nnkgeo.analyze_sets",
        "args": [JOB_ID, TENANT],
        "queue": "cpu",
    }
    assert outbox.OutboxMessage.from_json(JOB_ID, stored) == message
    webhook = outbox.webhook_message(TENANT, "job_01ab", "failed", "webhooks")
    assert (webhook.task, webhook.args, webhook.task_id) == (
        "nnkgeo.deliver_webhook",
        (TENANT, "job_01ab", "msg_01ab_failed"),
        "msg_01ab_failed",
    )
    # The reap scripts end these ids with the attempt, or the block's deliveries.
    assert outbox.requeue_script_args(TENANT, JOB_ID, due_ms=5)[1:] == [f"{JOB_ID}.requeue.", 5]
    block_args = outbox.block_resend_script_args(TENANT, JOB_ID, attempt=2, block="0:3", due_ms=5)
    assert json.loads(str(block_args[0]))["args"] == [JOB_ID, TENANT, 2, 0, 3]
    assert block_args[1] == f"{JOB_ID}.2.block.0.3.resend."
