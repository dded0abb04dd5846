"""Each exit status of ``nnkgeo``, as the README and ``--help`` promise, on real services.

- 0: done;
- 1: the job failed or was canceled (tests/integration/test_remote_cli.py), a wait timed
  out, the service could not be reached, or it answered 5xx;
- 2: a usage or input error, or a 4xx the user can fix.

Besides the session's stack (Redis, a worker, the API), this module starts an idle one:
Redis and the API without any worker, so that a job stays queued for as long as a test
needs, and a second API of it whose Redis is gone, which answers 503 to every call.
Commands run in-process through ``nnkgeo.cli.main``, as in test_remote_cli.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from api_schemas import JobOut
from nnkgeo.cli import main
from nnkgeo.client import Client
from tests.integration.stack import TENANT_KEYS, Managed, ServiceStack, free_port, wait_until

pytestmark = pytest.mark.integration

ALPHA_KEY = TENANT_KEYS["alpha"]
START_WORKER = "celery -A workers.celery_app worker"


@dataclass(frozen=True)
class Outcome:
    status: int
    stdout: str
    stderr: str
    seconds: float

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("nnkgeo: error: ")]


@pytest.fixture
def nnkgeo(capsys: pytest.CaptureFixture[str]):
    """Run ``nnkgeo ARGS...`` in-process; its exit status, output and duration."""

    def run(*argv: str) -> Outcome:
        capsys.readouterr()
        started = time.monotonic()
        try:
            status = main(list(argv))
        except SystemExit as exit_:  # argparse refusing the command line
            status = int(exit_.code or 0)
        seconds = time.monotonic() - started
        captured = capsys.readouterr()
        return Outcome(status, captured.out, captured.err, seconds)

    return run


@dataclass(frozen=True)
class IdleStack:
    stack: ServiceStack
    without_redis_url: str

    @property
    def connection(self) -> list[str]:
        return ["--url", self.stack.base_url, "--api-key", ALPHA_KEY]


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdleStack]:
    stack = ServiceStack(
        Path(tmp_path_factory.mktemp("idle")), settings={"NNKGEO_READINESS_TIMEOUT_S": "0.5"}
    )
    stack.root.mkdir(parents=True, exist_ok=True)
    without_redis: Managed | None = None
    try:
        stack.start_redis()
        stack.start_api()
        # Nothing listens at this Redis URL: each call needing Redis is answered 503.
        without_redis, without_redis_url = stack.spawn_api(
            "api-without-redis", NNKGEO_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
        )
        stack.wait_live()
        wait_until(
            lambda: httpx.get(f"{without_redis_url}/healthz", timeout=2).status_code == 200,
            timeout_s=60,
            what="the API without Redis",
        )
        yield IdleStack(stack, without_redis_url)
    finally:
        if without_redis is not None:
            without_redis.stop()
        stack.stop()


@pytest.fixture(scope="module")
def idle_points(idle: IdleStack) -> str:
    """A dataset on the idle stack, for jobs that no worker will take."""
    with Client(idle.stack.base_url, ALPHA_KEY) as client:
        points = np.random.default_rng(11).standard_normal((50, 4)).astype(np.float32)
        return client.upload(points).id


@pytest.fixture(scope="module")
def connection(stack: ServiceStack) -> list[str]:
    return ["--url", stack.base_url, "--api-key", ALPHA_KEY]


@pytest.fixture(scope="module")
def few_points(stack: ServiceStack) -> str:
    with Client(stack.base_url, ALPHA_KEY) as client:
        points = np.random.default_rng(12).standard_normal((30, 4)).astype(np.float32)
        return client.upload(points).id


def _seed() -> str:
    return str(time.monotonic_ns() % 2**31)


# --------------------------------------------------------------------------- 0


def test_a_job_that_succeeds_exits_0(nnkgeo, connection: list[str], few_points: str) -> None:
    done = nnkgeo(
        "submit", "--set", f"s={few_points}", "--k", "5", "--seed", _seed(), "--wait", *connection
    )

    assert done.status == 0, done.stderr
    assert done.error_lines() == []
    assert " succeeded " in done.stdout
    # The bar's last line says the status once, not "succeeded succeeded".
    last_bar = done.stderr.strip().splitlines()[-1]
    assert last_bar.count("succeeded") == 1 and "100%" in last_bar


# --------------------------------------------------------------------------- 1


def test_wait_timeout_exits_1_after_saying_once_that_no_worker_took_the_job(
    nnkgeo, idle: IdleStack, idle_points: str
) -> None:
    job_id = nnkgeo(
        "submit", "--set", f"s={idle_points}", "--k", "5", "-q", *idle.connection
    ).stdout.strip()

    waited = nnkgeo("wait", job_id, "--timeout", "11", "--no-progress", *idle.connection)

    assert waited.status == 1, waited.stderr
    hints = [line for line in waited.stderr.splitlines() if "no worker" in line]
    assert len(hints) == 1, waited.stderr
    assert hints[0].startswith(f"nnkgeo: job {job_id} is still queued after 1")
    assert "/readyz: workers: none answered within 0.5 s" in hints[0]
    assert START_WORKER in hints[0]
    assert waited.error_lines() == [
        f"nnkgeo: error: job {job_id} is still queued after 11 s (it goes on running); "
        f"`nnkgeo wait {job_id}` again, or `nnkgeo cancel {job_id}`"
    ]
    assert 11 <= waited.seconds < 15


def test_submit_wait_timeout_exits_1_printing_the_job_still_queued(
    nnkgeo, idle: IdleStack, idle_points: str
) -> None:
    waited = nnkgeo(
        "submit",
        "--set",
        f"s={idle_points}",
        "--k",
        "5",
        "--seed",
        _seed(),
        "--wait",
        "--timeout",
        "1",
        "--json",
        "--no-progress",
        *idle.connection,
    )

    assert waited.status == 1, waited.stderr
    job = JobOut.model_validate(json.loads(waited.stdout))
    assert job.status == "queued"
    assert waited.error_lines() == [
        f"nnkgeo: error: job {job.id} is still queued after 1 s (it goes on running); "
        f"`nnkgeo wait {job.id}` again, or `nnkgeo cancel {job.id}`"
    ]
    assert "no worker" not in waited.stderr  # said only after 10 s of waiting


def test_an_unreachable_service_exits_1_within_2_seconds(nnkgeo) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # a closed port: the connection is refused

    listed = nnkgeo("jobs", "--url", url, "--api-key", ALPHA_KEY)
    waited = nnkgeo("wait", "job_x", "--url", url, "--api-key", ALPHA_KEY)

    for outcome in (listed, waited):
        assert outcome.status == 1, outcome.stderr
        assert outcome.seconds < 2, outcome.seconds
        assert outcome.error_lines() == [
            f"nnkgeo: error: cannot connect to {url} ([Errno 111] Connection refused); "
            "is the service running there? Check --url or NNKGEO_URL"
        ]


def test_a_service_answering_5xx_exits_1_after_saying_it_retries(nnkgeo, idle: IdleStack) -> None:
    listed = nnkgeo("jobs", "--url", idle.without_redis_url, "--api-key", ALPHA_KEY)

    assert listed.status == 1, listed.stderr
    retries = [line for line in listed.stderr.splitlines() if "retrying" in line]
    # Five retries after Retry-After: 5 each; each said, as each waits over 2 s.
    assert retries == [
        "nnkgeo: GET /v1/jobs: the service answered 503 Service Unavailable; "
        f"retrying in 5.0 s (attempt {attempt} of 6)"
        for attempt in range(2, 7)
    ]
    (error,) = listed.error_lines()
    assert error.startswith("nnkgeo: error: 503 ")
    assert 25 <= listed.seconds < 35


# --------------------------------------------------------------------------- 2


def test_answers_4xx_exit_2_with_each_message_said_once(
    nnkgeo, connection: list[str], few_points: str
) -> None:
    unknown_job = nnkgeo("status", "job_does_not_exist", *connection)
    too_many_neighbours = nnkgeo("submit", "--set", f"s={few_points}", "--k", "30", *connection)
    unknown_dataset = nnkgeo(
        "submit", "--set", "s=ds_00000000000000000000000000000000", "--k", "5", *connection
    )

    for outcome in (unknown_job, too_many_neighbours, unknown_dataset):
        assert outcome.status == 2, outcome
        assert len(outcome.error_lines()) == 1 and outcome.stderr.count("\n") == 1, outcome
    assert unknown_job.stderr.startswith("nnkgeo: error: 404 ")
    (refusal,) = too_many_neighbours.error_lines()
    assert refusal.startswith("nnkgeo: error: 422 ") and "params.k" in refusal
    # The field's message, which the service also puts in its detail, is said once.
    message = refusal.split("params.k: ", 1)[1].split(";")[0]
    assert refusal.count(message) == 1, refusal
    assert "upload it with `nnkgeo upload FILE`" in unknown_dataset.stderr
    assert "POST /v1/datasets" not in unknown_dataset.stderr


def test_usage_errors_exit_2(nnkgeo, connection: list[str], few_points: str) -> None:
    no_job_named = nnkgeo("wait", *connection)
    bad_set = nnkgeo("submit", "--set", "no-equals-sign", *connection)
    not_a_number = nnkgeo("wait", "job_x", "--timeout", "soon", *connection)

    for outcome in (no_job_named, bad_set, not_a_number):
        assert outcome.status == 2, outcome
    assert "the following arguments are required: JOB" in no_job_named.stderr
    assert bad_set.error_lines() == [
        "nnkgeo: error: --set 'no-equals-sign': expected NAME=EMB[:LABELS[:IDS]]"
    ]
