"""Webhooks: a job's end is POSTed, signed, to its callback_url; retried; never elsewhere.

A stack of its own laid out as compose runs it: Redis, the API, a worker of the job
queues and a webhooks worker of the webhook queue. Its webhook settings name the local
receivers below; the backoff is short so that retries take a fraction of a second, and
the deadline of one POST is short so that a slow receiver is cut off within seconds.
Receivers listen on 127.0.0.1:

- ``hooks``: answers 500 to the first delivery of each event, 200 to the next ones;
- ``bouncer``: on the allow-list, answers every delivery with a redirect to ``forbidden``;
- ``forbidden``: not on the allow-list; no request may ever reach it;
- ``huge``: answers 500, then 200, each with a 1.5 GiB body streamed from a generator;
- ``slow``: sends a status line, then one header byte every quarter second, for ever.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from celery import Celery

from jobstate.dispatch import DELIVER_WEBHOOK_TASK, create_celery_app, webhook_queue
from jobstate.settings import Settings
from jobstate.store import Store, WebhookState
from nnkgeo.webhooks import generate_secret, verify
from tests.integration.conftest import STACK_SETTINGS
from tests.integration.helpers import (
    assert_problem,
    job_body,
    submit,
    upload_array,
    wait_for_status,
)
from tests.integration.stack import ServiceStack, wait_until

pytestmark = pytest.mark.integration

ALPHA_SECRET = generate_secret()
MAX_ATTEMPTS = 3
BACKOFF_S = 0.2
DEADLINE_S = 2.0
# Far above the deadline: only the deadline can end a POST to the slow receiver.
OPERATION_TIMEOUT_S = 5.0
HUGE_BODY_BYTES = 1536 * 1024**2
TRICKLE_INTERVAL_S = 0.25
# What the webhooks worker may grow by while it is offered a 1.5 GiB answer.
RSS_GROWTH_BOUND_BYTES = 64 * 1024**2
# A 60-point job, submitted to an idle job worker, ends within this.
TINY_JOB_LATENCY_BOUND_S = 1.5


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    body_bytes_sent: int = 0

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server in a thread that records every request it gets."""

    name: str
    answer: Any  # (receiver, path, headers) -> (status, extra headers)
    # Each answer carries a body this long, streamed from a generator.
    answer_body_bytes: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver.lock:
                    status, extra = receiver.answer(receiver, self.path, headers)
                    delivery = Delivery(self.path, headers, body, status)
                    receiver.deliveries.append(delivery)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(receiver.answer_body_bytes))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client hung up: as it should
                    for chunk in _zeros(receiver.answer_body_bytes):
                        self.wfile.write(chunk)
                        delivery.body_bytes_sent += len(chunk)

            do_POST = do_GET = do_PUT = _record  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def of_job(self, job_id: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.event["data"]["job_id"] == job_id]

    def wait_for(self, job_id: str, count: int, *, timeout_s: float = 20) -> list[Delivery]:
        wait_until(
            lambda: len(self.of_job(job_id)) >= count,
            timeout_s=timeout_s,
            interval_s=0.05,
            what=f"{count} deliveries of job {job_id} to {self.name}",
        )
        return self.of_job(job_id)


def _zeros(size: int, chunk_bytes: int = 1024**2) -> Iterator[bytes]:
    """`size` zero bytes in chunks: a body of any length, never held whole in memory."""
    chunk = bytes(chunk_bytes)
    for start in range(0, size, chunk_bytes):
        yield chunk[: min(chunk_bytes, size - start)]


@dataclass
class Connection:
    """One TCP connection to the slow receiver; times are wall-clock, as the API's."""

    opened_at: datetime
    request: bytes = b""
    closed_at: datetime | None = None

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.request.partition(b"\r\n\r\n")[2])

    @property
    def held_s(self) -> float:
        assert self.closed_at is not None
        return (self.closed_at - self.opened_at).total_seconds()


