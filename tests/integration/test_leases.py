"""Leases in a running stack: a job whose whole worker dies resumes on another worker.

The session stack runs with NNKGEO_LEASE_S=3 (tests/integration/conftest.py): the
killed worker's lease expires within 3 s, the surviving worker's reaper (sweeping every
second) requeues the job, and it is claimed as attempt 2. The broker's own redelivery
(visibility timeout 14 s) comes later, and is dropped; the bounds below sit under it,
so a pass proves the lease path, not the broker's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from celery import Celery

from api_schemas import JobStatus
from jobstate.dispatch import ASSEMBLE_JOB_TASK, SOLVE_BLOCK_TASK
from jobstate.settings import Settings
from jobstate.store import Store
from jobstate.store.keys import lease_key
from tests.integration.helpers import job_body, submit, upload_array, wait_for_status
from tests.integration.stack import Managed, ServiceStack, wait_until

pytestmark = pytest.mark.integration

# Kill to the next attempt's claim: lease (3 s) + a reaper sweep (1 s) + the lock and
# the message's trip; under the broker's redelivery (14 s after the first delivery).
RESUME_BOUND_S = 10.0


@pytest.fixture(scope="module")
def store(stack: ServiceStack) -> Store:
    return Store.from_settings(Settings(redis_url=stack.redis_url))


@pytest.fixture
def second_worker(stack: ServiceStack) -> Iterator[tuple[str, Managed]]:
    """Another worker on the job queues, up and ready; the stack's worker restored after."""
    node = f"nnkgeo-second-{uuid.uuid4().hex[:8]}@localhost"
    worker = stack._spawn_worker("worker-second", node, queues="cpu,gpu", concurrency=1)
    try:
        stack.wait_ready(worker=node)
        yield node, worker
    finally:
        worker.stop()
        assert stack.worker is not None
        if stack.worker.process.poll() is not None:
            stack.restart_worker()


# As tests/integration/test_sharded_jobs.py: 12,000 points run as three row blocks.
SHARDING_SETTINGS = {
    "NNKGEO_SHARD_MIN_POINTS": "8192",
    "NNKGEO_SHARD_ROWS": "4096",
    "NNKGEO_WORKER_THREADS": "1",
}


@contextlib.contextmanager
def _two_workers(
    stack: ServiceStack, settings: dict[str, str]
) -> Iterator[list[tuple[str, Managed]]]:
    """Two workers with `settings`, in place of the stack's; the usual worker back after."""
    assert stack.worker is not None
    stack.worker.stop()
    started: list[tuple[str, Managed]] = []
    try:
        for _ in range(2):
            node = stack.start_worker(**settings)
            assert stack.worker is not None
            started.append((node, stack.worker))
        for node, _ in started:
            stack.wait_ready(worker=node)
        yield started
    finally:
        for _, worker in started:
            worker.stop()
        stack.wait_ready(worker=stack.start_worker())


@pytest.fixture
def sharding_workers(stack: ServiceStack) -> Iterator[list[tuple[str, Managed]]]:
    """Two workers that shard, in place of the stack's; the usual worker back after."""
    with _two_workers(stack, SHARDING_SETTINGS) as started:
        yield started


def _node_running(
    stack: ServiceStack, job_id: str, nodes: list[str], *, task: str | None = None
) -> str:
    control = Celery(broker=stack.redis_url)
    try:
        found: dict[str, str] = {}

        def located() -> bool:
            active = control.control.inspect(destination=nodes, timeout=1).active() or {}
            for node, tasks in active.items():
                if any(
                    job_id in (t.get("args") or []) and task in (None, t.get("name")) for t in tasks
                ):
                    found["node"] = node
                    return True
            return False

        wait_until(located, timeout_s=20, interval_s=0.2, what="the worker running the job")
        return found["node"]
    finally:
        control.close()


def test_a_job_whose_whole_worker_is_killed_resumes_on_another_within_the_lease(
    alpha: httpx.Client,
    long_running_embeddings: str,
    stack: ServiceStack,
    store: Store,
    second_worker: tuple[str, Managed],
) -> None:
    assert stack.worker is not None
    second_node, second = second_worker
    first_node = stack.worker.process.args[stack.worker.process.args.index("--hostname") + 1]
    job_id = submit(alpha, job_body(long_running_embeddings, name="leased", k=50)).json()["id"]
    wait_for_status(alpha, job_id, ("running",), interval_s=0.05)
    runner = _node_running(stack, job_id, [first_node, second_node])
    victim, survivor = (stack.worker, second) if runner == first_node else (second, stack.worker)

    # The whole worker (main process and pool child) dies at once, as with a lost host.
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    killed_at = time.monotonic()

    def resumed() -> bool:
        record = store.get_job("alpha", job_id)
        return record is not None and record.attempts == 2

    wait_until(resumed, timeout_s=RESUME_BOUND_S, interval_s=0.1, what="attempt 2's claim")
    assert time.monotonic() - killed_at < RESUME_BOUND_S
    final = wait_for_status(alpha, job_id, timeout_s=90)
    assert final["status"] == "succeeded", final
    record = store.get_job("alpha", job_id)
    assert record is not None
    assert (record.status, record.attempts) == (JobStatus.succeeded, 2)
    assert "lost its lease; requeued" in survivor.log_tail(400)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(victim.process.pid, signal.SIGKILL)


