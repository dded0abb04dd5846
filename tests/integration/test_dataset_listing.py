"""GET /v1/datasets: a tenant's datasets, newest first, in pages, and only its own.

Against the real stack; the tenants here (gamma, delta) are served by an API process of
their own over the session's Redis and worker, so that each test knows every dataset its
tenant has. The index behind the listing is checked against the records themselves,
read straight from Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from jobstate.records import DatasetRecord, StoredArray
from jobstate.settings import Settings
from jobstate.store import DatasetPosition, Store
from jobstate.store.keys import (
    dataset_index_backfilled_key,
    dataset_index_key,
    dataset_key,
)
from service.datasets import dataset_id_for
from tests.integration.helpers import assert_problem, npy_bytes, upload
from tests.integration.stack import CLIENT_LIMITS, TENANT_KEYS, ServiceStack, wait_until

pytestmark = pytest.mark.integration

LISTING_TENANTS = {"gamma": "gamma-key-0123456789abcdef", "delta": "delta-key-0123456789abcdef"}


@pytest.fixture(scope="module")
def listing_api(stack: ServiceStack) -> Iterator[str]:
    """Base URL of an API that knows the listing tenants too."""
    keys = {**TENANT_KEYS, **LISTING_TENANTS}
    process, base_url = stack.spawn_api(
        "listing-api", NNKGEO_API_KEYS=",".join(f"{t}:{k}" for t, k in keys.items())
    )
    try:
        wait_until(
            lambda: httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200,
            timeout_s=60,
            what="the listing API",
        )
        yield base_url
    finally:
        process.stop()


def _client(base_url: str, tenant: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {LISTING_TENANTS[tenant]}"}
    return httpx.Client(base_url=base_url, headers=headers, timeout=60, limits=CLIENT_LIMITS)


@pytest.fixture(scope="module")
def gamma(listing_api: str) -> Iterator[httpx.Client]:
    with _client(listing_api, "gamma") as client:
        yield client


@pytest.fixture(scope="module")
def delta(listing_api: str) -> Iterator[httpx.Client]:
    with _client(listing_api, "delta") as client:
        yield client


@pytest.fixture(scope="module")
def redis_client(stack: ServiceStack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    client.close()


def _all_pages(client: httpx.Client, *, limit: int) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = client.get("/v1/datasets", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= limit
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "the cursor never ran out"


def _ids(pages: list[list[dict[str, Any]]]) -> list[str]:
    return [item["id"] for page in pages for item in page]


def _stored_ids_newest_first(client: redis.Redis, tenant: str) -> list[str]:
    """The tenant's dataset records as Redis holds them, newest first: the reference."""
    prefix = dataset_key(tenant, "")
    records = [
        DatasetRecord.model_validate_json(client.get(key))
        for key in client.scan_iter(match=f"{prefix}*")
        if ":" not in key[len(prefix) :]
    ]
    records.sort(key=lambda record: (record.created_at, record.id), reverse=True)
    return [record.id for record in records]


def _upload_distinct(client: httpx.Client, count: int, *, seed: int) -> list[str]:
    """Upload `count` different arrays, a few ms apart; their ids, oldest first."""
    rng = np.random.default_rng(seed)
    ids = []
    for _ in range(count):
        response = upload(client, npy_bytes(rng.standard_normal((6, 3)).astype(np.float32)))
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
        time.sleep(0.005)
    return ids


def test_datasets_are_listed_newest_first_across_pages(
    gamma: httpx.Client, redis_client: redis.Redis
) -> None:
    uploaded = _upload_distinct(gamma, 5, seed=11)

    pages = _all_pages(gamma, limit=2)

    assert [len(page) for page in pages] == [2, 2, 1]
    assert _ids(pages) == uploaded[::-1]
    assert _ids(pages) == _stored_ids_newest_first(redis_client, "gamma")
    # Each item is the dataset's own record, as GET /v1/datasets/{id} gives it.
    for item in pages[0] + pages[-1]:
        assert gamma.get(f"/v1/datasets/{item['id']}").json() == item


