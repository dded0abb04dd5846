"""Redis restarted under a running job: the API answers 503 meanwhile, the job finishes once.

A redis-server of this module's own, with an append-only file (its own port and dir), an
API and one worker on it. A job that runs several seconds is submitted; mid-job Redis is
stopped with SIGTERM (a clean shutdown flushes the AOF), the API is asked for the job
while it is down (a 503 problem with Retry-After, `service/errors.py`), and Redis is
started again on the same port and dir. The worker cancels its running task when its
broker connection drops (``worker_cancel_long_running_tasks_on_connection_loss`` in
`jobstate.dispatch`), so attempt 1 ends there; its lease expires (3 s), the reaper
requeues the job, and attempt 2 finishes it: one result, ``succeeded``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import redis

from api_schemas import JobStatus
from jobstate.settings import Settings
from jobstate.store import Store
from jobstate.store.keys import result_key
from tests.integration.conftest import STACK_SETTINGS
from tests.integration.helpers import (
    assert_problem,
    job_body,
    submit,
    upload_array,
    wait_for_status,
)
from tests.integration.stack import ServiceStack, free_port, wait_until

pytestmark = pytest.mark.integration

REDIS_BINARY = shutil.which("redis-server")
# How long Redis stays down, at least: well under the lease (3 s, renewed every second),
# so that the cancel on connection loss, not a lease lapsing during the outage, is what
# makes the job run again.
OUTAGE_S = 0.5
# Redis back to the API answering again: a request or two on a fresh connection.
API_RECOVERY_BOUND_S = 10.0
# Redis back to the job's success: the lease (3 s), a reaper sweep (1 s), the rerun.
JOB_RECOVERY_BOUND_S = 60.0


def _start_redis(stack: ServiceStack, port: int) -> None:
    """redis-server on `port`, its AOF in the stack's ``redis`` dir (the same each time)."""
    assert REDIS_BINARY is not None
    redis_dir = stack.root / "redis"
    redis_dir.mkdir(exist_ok=True)
    stack.redis_url = f"redis://127.0.0.1:{port}/0"
    stack.redis_process = stack._spawn(
        "redis",
        [
            REDIS_BINARY,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            # The default fsync policy (every second): the clean shutdown flushes the rest.
            "--appendonly",
            "yes",
            "--dir",
            str(redis_dir),
        ],
    )
    client = redis.Redis.from_url(stack.redis_url)
    try:
        wait_until(client.ping, timeout_s=15, what="redis-server")
    finally:
        client.close()


@dataclass
class RestartWorld:
    stack: ServiceStack
    port: int
    store: Store


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartWorld]:
    if REDIS_BINARY is None:
        pytest.skip("needs a redis-server of its own to restart")
    settings = {
        **STACK_SETTINGS,
        # Time limits well above the job's run on a busy 2-core machine: this test is
        # about the restart, and a soft time limit would fail the job for another reason.
        "NNKGEO_TASK_SOFT_TIME_LIMIT_S": "60",
        "NNKGEO_TASK_TIME_LIMIT_S": "70",
    }
    stack = ServiceStack(tmp_path_factory.mktemp("redis-restart"), settings=settings)
    stack.root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    store: Store | None = None
    try:
        _start_redis(stack, port)
        node = stack.start_worker()
        stack.start_api()
        stack.wait_ready(worker=node)
        store = Store.from_settings(Settings(redis_url=stack.redis_url))
        yield RestartWorld(stack=stack, port=port, store=store)
    finally:
        if store is not None:
            store.close()
        stack.stop()


def test_a_job_survives_a_redis_restart_and_the_api_answers_503_meanwhile(
    world: RestartWorld,
) -> None:
    stack, store = world.stack, world.store
    assert stack.environment()["NNKGEO_LEASE_S"] == "3"
    with stack.client("alpha") as alpha:
        points = np.random.default_rng(23).standard_normal((12_000, 64)).astype(np.float32)
        dataset = upload_array(alpha, points)
        job_id = submit(alpha, job_body(dataset, name="x", k=50)).json()["id"]
        wait_for_status(alpha, job_id, ("running",), timeout_s=30, interval_s=0.05)
        wait_until(
            lambda: alpha.get(f"/v1/jobs/{job_id}").json()["progress"]["stage"] != "starting",
            timeout_s=30,
            interval_s=0.05,
            what="the job's first progress",
        )

        # A clean shutdown (SIGTERM): Redis writes out its AOF before it exits.
        assert stack.redis_process is not None
        stack.redis_process.stop()
        stopped = time.monotonic()
        assert stack.redis_process.process.returncode == 0, stack.redis_process.log_tail()

        down = alpha.get(f"/v1/jobs/{job_id}")
        problem = assert_problem(down, 503)
        assert int(down.headers["retry-after"]) > 0, down.headers
        assert problem["status"] == 503
        # A write is refused the same way, not half-done.
        refused = submit(alpha, job_body(dataset, name="y", k=5))
        assert_problem(refused, 503)
        # Down for a while: the worker's heartbeat and reaper meet the outage too.
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))

        _start_redis(stack, world.port)
        restarted = time.monotonic()
        # What the AOF kept: the job, still running as attempt 1 (or already requeued).
        record = store.get_job("alpha", job_id)
        assert record is not None, "the job record did not survive the restart"
        assert record.status in (JobStatus.running, JobStatus.queued), record.status

        wait_until(
            lambda: alpha.get(f"/v1/jobs/{job_id}").status_code == 200,
            timeout_s=API_RECOVERY_BOUND_S,
            interval_s=0.1,
            what="the API to answer again",
        )
        final = wait_for_status(alpha, job_id, timeout_s=JOB_RECOVERY_BOUND_S, interval_s=0.1)
        recovered_s = time.monotonic() - restarted
        report = alpha.get(f"/v1/jobs/{job_id}/report")

    assert final["status"] == "succeeded", (final, stack.worker.log_tail() if stack.worker else "")
    assert report.status_code == 200, report.text
    record = store.get_job("alpha", job_id)
    assert record is not None
    assert (record.status, record.result_id) == (JobStatus.succeeded, job_id)
    # Exactly one result: the one record under the job's id, and no other for the tenant.
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        results = list(client.scan_iter(match=result_key("alpha", "*")))
    finally:
        client.close()
    assert results == [result_key("alpha", job_id)], results
    # Attempt 1 was canceled with the connection (celery says so), and the lease path
    # ran attempt 2.
    assert stack.worker is not None
    log = stack.worker.log_tail(600)
    assert "cannot be acknowledged after a connection loss" in log, log
    assert record.attempts == 2, (record.attempts, recovered_s)
    assert "lost its lease; requeued" in log, log
