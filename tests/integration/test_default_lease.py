"""The default lease (30 s): a job whose whole worker is killed finishes on a new worker.

The only test that runs with ``NNKGEO_LEASE_S`` unset (it costs about 40 s): the session
stack's 3 s lease shows the mechanism, this shows that the shipped settings recover a
job within a bound a user would accept. Its own stack, with nothing but the log level
set, so that the defaults of every lease-related setting (visibility timeout 4200 s,
heartbeat and reaper every 10 s) are the ones in force: the broker's redelivery cannot
be what recovers the job here, only the lease.

Bound: the lease expires at most 30 s after the kill (the last renewal was at most 10 s
earlier, so usually sooner), the new worker's reaper sweeps every 10 s, and the job
reruns in seconds; 60 s from the new worker being up leaves room on a loaded machine.
``bench/bench_recovery.py`` measures the same path ten times.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from api_schemas import JobStatus
from jobstate.settings import Settings
from jobstate.store import Store
from tests.integration.helpers import job_body, submit, upload_array, wait_for_status
from tests.integration.stack import ServiceStack, wait_until

pytestmark = pytest.mark.integration

# From the new worker answering /readyz to the job's success (the requirement).
RECOVERY_BOUND_S = 60.0
# The defaults this test relies on: checked, so that a changed default is noticed here.
DEFAULT_LEASE_S = 30


@pytest.fixture(scope="module")
def default_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    stack = ServiceStack(
        tmp_path_factory.mktemp("default-lease"), settings={"NNKGEO_LOG_LEVEL": "INFO"}
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def test_a_killed_workers_job_finishes_within_a_minute_of_a_new_worker_by_default(
    default_stack: ServiceStack,
) -> None:
    stack = default_stack
    env = stack.environment()
    assert "NNKGEO_LEASE_S" not in env and "NNKGEO_VISIBILITY_TIMEOUT_S" not in env
    # What the stack's processes read: the defaults (the test process's own environment
    # does not reach them, `ServiceStack.environment` drops every NNKGEO_ variable).
    fields = Settings.model_fields
    assert fields["lease_s"].default == DEFAULT_LEASE_S
    assert fields["visibility_timeout_s"].default > 2 * RECOVERY_BOUND_S
    store = Store.from_settings(Settings(redis_url=stack.redis_url))
    with stack.client("alpha") as alpha:
        # Smaller than the 3 s-lease tests' job: it need only outlive the kill, and its
        # rerun on a busy 2-core machine (cold imports included) eats into the bound.
        points = np.random.default_rng(11).standard_normal((8_000, 32)).astype(np.float32)
        job_id = submit(alpha, job_body(upload_array(alpha, points), name="x", k=30)).json()["id"]
        wait_for_status(alpha, job_id, ("running",), timeout_s=30, interval_s=0.05)
        # Into the core (past "starting": the claim, the input load) before the kill.
        wait_until(
            lambda: alpha.get(f"/v1/jobs/{job_id}").json()["progress"]["stage"] != "starting",
            timeout_s=30,
            interval_s=0.05,
            what="the job's first progress",
        )
        stack.kill_worker()
        killed = time.monotonic()
        stack.restart_worker()
        up = time.monotonic()

        final = wait_for_status(alpha, job_id, timeout_s=RECOVERY_BOUND_S + 30, interval_s=0.1)
        done = time.monotonic()
        report = alpha.get(f"/v1/jobs/{job_id}/report")
    record = store.get_job("alpha", job_id)
    store.close()
    assert final["status"] == "succeeded", final
    assert done - up < RECOVERY_BOUND_S, (done - killed, done - up)
    assert record is not None
    # Killed mid-job: attempt 1 never finished it (a job that ended before the kill
    # would show one attempt).
    assert (record.status, record.attempts) == (JobStatus.succeeded, 2)
    assert stack.worker is not None
    # The new worker's reaper requeued it: the lease path, not a broker redelivery.
    assert "lost its lease; requeued" in stack.worker.log_tail(400)
    assert report.status_code == 200, report.text
