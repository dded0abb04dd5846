"""Webhooks: a job's end is POSTed, signed, to its callback_url; retried; never elsewhere.

A stack of its own (Redis, worker, API), started with webhook settings that name the
local receivers below, and a short backoff so that retries take a fraction of a second.
Receivers are plain `http.server`s on 127.0.0.1:

- ``hooks``: answers 500 to the first delivery of each event, 200 to the next ones;
- ``bouncer``: on the allow-list, answers every delivery with a redirect to ``forbidden``;
- ``forbidden``: not on the allow-list; no request may ever reach it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from celery import Celery

from nnkgeo.webhooks import generate_secret, verify
from service.settings import Settings
from service.store import Store, WebhookState
from tests.integration.conftest import STACK_SETTINGS
from tests.integration.helpers import (
    assert_problem,
    job_body,
    submit,
    upload_array,
    wait_for_status,
)
from tests.integration.stack import ServiceStack, wait_until
from workers.celery_app import DELIVER_WEBHOOK_TASK, create_celery_app

pytestmark = pytest.mark.integration

ALPHA_SECRET = generate_secret()
MAX_ATTEMPTS = 3


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server in a thread that records every request it gets."""

    name: str
    answer: Any  # (receiver, path, headers) -> (status, extra headers)
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
                    receiver.deliveries.append(Delivery(self.path, headers, body, status))
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

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
    store: Store
    celery: Celery


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
    settings = {
        **STACK_SETTINGS,
        "NNKGEO_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{hooks.port},127.0.0.1:{bouncer.port}",
        # Only alpha has a secret: beta may not use callback_url.
        "NNKGEO_WEBHOOK_SECRETS": f"alpha:{ALPHA_SECRET}",
        "NNKGEO_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "NNKGEO_WEBHOOK_BACKOFF_S": "0.2",
        "NNKGEO_WEBHOOK_TIMEOUT_S": "5",
    }
    stack = ServiceStack(tmp_path_factory.mktemp("webhook-stack"), settings=settings)
    try:
        stack.start()
        client_settings = Settings(redis_url=stack.redis_url)
        yield WebhookWorld(
            stack=stack,
            hooks=hooks,
            bouncer=bouncer,
            forbidden=forbidden,
            store=Store.from_settings(client_settings),
            celery=create_celery_app(client_settings),
        )
    finally:
        stack.stop()
        for receiver in (hooks, bouncer, forbidden):
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


def _submit_with_callback(alpha: httpx.Client, body: dict[str, Any], url: str) -> dict[str, Any]:
    response = submit(alpha, {**body, "callback_url": url})
    assert response.status_code == 202, response.text
    return response.json()


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
        queue="cpu",
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
        assert alpha.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
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
    delivery = world.store.get_webhook_delivery("alpha", job["id"])
    assert delivery is not None
    assert delivery.attempts == MAX_ATTEMPTS
    assert delivery.last_outcome == "HTTP 307"