@dataclass
class TrickleReceiver:
    """A raw TCP server that answers a status line, then a header byte every 0.25 s.

    Every read the client makes returns within a fraction of a second, so no per-read
    timeout ever fires: only a total deadline ends the request. It notes when each
    connection opens and when the client hangs up.
    """

    connections: list[Connection] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    listener: socket.socket | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        assert self.listener is not None
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    @property
    def port(self) -> int:
        assert self.listener is not None
        return self.listener.getsockname()[1]

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        if self.listener is not None:
            self.listener.close()

    def _accept(self) -> None:
        assert self.listener is not None
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection = Connection(opened_at=datetime.now(UTC))
            threading.Thread(target=self._trickle, args=(conn, connection), daemon=True).start()

    def _trickle(self, conn: socket.socket, connection: Connection) -> None:
        with conn, contextlib.suppress(OSError):
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += conn.recv(65536)
            connection.request = head + b"\r\n\r\n" + body
            with self.lock:
                self.connections.append(connection)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            next_byte = time.monotonic() + TRICKLE_INTERVAL_S
            while not self.stopping.is_set():
                readable, _, _ = select.select([conn], [], [], 0.02)
                if readable and not conn.recv(4096):
                    break  # the client hung up
                if time.monotonic() >= next_byte:
                    conn.sendall(b"x")
                    next_byte += TRICKLE_INTERVAL_S
        connection.closed_at = datetime.now(UTC)

    def of_job(self, job_id: str) -> list[Connection]:
        with self.lock:
            return [c for c in self.connections if c.event["data"]["job_id"] == job_id]


def _fail_first_delivery_of_each_event(
    receiver: Receiver, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str]]:
    seen = any(
        d.headers.get("webhook-id") == headers.get("webhook-id") for d in receiver.deliveries
    )
    return (200 if seen else 500), {}


@dataclass
class WebhookWorld:
    stack: ServiceStack
    hooks: Receiver
    bouncer: Receiver
    forbidden: Receiver
    huge: Receiver
    slow: TrickleReceiver
    store: Store
    celery: Celery
    webhook_queue: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookWorld]:
    forbidden = Receiver("forbidden", lambda r, path, headers: (200, {}))
    forbidden.start()
    bouncer = Receiver(
        "bouncer", lambda r, path, headers: (307, {"location": f"{forbidden.url}/stolen"})
    )
    bouncer.start()
    hooks = Receiver("hooks", _fail_first_delivery_of_each_event)
    hooks.start()
    huge = Receiver("huge", _fail_first_delivery_of_each_event, answer_body_bytes=HUGE_BODY_BYTES)
    huge.start()
    slow = TrickleReceiver()
    slow.start()
    allowed = ",".join(f"127.0.0.1:{r.port}" for r in (hooks, bouncer, huge, slow))
    settings = {
        **STACK_SETTINGS,
        "NNKGEO_WEBHOOK_ALLOWED_HOSTS": allowed,
        # Only alpha has a secret: beta may not use callback_url.
        "NNKGEO_WEBHOOK_SECRETS": f"alpha:{ALPHA_SECRET}",
        "NNKGEO_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "NNKGEO_WEBHOOK_BACKOFF_S": str(BACKOFF_S),
        "NNKGEO_WEBHOOK_TIMEOUT_S": str(OPERATION_TIMEOUT_S),
        "NNKGEO_WEBHOOK_DEADLINE_S": str(DEADLINE_S),
    }
    # As compose: jobs on one worker, webhook deliveries on a worker of their own.
    stack = ServiceStack(
        tmp_path_factory.mktemp("webhook-stack"), settings=settings, worker_queues="cpu,gpu"
    )
    try:
        stack.start()
        stack.start_webhook_worker()
        client_settings = Settings(redis_url=stack.redis_url)
        yield WebhookWorld(
            stack=stack,
            hooks=hooks,
            bouncer=bouncer,
            forbidden=forbidden,
            huge=huge,
            slow=slow,
            store=Store.from_settings(client_settings),
            celery=create_celery_app(client_settings),
            webhook_queue=webhook_queue(client_settings),
        )
    finally:
        stack.stop()
        for receiver in (hooks, bouncer, forbidden, huge, slow):
            receiver.stop()


@pytest.fixture(scope="module")
def alpha(world: WebhookWorld) -> Iterator[httpx.Client]:
    with world.stack.client("alpha") as client:
        yield client