def test_same_bytes_uploaded_again_keep_their_place_and_are_listed_once(
    gamma: httpx.Client, redis_client: redis.Redis
) -> None:
    first, second = _upload_distinct(gamma, 2, seed=12)
    before = _ids(_all_pages(gamma, limit=100))
    first_bytes = npy_bytes(np.random.default_rng(12).standard_normal((6, 3)).astype(np.float32))

    again = upload(gamma, first_bytes)

    assert again.status_code == 200, again.text
    assert again.json()["id"] == first
    after = _ids(_all_pages(gamma, limit=100))
    assert after == before
    assert after.count(first) == 1
    assert after.index(second) < after.index(first)
    assert after == _stored_ids_newest_first(redis_client, "gamma")


def test_a_deleted_dataset_leaves_the_listing_and_its_cursor_still_leads_on(
    gamma: httpx.Client, redis_client: redis.Redis
) -> None:
    uploaded = _upload_distinct(gamma, 4, seed=13)
    newest_first = uploaded[::-1]
    first_page = gamma.get("/v1/datasets", params={"limit": 2}).json()
    assert [item["id"] for item in first_page["items"]] == newest_first[:2]

    # The dataset the cursor points at goes, and so does one that the next page would hold.
    assert gamma.delete(f"/v1/datasets/{newest_first[1]}").status_code == 204
    assert gamma.delete(f"/v1/datasets/{newest_first[2]}").status_code == 204
    # Removed with the record, not left for a listing to find gone.
    assert redis_client.zscore(dataset_index_key("gamma"), newest_first[1]) is None
    second_page = gamma.get(
        "/v1/datasets", params={"limit": 1, "cursor": first_page["next_cursor"]}
    ).json()

    assert second_page["items"][0]["id"] == newest_first[3]
    listed = _ids(_all_pages(gamma, limit=3))
    assert newest_first[1] not in listed and newest_first[2] not in listed
    assert listed == _stored_ids_newest_first(redis_client, "gamma")


def test_one_tenant_never_sees_another_tenants_datasets(
    gamma: httpx.Client, delta: httpx.Client
) -> None:
    shared_bytes = npy_bytes(np.arange(18, dtype=np.float32).reshape(6, 3))
    gamma_id = upload(gamma, shared_bytes).json()["id"]
    gamma_before = _ids(_all_pages(gamma, limit=100))

    delta_upload = upload(delta, shared_bytes)

    assert delta_upload.status_code == 201, delta_upload.text
    delta_id = delta_upload.json()["id"]
    assert delta_id != gamma_id
    assert _ids(_all_pages(delta, limit=100)) == [delta_id]
    assert _ids(_all_pages(gamma, limit=100)) == gamma_before
    assert gamma_id in gamma_before and delta_id not in gamma_before
    # A cursor names a position, not a tenant: gamma's cursor shows delta nothing of gamma's.
    gamma_cursor = gamma.get("/v1/datasets", params={"limit": 1}).json()["next_cursor"]
    assert gamma_cursor is not None
    delta_page = delta.get("/v1/datasets", params={"cursor": gamma_cursor}).json()
    assert {item["id"] for item in delta_page["items"]} <= {delta_id}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("cursor=nonsense", "query.cursor"),
        ("cursor=1764657288123.job_0000", "query.cursor"),
        ("limit=0", "query.limit"),
        ("limit=101", "query.limit"),
        ("limit=abc", "query.limit"),
    ],
)
def test_bad_listing_parameters_are_problems_naming_them(
    gamma: httpx.Client, query: str, field: str
) -> None:
    problem = assert_problem(gamma.get(f"/v1/datasets?{query}"), 422)
    assert [error["field"] for error in problem["errors"]] == [field]


def test_listing_needs_a_key(listing_api: str) -> None:
    assert_problem(httpx.get(f"{listing_api}/v1/datasets"), 401)


def test_openapi_documents_the_listing(gamma: httpx.Client) -> None:
    operation = gamma.get("/openapi.json").json()["paths"]["/v1/datasets"]["get"]

    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DatasetList"
    }
    assert {parameter["name"] for parameter in operation["parameters"]} == {"limit", "cursor"}


