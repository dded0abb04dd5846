"""A result, the blobs it names and its cache entry live and die together (real Redis).

Graphs used to be registered for retention when written, before their result, so they
could expire (410) while the report still answered 200. Now the result, the lifetimes of
its blobs and its cache entry are written by one script, and a cache hit extends all of
them by one script. Each check reads the TTLs and scores back from Redis itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from api_schemas import AnalysisParams, JobStatus
from jobstate.records import GraphFiles, JobRecord, JobSpec, ResultRecord, new_job_id, utc_now
from jobstate.store import Store, new_claim_token
from jobstate.store.keys import GRAPH_BLOBS_KEY, result_cache_key, result_key
from jobstate.store.results import PutResultOutcome
from tests.integration.stack import ServiceStack

pytestmark = pytest.mark.integration

TENANT = "alpha"
RESULT_TTL_S = 600
# Blobs and keys written by one script in one call: their expiries agree to the second.
TOLERANCE_S = 2.0


@pytest.fixture(scope="module")
def redis_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    stack = ServiceStack(tmp_path_factory.mktemp("lifetimes-redis"))
    stack.root.mkdir(parents=True, exist_ok=True)
    try:
        stack.start_redis()
        client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        yield client
        client.close()
    finally:
        stack.stop()


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    return Store(
        redis_client, result_ttl_s=RESULT_TTL_S, job_ttl_s=3 * RESULT_TTL_S, idempotency_ttl_s=60
    )


def _running_job(store: Store) -> tuple[JobRecord, int]:
    job = JobRecord(
        id=new_job_id(),
        tenant=TENANT,
        status=JobStatus.queued,
        spec=JobSpec(params=AnalysisParams()),
        queue="cpu",
        cache_key=f"inputs-{new_job_id()}",
        created_at=utc_now(),
    )
    store.create_job(job)
    claim = store.claim_job(
        TENANT, job.id, now=utc_now(), max_attempts=3, token=new_claim_token(), lease_ms=60_000
    )
    assert claim.job is not None
    return claim.job, claim.attempt


def _result(job: JobRecord, tag: str) -> ResultRecord:
    graphs = {
        "layer": GraphFiles(directed=f"{tag}-directed", symmetric=f"{tag}-symmetric", map=None)
    }
    return ResultRecord(
        id=job.id,
        report_json="{}",
        etag='"e"',
        graphs=graphs,
        created_at=utc_now(),
        page=f"{tag}-page",
    )


def _expiries(client: redis.Redis, job: JobRecord, result: ResultRecord) -> dict[str, float]:
    """Seconds from now until each piece expires, as Redis holds it."""
    now = time.time()
    lifetimes = {
        "result": float(client.ttl(result_key(TENANT, job.id))),
        "cache": float(client.ttl(result_cache_key(TENANT, job.cache_key))),
    }
    for sha in result.blob_sha256s():
        score = client.zscore(GRAPH_BLOBS_KEY, sha)
        lifetimes[sha] = -1.0 if score is None else score - now
    return lifetimes


def test_result_blobs_and_cache_entry_expire_together(
    store: Store, redis_client: redis.Redis
) -> None:
    job, attempt = _running_job(store)
    result = _result(job, job.id)
    # The worker registers each blob as it writes it, some time before the result.
    store.register_graph_blobs(result.blob_sha256s())
    written_at = time.time()
    time.sleep(1.5)

    outcome = store.put_result(TENANT, result, attempt=attempt, cache_key=job.cache_key)

    assert outcome is PutResultOutcome.stored
    lifetimes = _expiries(redis_client, job, result)
    assert len(lifetimes) == 2 + 3
    for piece, seconds in lifetimes.items():
        assert seconds == pytest.approx(RESULT_TTL_S, abs=TOLERANCE_S), piece
    # Each blob's lifetime now runs from the result, not from when the blob was written.
    for sha in result.blob_sha256s():
        score = redis_client.zscore(GRAPH_BLOBS_KEY, sha)
        assert score is not None and score >= written_at + RESULT_TTL_S + 1.0
    assert redis_client.get(result_cache_key(TENANT, job.cache_key)) == job.id


def test_a_cache_hit_extends_the_result_its_blobs_and_its_entry_together(
    store: Store, redis_client: redis.Redis
) -> None:
    job, attempt = _running_job(store)
    result = _result(job, job.id)
    assert store.put_result(TENANT, result, attempt=attempt, cache_key=job.cache_key) is (
        PutResultOutcome.stored
    )
    # Time passes: every piece has 30 s left.
    soon = time.time() + 30
    redis_client.expire(result_key(TENANT, job.id), 30)
    redis_client.expire(result_cache_key(TENANT, job.cache_key), 30)
    redis_client.zadd(GRAPH_BLOBS_KEY, dict.fromkeys(result.blob_sha256s(), soon), xx=True)

    hit = store.cached_result(TENANT, job.cache_key)

    assert hit is not None and hit.id == job.id
    for piece, seconds in _expiries(redis_client, job, result).items():
        assert seconds == pytest.approx(RESULT_TTL_S, abs=TOLERANCE_S), piece


def test_a_cache_entry_whose_result_is_gone_is_a_miss_and_extends_nothing(
    store: Store, redis_client: redis.Redis
) -> None:
    job, attempt = _running_job(store)
    result = _result(job, job.id)
    store.put_result(TENANT, result, attempt=attempt, cache_key=job.cache_key)
    redis_client.delete(result_key(TENANT, job.id))
    redis_client.expire(result_cache_key(TENANT, job.cache_key), 30)

    assert store.cached_result(TENANT, job.cache_key) is None
    assert redis_client.ttl(result_cache_key(TENANT, job.cache_key)) <= 30


def test_a_stale_attempt_registers_no_result_no_lifetimes_and_no_cache_entry(
    store: Store, redis_client: redis.Redis
) -> None:
    job, attempt = _running_job(store)
    result = _result(job, f"stale-{job.id}")

    outcome = store.put_result(TENANT, result, attempt=attempt + 1, cache_key=job.cache_key)

    assert outcome is PutResultOutcome.stale
    assert store.get_result(TENANT, job.id) is None
    assert redis_client.get(result_cache_key(TENANT, job.cache_key)) is None
    assert all(redis_client.zscore(GRAPH_BLOBS_KEY, sha) is None for sha in result.blob_sha256s())


def test_an_uncacheable_job_stores_its_result_without_a_cache_entry(
    store: Store, redis_client: redis.Redis
) -> None:
    job, attempt = _running_job(store)
    result = _result(job, job.id)

    assert store.put_result(TENANT, result, attempt=attempt) is PutResultOutcome.stored
    assert redis_client.exists(result_cache_key(TENANT, job.cache_key)) == 0
    assert redis_client.ttl(result_key(TENANT, job.id)) == pytest.approx(RESULT_TTL_S, abs=2)