@pytest.fixture(scope="module")
def points(alpha: httpx.Client) -> tuple[str, str]:
    """Dataset ids of 200 random points and their labels, uploaded by alpha."""
    rng = np.random.default_rng(5)
    embeddings = rng.standard_normal((200, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=200).astype(np.int64)
    return upload_array(alpha, embeddings), upload_array(alpha, labels)


@pytest.fixture(scope="module")
def beta_points(world: WebhookWorld) -> str:
    """A dataset id of 60 random points, uploaded by beta (who has no callback_url)."""
    with world.stack.client("beta") as beta:
        return upload_array(
            beta, np.random.default_rng(17).standard_normal((60, 4)).astype(np.float32)
        )


def _submit_with_callback(alpha: httpx.Client, body: dict[str, Any], url: str) -> dict[str, Any]:
    response = submit(alpha, {**body, "callback_url": url})
    assert response.status_code == 202, response.text
    return response.json()


def _webhook_of(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    return client.get(f"/v1/jobs/{job_id}").json()["webhook"]


def _wait_for_webhook_end(
    client: httpx.Client, job_id: str, *, timeout_s: float = 30
) -> dict[str, Any]:
    """The job's webhook field once its delivery is over: delivered or failed."""
    wait_until(
        lambda: (_webhook_of(client, job_id) or {}).get("status") in ("delivered", "failed"),
        timeout_s=timeout_s,
        interval_s=0.05,
        what=f"the webhook of job {job_id} to be delivered or given up",
    )
    webhook = _webhook_of(client, job_id)
    assert webhook is not None
    return webhook


def _process_tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    total = 0
    for process in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


@contextlib.contextmanager
def _peak_rss(pid: int, *, interval_s: float = 0.01) -> Iterator[list[int]]:
    """Sample the RSS of `pid` and its children until the block ends; yields [peak]."""
    peak = [_process_tree_rss(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval_s):
            peak[0] = max(peak[0], _process_tree_rss(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


def test_succeeded_job_is_posted_signed_and_retried_after_a_500(
    world: WebhookWorld, alpha: httpx.Client, points: tuple[str, str]
) -> None:
    job = _submit_with_callback(alpha, job_body(*points, k=5), f"{world.hooks.url}/nnkgeo")
    assert wait_for_status(alpha, job["id"])["status"] == "succeeded"

    first, second = world.hooks.wait_for(job["id"], 2)

    assert (first.answered, second.answered) == (500, 200)
    assert first.path == "/nnkgeo"
    # One event, sent twice: receivers deduplicate on webhook-id.
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    for delivery in (first, second):
        verify(ALPHA_SECRET, delivery.headers, delivery.body)
        assert delivery.headers["content-type"] == "application/json"
    event = second.event
    assert event["type"] == "job.succeeded"
    assert event["data"]["job_id"] == job["id"]
    assert event["data"]["status"] == "succeeded"
    assert event["data"]["links"]["self"] == f"/v1/jobs/{job['id']}"
    assert event["data"]["links"]["report"] == f"/v1/jobs/{job['id']}/report"
    assert "error" not in event["data"]
    delivery = world.store.get_webhook_delivery("alpha", job["id"])
    assert delivery is not None
    assert (delivery.state, delivery.attempts) == (WebhookState.delivered, 2)


def test_the_job_shows_its_webhook_pending_then_delivered(
    world: WebhookWorld, alpha: httpx.Client, points: tuple[str, str]
) -> None:
    job = _submit_with_callback(alpha, job_body(*points, k=4), f"{world.hooks.url}/shown")
    assert job["webhook"]["status"] == "pending"
    wait_for_status(alpha, job["id"])

    world.hooks.wait_for(job["id"], 2)
    webhook = _wait_for_webhook_end(alpha, job["id"])

    delivered_at = webhook.pop("delivered_at")
    assert webhook == {
        "status": "delivered",
        "attempts": 2,
        "last_status_code": 200,
        "last_error": None,
    }
    finished_at = datetime.fromisoformat(alpha.get(f"/v1/jobs/{job['id']}").json()["finished_at"])
    assert finished_at <= datetime.fromisoformat(delivered_at) <= datetime.now(UTC)
    listed = alpha.get("/v1/jobs", params={"limit": 50}).json()["items"]
    assert next(item for item in listed if item["id"] == job["id"])["webhook"]["attempts"] == 2


def test_a_delivered_event_is_not_posted_again_when_its_message_is_redelivered(
    world: WebhookWorld, alpha: httpx.Client, points: tuple[str, str]
) -> None:
    job = _submit_with_callback(alpha, job_body(*points, k=6), f"{world.hooks.url}/again")
    wait_for_status(alpha, job["id"])
    (*_, delivered) = world.hooks.wait_for(job["id"], 2)

    # The same message again, as the broker would redeliver it after a worker crash.
    outcome = world.celery.send_task(
        DELIVER_WEBHOOK_TASK,
        args=["alpha", job["id"], delivered.headers["webhook-id"]],
        queue=world.webhook_queue,
        task_id=f"redelivery-{job['id']}",
    ).get(timeout=20)

    assert outcome == "already-delivered"
    assert len(world.hooks.of_job(job["id"])) == 2


def test_a_cache_hit_is_announced_like_a_job_that_ran(
    world: WebhookWorld, alpha: httpx.Client, points: tuple[str, str]
) -> None:
    body = job_body(*points, k=7)
    wait_for_status(alpha, _submit_with_callback(alpha, body, f"{world.hooks.url}/a")["id"])
    cached = _submit_with_callback(alpha, body, f"{world.hooks.url}/b")
    assert cached["cached"] is True

    *_, delivered = world.hooks.wait_for(cached["id"], 2)

    assert delivered.path == "/b"
    assert delivered.event["type"] == "job.succeeded"


def test_failed_job_event_carries_its_problem(world: WebhookWorld, alpha: httpx.Client) -> None:
    points = np.random.default_rng(13).standard_normal((100, 8)).astype(np.float32)
    dataset_id = upload_array(alpha, points)
    sha = alpha.get(f"/v1/datasets/{dataset_id}").json()["sha256"]
    # The blob is lost behind the service's back: the worker fails the job.
    (world.stack.data_dir / "blobs" / sha[:2] / sha).unlink()
    job = _submit_with_callback(alpha, job_body(dataset_id, name="lost", k=5), world.hooks.url)
    failed = wait_for_status(alpha, job["id"])
    assert failed["status"] == "failed"

    *_, delivered = world.hooks.wait_for(job["id"], 2)

    verify(ALPHA_SECRET, delivered.headers, delivered.body)
    event = delivered.event
    assert event["type"] == "job.failed"
    assert event["data"]["status"] == "failed"
    assert event["data"]["error"] == failed["error"]
    assert event["data"]["error"]["errors"][0]["field"] == "sets[lost].embeddings"
    assert "report" not in event["data"]["links"]


def test_a_queued_job_canceled_through_the_api_is_announced(
    world: WebhookWorld, alpha: httpx.Client, points: tuple[str, str]
) -> None:
    stack = world.stack
    assert stack.worker is not None
    stack.worker.stop()  # the job stays queued, and the API ends it
    try:
        job = _submit_with_callback(alpha, job_body(*points, k=9), world.hooks.url)
        canceled = alpha.post(f"/v1/jobs/{job['id']}/cancel").json()
        assert canceled["status"] == "canceled"
    finally:
        stack.wait_ready(worker=stack.start_worker())

    *_, delivered = world.hooks.wait_for(job["id"], 2)

    verify(ALPHA_SECRET, delivered.headers, delivered.body)
    assert delivered.event["type"] == "job.canceled"
    assert delivered.event["data"]["status"] == "canceled"


def test_callback_host_off_the_allow_list_is_refused_at_submit(
    world: WebhookWorld, alpha: httpx.Client, points: tuple[str, str]
) -> None:
    for url in (
        f"{world.forbidden.url}/hook",  # the right host on another port
        f"http://localhost:{world.hooks.port}/hook",  # another name for it
        "http://169.254.169.254/latest/meta-data",  # a cloud metadata address
    ):
        response = submit(alpha, {**job_body(*points, k=5), "callback_url": url})
        problem = assert_problem(response, 422, field="callback_url")
        assert "allow-list" in problem["detail"], problem

    assert_problem(
        submit(alpha, {**job_body(*points, k=5), "callback_url": "ftp://127.0.0.1/x"}),
        422,
        field="callback_url",
    )
    assert world.forbidden.deliveries == []


def test_tenant_without_a_secret_cannot_use_callback_url(
    world: WebhookWorld, points: tuple[str, str]
) -> None:
    with world.stack.client("beta") as beta:
        embeddings = upload_array(
            beta, np.random.default_rng(3).standard_normal((50, 4)).astype(np.float32)
        )
        response = submit(
            beta, {**job_body(embeddings, k=5), "callback_url": f"{world.hooks.url}/x"}
        )

    problem = assert_problem(response, 422, field="callback_url")
    assert "NNKGEO_WEBHOOK_SECRETS" in problem["detail"]
    assert "operator" in problem["detail"]


def test_redirect_to_a_host_off_the_allow_list_is_not_followed(
    world: WebhookWorld, alpha: httpx.Client, points: tuple[str, str]
) -> None:
    job = _submit_with_callback(alpha, job_body(*points, k=8), f"{world.bouncer.url}/hook")
    wait_for_status(alpha, job["id"])

    attempts = world.bouncer.wait_for(job["id"], MAX_ATTEMPTS)
    wait_until(
        lambda: (
            (d := world.store.get_webhook_delivery("alpha", job["id"])) is not None
            and d.state is WebhookState.given_up
        ),
        timeout_s=10,
        what="the delivery to be given up",
    )
    time.sleep(0.5)  # room for a stray extra attempt to show up

    assert [d.answered for d in attempts] == [307] * MAX_ATTEMPTS
    assert len(world.bouncer.of_job(job["id"])) == MAX_ATTEMPTS
    assert world.forbidden.deliveries == []
    assert _webhook_of(alpha, job["id"]) == {
        "status": "failed",
        "attempts": MAX_ATTEMPTS,
        "last_status_code": 307,
        "last_error": "HTTP 307: redirects are not followed",
        "delivered_at": None,
    }


def test_a_receiver_that_trickles_is_cut_off_at_the_deadline_and_delays_no_job(
    world: WebhookWorld, alpha: httpx.Client, points: tuple[str, str], beta_points: str
) -> None:
    job = _submit_with_callback(alpha, job_body(*points, k=10), f"{world.slow.url}/slow")
    wait_for_status(alpha, job["id"])
    wait_until(
        lambda: world.slow.of_job(job["id"]),
        timeout_s=20,
        interval_s=0.02,
        what="the first POST to the slow receiver",
    )

    # Another tenant's tiny job, while a webhook worker is held by the receiver.
    with world.stack.client("beta") as beta:
        tiny = submit(beta, job_body(beta_points, k=5)).json()
        tiny = wait_for_status(beta, tiny["id"], interval_s=0.02)
    wait_until(
        lambda: world.slow.of_job(job["id"])[0].closed_at,
        timeout_s=DEADLINE_S + 2,
        interval_s=0.02,
        what="the first POST to the slow receiver to end by the deadline",
    )
    webhook = _wait_for_webhook_end(alpha, job["id"])

    assert webhook["status"] == "failed"
    attempts = world.slow.of_job(job["id"])
    assert len(attempts) == MAX_ATTEMPTS
    for attempt in attempts:
        # Trickled bytes keep every read short: only the total deadline ends the POST.
        assert DEADLINE_S - 0.2 <= attempt.held_s <= DEADLINE_S + 1.0, attempt
    for earlier, later in itertools.pairwise(attempts):
        assert earlier.closed_at is not None
        assert (later.opened_at - earlier.closed_at).total_seconds() >= BACKOFF_S * 0.9
    assert webhook["attempts"] == MAX_ATTEMPTS
    assert webhook["last_status_code"] is None
    assert f"within the {DEADLINE_S:g} s deadline" in webhook["last_error"]

    assert tiny["status"] == "succeeded"
    assert tiny["webhook"] is None  # no callback_url: no webhook field
    tiny_finished = datetime.fromisoformat(tiny["finished_at"])
    tiny_latency_s = (tiny_finished - datetime.fromisoformat(tiny["created_at"])).total_seconds()
    # It ran while the first POST still hung: it waited for no webhook.
    first_closed = attempts[0].closed_at
    assert first_closed is not None
    assert tiny_finished < first_closed, (tiny, attempts[0])
    assert tiny_latency_s < TINY_JOB_LATENCY_BOUND_S, tiny_latency_s


def test_a_huge_answer_is_not_read_past_its_first_bytes(
    world: WebhookWorld, alpha: httpx.Client, points: tuple[str, str]
) -> None:
    webhooks = world.stack.webhook_worker
    assert webhooks is not None
    with _peak_rss(webhooks.process.pid) as peak:
        baseline = peak[0]
        job = _submit_with_callback(alpha, job_body(*points, k=11), f"{world.huge.url}/huge")
        # Stop waiting as soon as the worker outgrows the bound: it may never recover.
        wait_until(
            lambda: (
                peak[0] - baseline >= RSS_GROWTH_BOUND_BYTES
                or (_webhook_of(alpha, job["id"]) or {}).get("status") != "pending"
            ),
            timeout_s=30,
            interval_s=0.05,
            what="the delivery to the huge receiver to end",
        )

    growth = peak[0] - baseline
    assert growth < RSS_GROWTH_BOUND_BYTES, f"the webhooks worker grew {growth / 1024**2:.0f} MiB"
    webhook = _webhook_of(alpha, job["id"])
    assert webhook is not None
    first, second = world.huge.of_job(job["id"])[:2]
    assert (first.answered, second.answered) == (500, 200)
    assert (webhook["status"], webhook["attempts"]) == ("delivered", 2)
    assert webhook["last_status_code"] == 200
    # The worker hung up after the first bytes: the receiver could not push its 1.5 GiB.
    for delivery in (first, second):
        assert delivery.body_bytes_sent < RSS_GROWTH_BOUND_BYTES, delivery.body_bytes_sent
