"""A stale attempt racing a new one, across two workers: one result, one webhook.

The worker running a job is frozen (SIGSTOP on its whole process group: alive, holding
its task, but renewing nothing), not killed. Its lease (3 s) expires, the other worker's
reaper requeues the job, and the other worker runs it to the end as attempt 2; its end is
POSTed to a real receiver. Then the frozen worker is thawed (SIGCONT): attempt 1 carries
on where it stopped, finds its lease gone and its writes refused, and must change
nothing: not the job record, not the result, not the blobs, and no second webhook.

`tests/integration/test_store_fencing.py` checks each fenced script on its own; this is
the same fence reached through the real worker code, with a live stale process.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from celery import Celery

from api_schemas import JobStatus
from jobstate.dispatch import ANALYZE_SETS_TASK
from jobstate.settings import Settings
from jobstate.store import Store
from jobstate.store.keys import result_key
from nnkgeo.webhooks import generate_secret, verify
from tests.integration.conftest import STACK_SETTINGS
from tests.integration.helpers import blob_files, job_body, submit, upload_array, wait_for_status
from tests.integration.stack import Managed, ServiceStack, wait_until

pytestmark = pytest.mark.integration

ALPHA_SECRET = generate_secret()
# Freeze to attempt 2's claim: the lease (3 s), a reaper sweep (1 s), the reaper lock
# passing from the frozen worker (2 s) and the message's trip.
RECLAIM_BOUND_S = 12.0
# Thaw to attempt 1's task ending: a heartbeat (1 s) or a progress call (0.5 s) notices.
STALE_END_BOUND_S = 30.0
# After the stale attempt ended: long enough for a second webhook to arrive, were one sent.
QUIET_S = 2.0


@dataclass
class Receiver:
    """An HTTP server in a thread that answers 200 and records every POST."""

    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    receiver.posts.append((headers, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def of_job(self, job_id: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [post for post in self.posts if job_id.encode() in post[1]]


@dataclass
class RaceWorld:
    stack: ServiceStack
    receiver: Receiver
    store: Store
    # The two job workers: node name -> process.
    workers: dict[str, Managed]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaceWorld]:
    receiver = Receiver()
    receiver.start()
    settings = {
        **STACK_SETTINGS,
        # Time limits far above the freeze, which counts against them: attempt 1 must end
        # because its run was superseded, not because its soft time limit passed.
        "NNKGEO_TASK_SOFT_TIME_LIMIT_S": "60",
        "NNKGEO_TASK_TIME_LIMIT_S": "70",
        "NNKGEO_WEBHOOK_ALLOWED_HOSTS": receiver.address,
        "NNKGEO_WEBHOOK_SECRETS": f"alpha:{ALPHA_SECRET}",
    }
    # Jobs on two workers; webhooks on a worker of their own, which is never frozen.
    stack = ServiceStack(
        tmp_path_factory.mktemp("stale-attempt"), settings=settings, worker_queues="cpu,gpu"
    )
    store: Store | None = None
    second_worker: Managed | None = None
    try:
        stack.start()
        stack.start_webhook_worker()
        assert stack.worker is not None
        first = stack.worker.process.args[stack.worker.process.args.index("--hostname") + 1]
        second = f"nnkgeo-second-{uuid.uuid4().hex[:8]}@localhost"
        second_worker = stack._spawn_worker(
            "worker-second", second, queues="cpu,gpu", concurrency=1
        )
        stack.wait_ready(worker=second)
        store = Store.from_settings(Settings(redis_url=stack.redis_url))
        yield RaceWorld(stack, receiver, store, {first: stack.worker, second: second_worker})
    finally:
        if store is not None:
            store.close()
        for managed in (stack.worker, second_worker):
            if managed is not None:
                # A group left frozen by a failed test would ignore SIGTERM until thawed.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(managed.process.pid, signal.SIGCONT)
        if second_worker is not None:
            second_worker.stop()
        stack.stop()
        receiver.stop()


def _node_running(stack: ServiceStack, job_id: str, nodes: list[str]) -> str:
    """The node whose active tasks include the job's ``analyze_sets``."""
    control = Celery(broker=stack.redis_url)
    found: dict[str, str] = {}

    def located() -> bool:
        active = control.control.inspect(destination=nodes, timeout=1).active() or {}
        for node, tasks in active.items():
            if any(job_id in (task.get("args") or []) for task in tasks):
                found["node"] = node
                return True
        return False

    try:
        wait_until(located, timeout_s=20, interval_s=0.2, what="the worker running the job")
    finally:
        control.close()
    return found["node"]