def test_a_record_found_again_on_upload_is_indexed_at_its_own_time(
    gamma: httpx.Client, redis_client: redis.Redis
) -> None:
    older, newer = _upload_distinct(gamma, 2, seed=14)
    _all_pages(gamma, limit=100)  # the tenant's one backfill is done: no later one helps
    # As an older version left it: the record without an index entry.
    assert redis_client.zrem(dataset_index_key("gamma"), older) == 1
    assert redis_client.get(dataset_index_backfilled_key("gamma")) == "1"
    assert older not in _ids(_all_pages(gamma, limit=100))
    older_bytes = npy_bytes(np.random.default_rng(14).standard_normal((6, 3)).astype(np.float32))

    again = upload(gamma, older_bytes)

    assert again.status_code == 200, again.text
    listed = _ids(_all_pages(gamma, limit=100))
    assert listed.index(newer) + 1 == listed.index(older)
    assert listed == _stored_ids_newest_first(redis_client, "gamma")


# The index itself, through the store, on the session's Redis -------------------------


@pytest.fixture(scope="module")
def store(stack: ServiceStack) -> Iterator[Store]:
    job_store = Store.from_settings(Settings(redis_url=stack.redis_url))
    yield job_store
    job_store.close()


def _record(tenant: str, *, created_at: datetime, seed: int) -> DatasetRecord:
    sha256 = f"{seed:064x}"
    return DatasetRecord(
        id=dataset_id_for(tenant=tenant, sha256=sha256, fmt="npy"),
        tenant=tenant,
        sha256=sha256,
        format="npy",
        size_bytes=100 + seed,
        arrays=[StoredArray(name="arr_0", shape=[6, 3], dtype="float32")],
        created_at=created_at,
    )


def _list_all(store: Store, tenant: str, *, limit: int) -> list[str]:
    listed: list[str] = []
    after: DatasetPosition | None = None
    while True:
        page, after = store.list_datasets(tenant, limit=limit, after=after)
        listed += [record.id for record in page]
        if after is None:
            return listed


def test_datasets_created_in_the_same_millisecond_are_each_listed_once(store: Store) -> None:
    tenant = "ties"
    moment = datetime(2026, 12, 1, 12, 0, 0, 123000, tzinfo=UTC)
    records = [_record(tenant, created_at=moment, seed=seed) for seed in range(5)]
    older = _record(tenant, created_at=moment - timedelta(seconds=1), seed=9)
    for record in [*records, older]:
        store.add_dataset(record)

    for limit in (1, 2, 3, 100):
        listed = _list_all(store, tenant, limit=limit)
        # Same millisecond: by id, descending; then the older one.
        assert listed == [*sorted((r.id for r in records), reverse=True), older.id], limit


def test_an_entry_whose_record_is_gone_is_dropped_by_the_listing(
    store: Store, redis_client: redis.Redis
) -> None:
    tenant = "lost-record"
    now = datetime.now(UTC)
    kept = _record(tenant, created_at=now, seed=1)
    lost = _record(tenant, created_at=now - timedelta(seconds=1), seed=2)
    store.add_dataset(kept)
    store.add_dataset(lost)
    # As if the record had gone without its script (evicted, or a re-upload indexing it
    # while a delete removed it).
    redis_client.delete(dataset_key(tenant, lost.id))

    assert _list_all(store, tenant, limit=1) == [kept.id]
    assert redis_client.zscore(dataset_index_key(tenant), lost.id) is None
    assert redis_client.zscore(dataset_index_key(tenant), kept.id) is not None


def test_records_stored_before_the_index_existed_are_listed(
    store: Store, redis_client: redis.Redis
) -> None:
    tenant = "before-index"
    now = datetime.now(UTC)
    old = [_record(tenant, created_at=now - timedelta(days=days), seed=days) for days in (3, 1)]
    # What an older version stored: the record alone, no index entry, no marker.
    for record in old:
        redis_client.set(dataset_key(tenant, record.id), record.model_dump_json())
    redis_client.delete(dataset_index_backfilled_key(tenant))
    new = _record(tenant, created_at=now, seed=7)
    store.add_dataset(new)

    assert _list_all(store, tenant, limit=2) == [new.id, old[1].id, old[0].id]
    assert redis_client.get(dataset_index_backfilled_key(tenant)) == "1"