def test_a_sharded_job_whose_worker_is_killed_mid_block_resends_the_block(
    alpha: httpx.Client,
    long_running_embeddings: str,
    stack: ServiceStack,
    store: Store,
    sharding_workers: list[tuple[str, Managed]],
) -> None:
    nodes = [node for node, _ in sharding_workers]
    job_id = submit(alpha, job_body(long_running_embeddings, name="big", k=30)).json()["id"]
    runner = _node_running(stack, job_id, nodes, task=SOLVE_BLOCK_TASK)
    victim = dict(sharding_workers)[runner]

    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)

    def block_sent_again() -> bool:
        run = store.get_run("alpha", job_id, 1)
        return run is not None and 2 in run.deliveries.values()

    wait_until(
        block_sent_again, timeout_s=RESUME_BOUND_S, interval_s=0.1, what="the block's resend"
    )
    final = wait_for_status(alpha, job_id, timeout_s=90)
    assert final["status"] == "succeeded", final
    record = store.get_job("alpha", job_id)
    run = store.get_run("alpha", job_id, 1)
    assert record is not None and run is not None
    # The job was never claimed again: only the killed block was sent again.
    assert record.attempts == 1
    assert run.complete
    blocks = {key: n for key, n in run.deliveries.items() if key in run.plan.block_keys()}
    assert sorted(blocks.values()) == [1, 1, 2]
    survivor = next(worker for node, worker in sharding_workers if node != runner)
    assert "lost its lease; sent again" in survivor.log_tail(400)


# An assembly that takes seconds: with few candidates (k=5) the blocks' solve is cheap,
# while the intrinsic dimension, estimated in the assembly from every point
# (id_sample = all), costs about a full kNN search again. 20,000 points in 100
# dimensions (8 MB, under the upload limit) run as three blocks; the assembly takes a
# few seconds, the blocks about as much together. Longer task limits than the stack's,
# so that a busy machine does not end the assembly by its time limit instead.
ASSEMBLY_POINTS = 20_000
ASSEMBLY_DIMENSIONS = 100
SLOW_ASSEMBLY_SETTINGS = {
    "NNKGEO_SHARD_MIN_POINTS": "8192",
    "NNKGEO_SHARD_ROWS": "8192",
    "NNKGEO_WORKER_THREADS": "1",
    "NNKGEO_TASK_SOFT_TIME_LIMIT_S": "60",
    "NNKGEO_TASK_TIME_LIMIT_S": "70",
}


@pytest.fixture(scope="module")
def slow_assembly_embeddings(alpha: httpx.Client) -> str:
    points = (
        np.random.default_rng(11)
        .standard_normal((ASSEMBLY_POINTS, ASSEMBLY_DIMENSIONS))
        .astype(np.float32)
    )
    return upload_array(alpha, points)


@pytest.fixture
def slow_assembly_workers(stack: ServiceStack) -> Iterator[list[tuple[str, Managed]]]:
    """Two sharding workers whose tasks may run a minute."""
    with _two_workers(stack, SLOW_ASSEMBLY_SETTINGS) as started:
        yield started


def test_a_sharded_job_whose_worker_is_killed_mid_assembly_is_claimed_again(
    alpha: httpx.Client,
    slow_assembly_embeddings: str,
    stack: ServiceStack,
    store: Store,
    slow_assembly_workers: list[tuple[str, Managed]],
) -> None:
    nodes = [node for node, _ in slow_assembly_workers]
    succeeded_before = store.job_metrics().finished.get("succeeded", 0)
    body = job_body(slow_assembly_embeddings, name="assembled", k=5, id_sample=ASSEMBLY_POINTS)
    job_id = submit(alpha, body).json()["id"]

    # The assembly's start takes the job's lease: it is running from then on.
    def assembly_holds_the_lease() -> bool:
        return (store._redis.get(lease_key("alpha", job_id)) or "").startswith("1:assemble-")

    wait_until(assembly_holds_the_lease, timeout_s=30, interval_s=0.02, what="the assembly")
    runner = _node_running(stack, job_id, nodes, task=ASSEMBLE_JOB_TASK)
    victim = dict(slow_assembly_workers)[runner]
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    killed_at = time.monotonic()
    # Killed mid-assembly: the job had not finished.
    killed = store.get_job("alpha", job_id)
    assert killed is not None
    assert (killed.status, killed.attempts) == (JobStatus.running, 1)

    def claimed_again() -> bool:
        record = store.get_job("alpha", job_id)
        return record is not None and record.attempts == 2

    wait_until(claimed_again, timeout_s=RESUME_BOUND_S, interval_s=0.1, what="attempt 2's claim")
    assert time.monotonic() - killed_at < RESUME_BOUND_S
    final = wait_for_status(alpha, job_id, timeout_s=60)
    assert final["status"] == "succeeded", final
    record = store.get_job("alpha", job_id)
    assert record is not None
    assert (record.status, record.attempts) == (JobStatus.succeeded, 2)
    # Attempt 1 got as far as one assembly; attempt 2 ran its own run to the end.
    first_run = store.get_run("alpha", job_id, 1)
    second_run = store.get_run("alpha", job_id, 2)
    assert first_run is not None and second_run is not None
    assert first_run.complete and first_run.deliveries.get("assemble") == 1
    assert second_run.complete and second_run.deliveries.get("assemble") == 1
    # Exactly one result, and the job counted as succeeded once.
    result = store.get_result("alpha", job_id)
    assert result is not None
    report = alpha.get(f"/v1/jobs/{job_id}/report")
    assert report.status_code == 200
    assert report.json()["job_id"] == job_id
    assert store.job_metrics().finished.get("succeeded", 0) == succeeded_before + 1
    survivor = next(worker for node, worker in slow_assembly_workers if node != runner)
    assert "lost its lease; requeued" in survivor.log_tail(400)