def _snapshot(world: RaceWorld, job_id: str) -> tuple[Any, ...]:
    """What a stale attempt must not change: the job, its result, the blob files."""
    client = redis.Redis.from_url(world.stack.redis_url, decode_responses=True)
    try:
        result = client.hgetall(result_key("alpha", job_id))
        results = sorted(client.scan_iter(match=result_key("alpha", "*")))
    finally:
        client.close()
    blobs: set[Path] = blob_files(world.stack.data_dir)
    return world.store.get_job("alpha", job_id), result, results, blobs


def _submit_and_freeze(world: RaceWorld, alpha: httpx.Client, *, seed: int) -> tuple[str, Managed]:
    """Submit a job with a callback; freeze its worker once the core runs; (id, worker).

    Frozen mid-analysis, so that attempt 1 holds its lease and has work left to do.
    """
    points = np.random.default_rng(seed).standard_normal((12_000, 64)).astype(np.float32)
    body = {
        **job_body(upload_array(alpha, points), name="x", k=50),
        "callback_url": f"http://{world.receiver.address}/hook",
    }
    response = submit(alpha, body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    wait_for_status(alpha, job_id, ("running",), timeout_s=30, interval_s=0.05)
    frozen = world.workers[_node_running(world.stack, job_id, list(world.workers))]
    wait_until(
        lambda: alpha.get(f"/v1/jobs/{job_id}").json()["progress"]["stage"] != "starting",
        timeout_s=30,
        interval_s=0.05,
        what="the job's first progress",
    )
    os.killpg(frozen.process.pid, signal.SIGSTOP)
    return job_id, frozen


def _wait_for_attempt_2(store: Store, job_id: str) -> None:
    def claimed_again() -> bool:
        record = store.get_job("alpha", job_id)
        return record is not None and record.attempts == 2

    wait_until(claimed_again, timeout_s=RECLAIM_BOUND_S, interval_s=0.1, what="attempt 2")


def _wait_for_stale_task_end(frozen: Managed, job_id: str) -> str:
    """Attempt 1's task, thawed, returns (celery logs it); the frozen worker's log.

    Only attempt 1's task can end on that worker first: one pool process, busy with it,
    and no prefetch beyond it.
    """
    task_ended = re.compile(rf"Task {re.escape(ANALYZE_SETS_TASK)}\[{job_id}\] (succeeded|raised)")
    wait_until(
        lambda: task_ended.search(frozen.log_tail(400)) is not None,
        timeout_s=STALE_END_BOUND_S,
        interval_s=0.2,
        what="attempt 1's task to end after the thaw",
    )
    return frozen.log_tail(400)


def _assert_one_result_and_one_webhook(
    world: RaceWorld, alpha: httpx.Client, job_id: str, *, results_before: list[str]
) -> None:
    """Attempt 2's result is the job's, the only new one; one signed webhook, delivered."""
    record, result, results, _ = _snapshot(world, job_id)
    assert record is not None
    assert (record.status, record.attempts, record.result_id) == (JobStatus.succeeded, 2, job_id)
    assert result
    assert sorted(set(results) - set(results_before)) == [result_key("alpha", job_id)]
    posts = world.receiver.of_job(job_id)
    assert len(posts) == 1, posts
    headers, payload = posts[0]
    verify(ALPHA_SECRET, headers, payload)
    assert b'"job.succeeded"' in payload
    webhook = alpha.get(f"/v1/jobs/{job_id}").json()["webhook"]
    assert webhook["status"] == "delivered" and webhook["attempts"] == 1, webhook


def test_a_frozen_attempt_thawed_after_a_newer_one_finished_changes_nothing(
    world: RaceWorld,
) -> None:
    store = world.store
    results_before = _snapshot(world, "none")[2]
    with world.stack.client("alpha") as alpha:
        job_id, frozen = _submit_and_freeze(world, alpha, seed=31)
        try:
            _wait_for_attempt_2(store, job_id)
            final = wait_for_status(alpha, job_id, timeout_s=60, interval_s=0.1)
            assert final["status"] == "succeeded", final
            wait_until(
                lambda: len(world.receiver.of_job(job_id)) >= 1,
                timeout_s=20,
                interval_s=0.05,
                what="the webhook of attempt 2",
            )
            before = _snapshot(world, job_id)
            # Attempt 1 is still alive (frozen), not dead: the race is real.
            assert frozen.process.poll() is None
        finally:
            os.killpg(frozen.process.pid, signal.SIGCONT)

        # Attempt 1 resumes: its heartbeat finds the lease gone, its next progress call
        # is refused, and its task returns.
        log = _wait_for_stale_task_end(frozen, job_id)
        time.sleep(QUIET_S)
        after = _snapshot(world, job_id)
        _assert_one_result_and_one_webhook(world, alpha, job_id, results_before=results_before)

    assert f"job {job_id}: attempt 1 lost its lease" in log, log
    # It stopped at its next progress call (superseded), and its outcome was refused
    # (end_job's line; a redelivery's "...; nothing to do" does not match).
    assert "Soft time limit" not in log, log
    assert re.search(rf"job {job_id} already succeeded$", log, re.MULTILINE), log
    # Nothing changed: the job record, its result, the result keys, the blob files.
    assert after == before


def test_a_frozen_attempt_thawed_while_the_newer_one_runs_stops_and_leaves_it_be(
    world: RaceWorld,
) -> None:
    store = world.store
    results_before = _snapshot(world, "none")[2]
    with world.stack.client("alpha") as alpha:
        job_id, frozen = _submit_and_freeze(world, alpha, seed=37)
        try:
            _wait_for_attempt_2(store, job_id)
            # Attempt 2 in its core too: the two attempts now run side by side.
            wait_until(
                lambda: (
                    alpha.get(f"/v1/jobs/{job_id}").json()["progress"]["stage"]
                    not in ("requeued", "starting")
                ),
                timeout_s=30,
                interval_s=0.05,
                what="attempt 2's first progress",
            )
            record = store.get_job("alpha", job_id)
            assert record is not None
            assert (record.status, record.attempts) == (JobStatus.running, 2)
        finally:
            os.killpg(frozen.process.pid, signal.SIGCONT)

        log = _wait_for_stale_task_end(frozen, job_id)
        final = wait_for_status(alpha, job_id, timeout_s=60, interval_s=0.1)
        assert final["status"] == "succeeded", final
        wait_until(
            lambda: len(world.receiver.of_job(job_id)) >= 1,
            timeout_s=20,
            interval_s=0.05,
            what="the webhook of attempt 2",
        )
        time.sleep(QUIET_S)
        _assert_one_result_and_one_webhook(world, alpha, job_id, results_before=results_before)

    assert f"job {job_id}: attempt 1 lost its lease" in log, log
    assert "Soft time limit" not in log, log
    # Its canceled outcome was refused: while attempt 2 ran ("no longer owns the job"),
    # or, had attempt 2 finished first, as a finished job's.
    assert re.search(
        rf"job {job_id}: attempt 1 no longer owns the job|job {job_id} already succeeded$",
        log,
        re.MULTILINE,
    ), log
    # Attempt 2 kept its lease throughout: the stale attempt released or renewed nothing.
    for worker in world.workers.values():
        assert f"job {job_id}: attempt 2 lost its lease" not in worker.log_tail(400)
