"""Every HTTP input is bounded: time, size and quota, against a real stack.

A client (or a Redis) that hangs must cost the API seconds, never a thread pool or an
unbounded buffer: a paused Redis gives 503 problems within seconds while /healthz keeps
answering; headers and bodies that trickle are cut off; JSON bodies are bounded; a
tenant's active jobs and stored bytes are bounded; a dataset record's size is bounded.

Limits that need settings of their own (short timeouts, small quotas, a Redis to pause)
run on `bounded_stack`, a stack of this module with no worker (so that jobs stay
queued); the others on the security session's stack.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import redis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from jobstate.blobs import BlobStore
from jobstate.store import ACTIVE_JOB_ADMISSION_GRACE_S
from jobstate.store.keys import active_jobs_key
from service.datasets import MAX_ARRAY_NAME_CHARS, MAX_ARRAYS_PER_UPLOAD
from service.http_protocol import MAX_HEADER_BYTES
from tests.integration.helpers import (
    assert_problem,
    job_body,
    npy_bytes,
    npz_bytes,
    staging_files,
    submit,
    upload,
    upload_array,
)
from tests.integration.stack import TENANT_KEYS, ServiceStack, wait_until
from tests.schema_fuzz import operation_failures

pytestmark = pytest.mark.integration

MIB = 1024**2
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
MAX_STORED_BYTES = 64 * 1024
# Late, but never later than this, past the deadline it checks (a loaded 2-core CI box).
SLACK_S = 1.5


@pytest.fixture(scope="module")
def bounded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    stack = ServiceStack(
        tmp_path_factory.mktemp("bounded-stack"),
        settings={
            "NNKGEO_REQUEST_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "NNKGEO_REQUEST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "NNKGEO_TENANT_MAX_ACTIVE_JOBS": "1",
            "NNKGEO_TENANT_MAX_STORED_BYTES": str(MAX_STORED_BYTES),
            "NNKGEO_READINESS_TIMEOUT_S": "0.5",
        },
    )
    stack.root.mkdir(parents=True, exist_ok=True)
    try:
        stack.start_redis()
        stack.start_api()
        stack.wait_live()
        yield stack
    finally:
        stack.stop()


def _auth(tenant: str) -> bytes:
    return f"Authorization: Bearer {TENANT_KEYS[tenant]}\r\n".encode()


def _connect(stack: ServiceStack) -> socket.socket:
    address = urlsplit(stack.base_url)
    assert address.hostname is not None and address.port is not None
    return socket.create_connection((address.hostname, address.port), timeout=10)


def _read_until_closed(connection: socket.socket, *, timeout_s: float) -> tuple[bytes, float]:
    """All the server sends until it closes the connection, and when it closed it."""
    connection.settimeout(timeout_s)
    received = b""
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic()


def _trickle(
    connection: socket.socket, pieces: Iterator[bytes], *, interval_s: float
) -> Callable[[], float]:
    """Send `pieces` one every `interval_s` from a thread, until the server closes.

    Returns a function that stops the thread and says when the last piece went out.
    """
    stop = threading.Event()
    last_sent = [time.monotonic()]

    def run() -> None:
        for piece in pieces:
            if stop.is_set():
                return
            try:
                connection.sendall(piece)
            except OSError:
                return
            last_sent[0] = time.monotonic()
            stop.wait(interval_s)

    sender = threading.Thread(target=run, daemon=True)
    sender.start()

    def finish() -> float:
        stop.set()
        sender.join(timeout=5)
        return last_sent[0]

    return finish


def _upload_head(*, tenant: str, content_length: int) -> bytes:
    return (
        b"POST /v1/datasets?format=npy HTTP/1.1\r\nHost: nnkgeo\r\n"
        + _auth(tenant)
        + b"Content-Type: application/octet-stream\r\n"
        + f"Content-Length: {content_length}\r\n\r\n".encode()
    )


def _peak_rss_bytes(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) * 1024


def _rng_array(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# Slow clients ---------------------------------------------------------------------------


def test_headers_that_never_complete_are_cut_off_after_the_header_timeout(
    bounded_stack: ServiceStack,
) -> None:
    connection = _connect(bounded_stack)
    started = time.monotonic()
    connection.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: nnkgeo\r\nX-Slow: ")
    finish = _trickle(connection, iter([b"a"] * 200), interval_s=0.1)
    try:
        answer, closed_at = _read_until_closed(connection, timeout_s=HEADER_TIMEOUT_S + 10)
    finally:
        finish()
        connection.close()

    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"application/problem+json" in answer
    assert HEADER_TIMEOUT_S - 0.1 <= closed_at - started <= HEADER_TIMEOUT_S + SLACK_S


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    bounded_stack: ServiceStack,
) -> None:
    connection = _connect(bounded_stack)
    started = time.monotonic()
    try:
        _, closed_at = _read_until_closed(connection, timeout_s=HEADER_TIMEOUT_S + 10)
    finally:
        connection.close()

    assert closed_at - started <= HEADER_TIMEOUT_S + SLACK_S


def test_headers_over_the_size_cap_are_refused_with_431(bounded_stack: ServiceStack) -> None:
    connection = _connect(bounded_stack)
    try:
        connection.sendall(
            b"GET /v1/jobs HTTP/1.1\r\nHost: nnkgeo\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 1024)
        )
        answer, _ = _read_until_closed(connection, timeout_s=10)
    finally:
        connection.close()

    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_a_stalled_upload_is_cut_off_after_the_body_timeout_and_its_staging_file_removed(
    bounded_stack: ServiceStack,
) -> None:
    connection = _connect(bounded_stack)
    connection.sendall(_upload_head(tenant="beta", content_length=16_000))
    finish = _trickle(connection, iter([b"\x93" * 1024] * 3), interval_s=0.3)
    try:
        # The upload is under way: its staging file exists.
        wait_until(
            lambda: staging_files(bounded_stack.data_dir),
            timeout_s=5,
            what="the upload's staging file",
        )
        answer, closed_at = _read_until_closed(connection, timeout_s=BODY_TIMEOUT_S + 10)
    finally:
        stalled_at = finish()
        connection.close()

    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert BODY_TIMEOUT_S - 0.1 <= closed_at - stalled_at <= BODY_TIMEOUT_S + SLACK_S
    wait_until(
        lambda: not staging_files(bounded_stack.data_dir),
        timeout_s=5,
        what="the staging file to be removed",
    )


def test_a_body_dripped_a_few_bytes_at_a_time_counts_as_stalled(
    bounded_stack: ServiceStack,
) -> None:
    connection = _connect(bounded_stack)
    connection.sendall(_upload_head(tenant="beta", content_length=16_000))
    started = time.monotonic()
    # 16 bytes every 0.2 s: never silent for long, never 1 KiB in a body timeout.
    finish = _trickle(connection, iter([b"\x93" * 16] * 1000), interval_s=0.2)
    try:
        answer, closed_at = _read_until_closed(connection, timeout_s=BODY_TIMEOUT_S + 10)
    finally:
        finish()
        connection.close()

    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert closed_at - started <= BODY_TIMEOUT_S + SLACK_S
    wait_until(
        lambda: not staging_files(bounded_stack.data_dir),
        timeout_s=5,
        what="the staging file to be removed",
    )


def test_a_slow_body_that_keeps_progressing_is_not_cut_off(bounded_stack: ServiceStack) -> None:
    # 8 KiB over about twice the body timeout, 1 KiB at a time.
    content = npy_bytes(np.arange(1024, dtype=np.int64))[: 8 * 1024]
    pieces = [content[i : i + 1024] for i in range(0, len(content), 1024)]
    connection = _connect(bounded_stack)
    connection.sendall(_upload_head(tenant="beta", content_length=len(content)))
    finish = _trickle(connection, iter(pieces), interval_s=BODY_TIMEOUT_S / 4)
    try:
        connection.settimeout(BODY_TIMEOUT_S * 4)
        answer = connection.recv(65536)
    finally:
        finish()
        connection.close()

    # Answered (the file is truncated, so 422), not timed out.
    assert answer.startswith(b"HTTP/1.1 422 "), answer


# Body size --------------------------------------------------------------------------------


def test_a_json_body_over_max_json_bytes_is_refused_with_413(tenant: httpx.Client) -> None:
    body = b'{"sets": [], "params": {}, "padding": "' + b"a" * (2 * MIB) + b'"}'

    response = tenant.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})

    problem = assert_problem(response, 413)
    assert "NNKGEO_MAX_JSON_BYTES" in problem["detail"]


def test_a_chunked_json_body_is_counted_and_refused_without_being_buffered(
    security_stack: ServiceStack, tenant: httpx.Client
) -> None:
    assert security_stack.api is not None
    pid = security_stack.api.process.pid
    peak_before = _peak_rss_bytes(pid)

    def chunks() -> Iterator[bytes]:
        yield b'{"sets": [], "padding": "'
        for _ in range(64 * 16):  # 64 MiB in all
            yield b"a" * (64 * 1024)

    response = tenant.post(
        "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )

    assert "content-length" not in response.request.headers
    assert_problem(response, 413)
    peak_after = _peak_rss_bytes(pid)
    if peak_before is not None and peak_after is not None:
        assert peak_after - peak_before < 16 * MIB, (peak_before, peak_after)


def test_an_upload_is_bounded_by_the_upload_limit_not_the_json_limit(
    tenant: httpx.Client,
) -> None:
    content = npy_bytes(_rng_array(30, (1024, 512)))
    assert len(content) > 2 * MIB

    response = upload(tenant, content)

    assert response.status_code in (200, 201), response.text


# Dataset records --------------------------------------------------------------------------


def test_an_upload_of_too_many_arrays_is_refused_naming_the_file(tenant: httpx.Client) -> None:
    def arrays(count: int) -> dict[str, np.ndarray]:
        return {f"a{i}": np.full(1, i, np.float32) for i in range(count)}

    accepted = upload(tenant, npz_bytes(**arrays(MAX_ARRAYS_PER_UPLOAD)), fmt="npz")
    refused = upload(tenant, npz_bytes(**arrays(MAX_ARRAYS_PER_UPLOAD + 1)), fmt="npz")

    assert accepted.status_code in (200, 201), accepted.text
    problem = assert_problem(refused, 422, field="file")
    assert str(MAX_ARRAYS_PER_UPLOAD) in problem["detail"]


def test_an_array_name_over_the_cap_is_refused_naming_the_file(tenant: httpx.Client) -> None:
    name = "n" * (MAX_ARRAY_NAME_CHARS + 1)

    response = upload(tenant, npz_bytes(**{name: np.ones(2, np.float32)}), fmt="npz")

    assert_problem(response, 422, field="file")


# Quotas ---------------------------------------------------------------------------------


def test_a_tenant_at_its_active_jobs_quota_gets_429_until_a_job_finishes(
    bounded_stack: ServiceStack,
) -> None:
    with bounded_stack.client("alpha") as alpha, bounded_stack.client("beta") as beta:
        alpha_data = upload_array(alpha, _rng_array(1, (40, 8)))
        beta_data = upload_array(beta, _rng_array(2, (40, 8)))

        first = submit(alpha, job_body(alpha_data, k=5))
        refused = submit(alpha, job_body(alpha_data, k=6))
        other_tenant = submit(beta, job_body(beta_data, k=5))
        canceled = alpha.post(f"/v1/jobs/{first.json()['id']}/cancel")
        after_finish = submit(alpha, job_body(alpha_data, k=6))

        assert first.status_code == 202 and first.json()["status"] == "queued", first.text
        problem = assert_problem(refused, 429)
        assert "NNKGEO_TENANT_MAX_ACTIVE_JOBS" in problem["detail"]
        assert int(refused.headers["retry-after"]) > 0
        assert other_tenant.status_code == 202, other_tenant.text
        assert canceled.json()["status"] == "canceled", canceled.text
        assert after_finish.status_code == 202, after_finish.text
        for job, client in ((after_finish, alpha), (other_tenant, beta)):
            client.post(f"/v1/jobs/{job.json()['id']}/cancel")


def test_a_counted_job_that_was_never_stored_does_not_hold_the_quota_forever(
    bounded_stack: ServiceStack,
) -> None:
    # What a submission that died between its admission and storing its job leaves.
    stale_since = time.time() - ACTIVE_JOB_ADMISSION_GRACE_S - 1
    redis.Redis.from_url(bounded_stack.redis_url).zadd(
        active_jobs_key("alpha"), {"job_died_before_it_was_stored": stale_since}
    )
    with bounded_stack.client("alpha") as alpha:
        dataset = upload_array(alpha, _rng_array(3, (40, 8)))

        submitted = submit(alpha, job_body(dataset, k=7))

        assert submitted.status_code == 202, submitted.text
        alpha.post(f"/v1/jobs/{submitted.json()['id']}/cancel")


def test_a_tenant_over_its_stored_bytes_quota_gets_413_and_a_delete_frees_room(
    bounded_stack: ServiceStack,
) -> None:
    # Three files of 25,728 bytes: two fit in the 64 KiB quota, a third does not.
    first, second, third = (npy_bytes(_rng_array(seed, (200, 32))) for seed in (10, 11, 12))
    with bounded_stack.client("alpha") as alpha:
        stored_first = upload(alpha, first)
        again_first = upload(alpha, first)
        stored_second = upload(alpha, second)
        declared_third = upload(alpha, third)
        chunked_third = alpha.post(
            "/v1/datasets?format=npy",
            content=iter([third[:10_000], third[10_000:]]),
            headers={"Content-Type": "application/octet-stream"},
        )
        deleted = alpha.delete(f"/v1/datasets/{stored_first.json()['id']}")
        stored_third = upload(alpha, third)

    assert stored_first.status_code == 201, stored_first.text
    # The same bytes again: the same dataset, charged nothing (else `second` would not fit).
    assert again_first.status_code == 200, again_first.text
    assert stored_second.status_code == 201, stored_second.text
    problem = assert_problem(declared_third, 413)
    assert "NNKGEO_TENANT_MAX_STORED_BYTES" in problem["detail"]
    assert "content-length" not in chunked_third.request.headers
    assert_problem(chunked_third, 413)
    assert deleted.status_code == 204
    assert stored_third.status_code == 201, stored_third.text
    assert not staging_files(bounded_stack.data_dir)


def test_concurrent_uploads_cannot_both_slip_under_the_stored_bytes_quota(
    bounded_stack: ServiceStack,
) -> None:
    # Each fits in the room beta has; both together do not. Both are held until both have
    # passed the early check (each has a staging file), so only the check made when the
    # record is stored can refuse one.
    files = [npy_bytes(_rng_array(seed, (100, 100))) for seed in (20, 21)]
    both_staged = threading.Event()

    def send(content: bytes) -> httpx.Response:
        def body() -> Iterator[bytes]:
            yield content[:1000]
            both_staged.wait(timeout=10)
            yield content[1000:]

        with bounded_stack.client("beta") as beta:
            return beta.post(
                "/v1/datasets?format=npy",
                content=body(),
                headers={"Content-Type": "application/octet-stream"},
            )

    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(send, content) for content in files]
        wait_until(
            lambda: len(staging_files(bounded_stack.data_dir)) >= 2,
            timeout_s=10,
            what="both uploads to be staged",
        )
        both_staged.set()
        responses = [answer.result() for answer in answers]

    assert sorted(r.status_code for r in responses) == [201, 413], [r.text for r in responses]
    refused = files[[r.status_code for r in responses].index(413)]
    refused_blob = BlobStore(bounded_stack.data_dir).path_of(hashlib.sha256(refused).hexdigest())
    assert not refused_blob.exists()
    stored = next(r for r in responses if r.status_code == 201)
    with bounded_stack.client("beta") as beta:
        assert beta.delete(f"/v1/datasets/{stored.json()['id']}").status_code == 204


# A hung Redis ---------------------------------------------------------------------------

FLOOD = 100


def test_a_paused_redis_gives_503_within_seconds_while_healthz_keeps_answering(
    bounded_stack: ServiceStack,
) -> None:
    if bounded_stack.redis_process is None:
        pytest.skip("needs a redis-server of its own to pause (none on PATH)")
    redis_pid = bounded_stack.redis_process.process.pid
    # One client for the flood: a client per request spends longer building its TLS
    # context than the API waits on Redis, and the flood would trickle in.
    with (
        bounded_stack.client("alpha", limits=httpx.Limits(max_connections=FLOOD)) as alpha,
        bounded_stack.client(None) as anonymous,
    ):

        def list_jobs() -> httpx.Response:
            return alpha.get("/v1/jobs")

        def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = call()
            return response, time.monotonic() - started

        assert list_jobs().status_code == 200
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            listed, listed_s = timed(list_jobs)
            readiness, readiness_s = timed(lambda: anonymous.get("/readyz"))
            # More requests than the API has threads (40), all waiting on Redis; /healthz
            # is probed while they hold every thread (a route needing one waits seconds).
            with ThreadPoolExecutor(FLOOD) as pool:
                flood = [pool.submit(list_jobs) for _ in range(FLOOD)]
                probes = []
                for _ in range(8):
                    time.sleep(0.25)
                    probes.append(timed(lambda: anonymous.get("/healthz")))
                flooded = [answer.result() for answer in flood]
        finally:
            os.kill(redis_pid, signal.SIGCONT)

        print(
            f"paused Redis: 503 in {listed_s:.2f} s, /readyz in {readiness_s:.2f} s, "
            f"/healthz under a flood in at most {max(s for _, s in probes):.3f} s"
        )
        assert_problem(listed, 503)
        assert int(listed.headers["retry-after"]) > 0
        assert listed_s < 6
        assert_problem(readiness, 503, field="redis")
        assert readiness_s < 6
        assert all(response.status_code == 200 and took < 1 for response, took in probes), probes
        assert {response.status_code for response in flooded} == {503}
        wait_until(lambda: list_jobs().status_code == 200, timeout_s=15, what="the API to recover")


# Generated requests ---------------------------------------------------------------------

EXAMPLES_PER_OPERATION = 10


def test_generated_requests_never_get_a_server_error(security_stack: ServiceStack) -> None:
    # As tests/contract does, with fewer examples, against this session's limits.
    failures = operation_failures(
        security_stack.base_url,
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        checks=[not_a_server_error],
        examples_per_operation=EXAMPLES_PER_OPERATION,
    )
    assert not failures, "\n\n".join(failures)
