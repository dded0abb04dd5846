"""A real nnkgeo deployment in subprocesses: Redis, one Celery worker, one uvicorn API.

The worker serves the job queues and the webhook queue; a stack that needs webhook
deliveries apart from jobs, as compose runs them, serves the job queues only
(``worker_queues``) and starts a webhooks worker too (`ServiceStack.start_webhook_worker`).

Used by the integration and contract test sessions; nothing is mocked. Each process
logs to a file in the stack's directory, printed when a test needs it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

REPO_ROOT = Path(__file__).resolve().parents[2]
FALLBACK_REDIS_URL = "redis://127.0.0.1:6379/15"

TENANT_KEYS = {
    "alpha": "alpha-key-0123456789abcdef",
    "beta": "beta-key-0123456789abcdef",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(
    condition: Callable[[], object], *, timeout_s: float, interval_s: float = 0.1, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if condition():
                return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


# Test clients drop a connection idle for 2 s, well before uvicorn closes it (its
# keep-alive timeout is 5 s, httpx's own expiry also 5 s): a request sent on a connection
# the server is closing at that moment fails with "Server disconnected without sending a
# response", which a full suite met once. (The nnkgeo client retries that error.)
CLIENT_LIMITS = httpx.Limits(keepalive_expiry=2.0)


# Every test worker process (and what it spawns) maps at most this much: a test that
# goes wrong fails with MemoryError or dies, instead of taking the host down.
WORKER_ADDRESS_SPACE_BYTES = 8 * 1024**3


def _limit_address_space(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


@dataclass
class Managed:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, *, timeout_s: float = 10) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout_s)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ServiceStack:
    root: Path
    settings: dict[str, str] = field(default_factory=dict)
    redis_url: str = ""
    base_url: str = ""
    redis_process: Managed | None = None
    worker: Managed | None = None
    api: Managed | None = None
    worker_queues: str = "cpu,gpu,webhooks"
    webhook_worker: Managed | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def environment(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NNKGEO_")}
        env.update(
            {
                "NNKGEO_REDIS_URL": self.redis_url,
                "NNKGEO_DATA_DIR": str(self.data_dir),
                "NNKGEO_API_KEYS": ",".join(f"{t}:{k}" for t, k in TENANT_KEYS.items()),
                "PYTHONPATH": str(REPO_ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.settings)
        env.update(overrides)
        return env

    def _spawn(
        self,
        name: str,
        command: list[str],
        *,
        address_space_bytes: int | None = None,
        **env_overrides: str,
    ) -> Managed:
        log_path = self.root / f"{name}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=self.environment(**env_overrides),
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: the tests kill a worker with everything it forked.
            start_new_session=True,
            preexec_fn=None
            if address_space_bytes is None
            else _limit_address_space(address_space_bytes),
        )
        log.close()
        return Managed(name=name, process=process, log_path=log_path)

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            self.redis_url = os.environ.get("NNKGEO_TEST_REDIS_URL", FALLBACK_REDIS_URL)
            client = redis.Redis.from_url(self.redis_url)
            client.ping()
            client.flushdb()  # a dedicated test database: documented in the README
            return
        port = free_port()
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.redis_process = self._spawn(
            "redis",
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
        )
        client = redis.Redis.from_url(self.redis_url)
        wait_until(client.ping, timeout_s=15, what="redis-server")

    def _spawn_worker(
        self, name: str, node_name: str, *, queues: str, concurrency: int, **env_overrides: str
    ) -> Managed:
        return self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(concurrency),
                "--queues",
                queues,
                "--hostname",
                node_name,
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
            address_space_bytes=WORKER_ADDRESS_SPACE_BYTES,
            **env_overrides,
        )

    def start_worker(self, **env_overrides: str) -> str:
        node_name = f"nnkgeo-test-{uuid.uuid4().hex[:8]}@localhost"
        self.worker = self._spawn_worker(
            "worker", node_name, queues=self.worker_queues, concurrency=1, **env_overrides
        )
        return node_name

    def start_webhook_worker(self, *, concurrency: int = 2, timeout_s: float = 60) -> str:
        """A worker of the webhook queue alone, as compose's ``webhooks`` service; ready.

        Readiness is its own answer to a ping: /readyz names one worker only.
        """
        node_name = f"nnkgeo-webhooks-{uuid.uuid4().hex[:8]}@localhost"
        self.webhook_worker = self._spawn_worker(
            "webhooks", node_name, queues="webhooks", concurrency=concurrency
        )
        worker, control = self.webhook_worker, Celery(broker=self.redis_url)

        def answers() -> bool:
            return worker.process.poll() is not None or bool(
                control.control.ping(destination=[node_name], timeout=0.5)
            )

        try:
            wait_until(answers, timeout_s=timeout_s, interval_s=0.3, what="the webhooks worker")
        finally:
            control.close()
        if worker.process.poll() is not None:
            raise RuntimeError(f"webhooks worker exited:\n{worker.log_tail()}")
        return node_name

    def start_api(self) -> None:
        self.api, self.base_url = self.spawn_api("api")

    def spawn_api(self, name: str, **env_overrides: str) -> tuple[Managed, str]:
        """Start an API process on a free port; returns it and its base URL."""
        port = free_port()
        process = self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "uvicorn",
                "service.main:app",
                "--http",
                "service.http_protocol:BoundedHttpToolsProtocol",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            **env_overrides,
        )
        return process, f"http://127.0.0.1:{port}"

    def wait_live(self, *, timeout_s: float = 60) -> None:
        """Until the API answers /healthz: for stacks without Redis or a worker."""
        wait_until(
            lambda: httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200,
            timeout_s=timeout_s,
            what="the API",
        )

    def wait_ready(self, *, worker: str | None = None, timeout_s: float = 90) -> None:
        def ready() -> bool:
            for process in (self.api, self.worker):
                if process is not None and process.process.poll() is not None:
                    raise RuntimeError(f"{process.name} exited:\n{process.log_tail()}")
            answer = httpx.get(f"{self.base_url}/readyz", timeout=5)
            if answer.status_code != 200:
                return False
            return worker is None or worker in answer.json()["workers"]

        try:
            wait_until(ready, timeout_s=timeout_s, interval_s=0.3, what="the API and a worker")
        except TimeoutError:
            raise TimeoutError(
                "stack not ready\n--- api ---\n"
                + (self.api.log_tail() if self.api else "")
                + "\n--- worker ---\n"
                + (self.worker.log_tail() if self.worker else "")
            ) from None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_redis()
        node = self.start_worker()
        self.start_api()
        self.wait_ready(worker=node)

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool children at once, as a host crash would."""
        assert self.worker is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.process.pid, signal.SIGKILL)
        self.worker.process.wait(timeout=10)

    def restart_worker(self) -> str:
        node = self.start_worker()
        self.wait_ready(worker=node)
        return node

    def stop(self) -> None:
        for process in (self.api, self.worker, self.webhook_worker, self.redis_process):
            if process is not None:
                process.stop()

    def client(self, tenant: str | None = "alpha", **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TENANT_KEYS[tenant]}"} if tenant else {}
        kwargs.setdefault("limits", CLIENT_LIMITS)
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60, **kwargs)
