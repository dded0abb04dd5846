"""Every knob of the nnkgeo service and its workers, read once from NNKGEO_* variables.

The API process and the Celery workers read the same `Settings`; a field that only one of
them uses says so in its description. `README.md` carries the same table for operators
(a contract test keeps the two in step).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3
DAY_S = 24 * 3600


class ConfigurationError(RuntimeError):
    """The settings are missing or unsafe; the process must not start with them.

    ``problems`` holds one line per setting at fault, each naming it and the fix.
    """

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


@contextmanager
def refuse_to_start_on_configuration_error(process: str) -> Iterator[None]:
    """Turn a ConfigurationError raised inside into its lines on stderr and exit code 2.

    For the entry points (the API module uvicorn imports, the worker's Celery app): a
    misconfigured process says what to fix in a line per setting, not under a traceback
    of the importer's frames. SystemExit passes through uvicorn's and Celery's loaders.
    """
    try:
        yield
    except ConfigurationError as error:
        for problem in error.problems:
            print(f"nnkgeo {process} refuses to start: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NNKGEO_", extra="ignore", frozen=True)

    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis for job records, results, the cache and the Celery broker.",
    )
    data_dir: Path = Field(
        Path("./var/nnkgeo"),
        description=(
            "Blob store directory (uploads and graphs, content-addressed); shared by the "
            "API and every worker."
        ),
    )
    blob_url: str = Field(
        "",
        description=(
            "Where blobs live: file:///path (default: NNKGEO_DATA_DIR), or "
            "s3://bucket/prefix, configured by the standard AWS environment variables "
            "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, "
            "AWS_ALLOW_HTTP)."
        ),
    )
    blob_cache_bytes: int = Field(
        4 << 30,
        ge=0,
        description=(
            "Worker, with an s3:// blob store: bound on its local cache of fetched blobs "
            "(under NNKGEO_DATA_DIR), least recently used evicted first."
        ),
    )
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="API keys as `tenant:key,tenant2:key2`; keys at least 16 characters.",
    )
    api_keys_file: Path | None = Field(
        None, description="File with one `tenant:key` per line (`#` comments); adds to API_KEYS."
    )
    allow_anonymous: bool = Field(
        False,
        description=(
            "Local development only: requests without a key act as tenant `anonymous`. "
            "Without it the API refuses to start when no key is configured."
        ),
    )
    max_upload_bytes: int = Field(2 * GIB, gt=0, description="Largest accepted upload body.")
    result_ttl_s: int = Field(
        7 * DAY_S, gt=0, description="Lifetime of reports, graphs and cache entries."
    )
    job_ttl_s: int = Field(
        30 * DAY_S, gt=0, description="Lifetime of job records; at least RESULT_TTL_S."
    )
    idempotency_ttl_s: int = Field(
        DAY_S, gt=0, description="How long an Idempotency-Key replays its first response."
    )
    task_soft_time_limit_s: int = Field(
        3600, gt=0, description="Worker: a job still running after this fails cleanly."
    )
    task_time_limit_s: int = Field(
        3900, gt=0, description="Worker: the child process is killed after this."
    )
    lease_s: int = Field(
        30,
        ge=2,
        description=(
            "Worker: the lease of a running job, renewed every LEASE_S / 3 by its worker; "
            "a job whose lease expired (its worker died) is requeued by the reaper, which "
            "looks every LEASE_S / 3."
        ),
    )
    visibility_timeout_s: int = Field(
        4200,
        gt=0,
        description=(
            "Broker: an unacknowledged message is redelivered after this (a fallback: "
            "leases recover a dead worker's job; a redelivery finding a live lease is "
            "dropped). Must exceed LEASE_S."
        ),
    )
    unacked_restore_interval_s: int = Field(
        60, gt=0, description="Worker: how often the broker is swept for such jobs."
    )
    task_max_attempts: int = Field(
        3,
        ge=1,
        description=(
            "Worker: attempts of one job, and deliveries of one block, before it fails; "
            "each lease that expires (its worker died) counts one."
        ),
    )
    cpu_queue: str = Field(
        "cpu", pattern=r"^[a-z][a-z0-9_-]*$", description="Celery queue of CPU jobs."
    )
    gpu_queue: str = Field(
        "gpu",
        pattern=r"^[a-z][a-z0-9_-]*$",
        description="Celery queue of jobs with params.device = cuda.",
    )
    shard_min_points: int = Field(
        50_000,
        ge=1,
        description=(
            "Worker: a set with fewer points is solved by one task; a job whose sets are "
            "all this small runs as a single task."
        ),
    )
    shard_rows: int = Field(
        32_768,
        ge=1,
        description=(
            "Worker: most rows (points) one block task of a sharded set solves; rounded "
            "down to a multiple of 4096, and at least 4096."
        ),
    )
    worker_threads: int = Field(
        0,
        ge=0,
        description=(
            "Worker: CPU threads one task uses (faiss and the solve); 0 = one per core. "
            "Set it to cores / worker processes when several share a host."
        ),
    )
    readiness_timeout_s: float = Field(
        1.0, gt=0, le=30, description="How long /readyz waits for a worker to answer."
    )
    log_level: str = Field(
        "INFO",
        pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$",
        description="Log level of the API and the workers.",
    )
    log_format: str = Field(
        "text",
        pattern=r"^(text|json)$",
        description=(
            "Log lines of the API and the workers: `text`, or `json` (one object a line: "
            "time, level, logger, message, and job_id, tenant and attempt when about a job)."
        ),
    )
    otel: bool = Field(
        False,
        description=(
            "Trace the API's requests and the workers' tasks with OpenTelemetry, one trace "
            "from a job's submission to its task (needs `pip install 'nnkgeo[otel]'`)."
        ),
    )
    otel_exporter: str = Field(
        "console",
        pattern=r"^(console|otlp|file:.+)$",
        description=(
            "Where spans go with OTEL: `console` (standard output), `file:<path>` (JSON "
            "lines), or `otlp` (configured by the OTEL_EXPORTER_OTLP_* variables)."
        ),
    )
    data_roots: str = Field(
        "",
        description=(
            "Directories (comma-separated, absolute) that `path` datasets of "
            "embed and study jobs may read; empty = no directory datasets (403)."
        ),
    )

    worker_memory_bytes: int = Field(
        4 * GIB,
        # The interpreter, torch and faiss alone take about 400 MiB.
        ge=512 * 1024**2,
        description=(
            "Memory budget of one job, read by the API (a job that cannot fit even in its "
            "smallest blocks is refused with 422) and the workers (block sizes are chosen "
            "to fit it; a worker process, and an uploaded model's sandbox, run under an "
            "address-space limit derived from it)."
        ),
    )
    memory_estimate_scale: float = Field(
        1.0,
        gt=0,
        le=100,
        description=(
            "Multiplies every memory estimate (raise it where jobs die of memory within "
            "their budget: the estimates run low on that platform)."
        ),
    )
    max_array_bytes: int = Field(
        0,
        ge=0,
        description=(
            "Largest decompressed size of any array in an upload (413 beyond), counted "
            "while inflating; 0 = MAX_UPLOAD_BYTES."
        ),
    )
    max_json_bytes: int = Field(
        1024**2, gt=0, description="Largest accepted JSON request body (413 beyond)."
    )
    tenant_max_active_jobs: int = Field(
        0,
        ge=0,
        description="Queued or running jobs one tenant may have (429 beyond); 0 = unlimited.",
    )
    tenant_max_stored_bytes: int = Field(
        0,
        ge=0,
        description="Bytes of uploads one tenant may keep stored (413 beyond); 0 = unlimited.",
    )
    request_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="API: a connection whose request headers do not complete in this long "
        "is closed.",
    )
    request_body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="API: an upload or body that makes no progress for this long is cut off "
        "(its staging file removed).",
    )
    redis_timeout_s: float = Field(
        2.0,
        gt=0,
        le=30,
        description="Connect and read timeout of the job store's Redis client; a hung Redis "
        "gives 503 with Retry-After instead of a hang.",
    )
    model_cpu_seconds: int = Field(
        0,
        ge=0,
        description=(
            "Worker: CPU seconds (summed over threads) an uploaded model may use; "
            "0 = 80 % of TASK_SOFT_TIME_LIMIT_S."
        ),
    )
    sandbox_min_landlock_abi: int = Field(
        4,
        ge=4,
        description=(
            "Worker: lowest Landlock ABI it accepts for the model sandbox (4 is the first "
            "that also confines TCP); below it uploaded models are refused."
        ),
    )
    unsafe_allow_unsandboxed_models: bool = Field(
        False,
        description=(
            "Worker: run uploaded models even where the sandbox cannot be enforced "
            "(no Landlock or seccomp). Unsafe with more than one tenant."
        ),
    )

    @property
    def memory_planning_budget_bytes(self) -> int:
        """The budget estimates are held to: WORKER_MEMORY_BYTES / MEMORY_ESTIMATE_SCALE."""
        return int(self.worker_memory_bytes / self.memory_estimate_scale)

    @property
    def array_limit_bytes(self) -> int:
        """`max_array_bytes`, or MAX_UPLOAD_BYTES when 0."""
        return self.max_array_bytes or self.max_upload_bytes

    @property
    def model_cpu_limit_s(self) -> int:
        """CPU seconds an uploaded model may use (`model_cpu_seconds`, or its default)."""
        return self.model_cpu_seconds or max(1, int(0.8 * self.task_soft_time_limit_s))

    @property
    def data_root_paths(self) -> list[Path]:
        """`data_roots` as paths, blanks dropped."""
        return [Path(part.strip()) for part in self.data_roots.split(",") if part.strip()]

    @property
    def lease_ms(self) -> int:
        """The lease a claim takes, in milliseconds."""
        return self.lease_s * 1000

    @property
    def heartbeat_interval_s(self) -> float:
        """How often a worker renews its lease: three chances before it expires."""
        return self.lease_s / 3

    @property
    def reaper_interval_s(self) -> float:
        """How often a worker's reaper looks for expired leases (one acts at a time)."""
        return self.lease_s / 3

    @model_validator(mode="after")
    def _time_limits_are_ordered(self) -> Self:
        # A job is bounded by its own time limits; the soft one lets it fail cleanly
        # before the hard one kills it. The broker's visibility timeout no longer bounds
        # it: a message redelivered while the job runs finds its lease live and is dropped.
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError(
                "TASK_SOFT_TIME_LIMIT_S must be below TASK_TIME_LIMIT_S "
                f"({self.task_soft_time_limit_s} >= {self.task_time_limit_s})"
            )
        if self.visibility_timeout_s <= self.lease_s:
            # A redelivery is the fallback when no reaper runs; one before a lease can
            # even expire would only ever be dropped.
            raise ValueError(
                "VISIBILITY_TIMEOUT_S must exceed LEASE_S "
                f"({self.visibility_timeout_s} <= {self.lease_s})"
            )
        if self.job_ttl_s < self.result_ttl_s:
            raise ValueError(
                "JOB_TTL_S must be at least RESULT_TTL_S, so that an expired report is told "
                f"apart from an unknown job ({self.job_ttl_s} < {self.result_ttl_s})"
            )
        if self.cpu_queue == self.gpu_queue:
            raise ValueError("CPU_QUEUE and GPU_QUEUE must differ")
        return self

    # Webhooks (jobstate.webhooks, workers.webhooks) -------------------------------------

    webhook_allowed_hosts: str = Field(
        "",
        description=(
            "Hosts a job's callback_url may name, comma-separated: `host` (any port) or "
            "`host:port`; empty = callback_url refused."
        ),
    )
    webhook_secrets: SecretStr = Field(
        SecretStr(""),
        description=(
            "Signing secrets as `tenant:whsec_...,tenant2:whsec_...`; a tenant without one "
            "cannot use callback_url."
        ),
    )
    webhook_max_attempts: int = Field(
        8, ge=1, le=50, description="Worker: POSTs of one event before it is given up."
    )
    webhook_backoff_s: float = Field(
        5.0,
        gt=0,
        description=(
            "Worker: wait before the first retry of a delivery; doubled at each retry, up "
            "to 10 minutes (and below half of VISIBILITY_TIMEOUT_S)."
        ),
    )
    webhook_timeout_s: float = Field(
        10.0,
        gt=0,
        le=60,
        description="Worker: longest single wait of one POST (connect, one read or write); "
        "WEBHOOK_DEADLINE_S bounds the whole POST.",
    )
    webhook_queue: str = Field(
        "webhooks",
        pattern=r"^([a-z][a-z0-9_-]*)?$",
        description=(
            "Celery queue of webhook deliveries, served by a worker of its own (compose's "
            "`webhooks` service) so that events never wait behind long jobs; empty = "
            "CPU_QUEUE."
        ),
    )
    webhook_deadline_s: float = Field(
        30.0,
        gt=0,
        le=300,
        description="Worker: total time one POST may take, connect to last byte read "
        "(at most 90 % of TASK_SOFT_TIME_LIMIT_S).",
    )

    @model_validator(mode="after")
    def _webhook_settings_are_usable(self) -> Self:
        # Parsed here too, so that a malformed secret or host stops the process at start
        # rather than refusing every callback_url later.
        from jobstate.webhooks import parse_allowed_hosts, parse_webhook_secrets

        parse_allowed_hosts(self.webhook_allowed_hosts)
        parse_webhook_secrets(self.webhook_secrets.get_secret_value())
        return self


def load_settings() -> Settings:
    """Read the settings from the environment, or raise one readable ConfigurationError."""
    try:
        return Settings()
    except ValidationError as error:
        problems = []
        for item in error.errors():
            name = ".".join(str(part) for part in item["loc"])
            prefix = f"NNKGEO_{name.upper()}: " if name else ""
            problems.append(f"{prefix}{item['msg'].removeprefix('Value error, ')}")
        raise ConfigurationError(
            "nnkgeo refuses to start with these settings:\n"
            + "\n".join(f"  - {problem}" for problem in problems),
            problems=problems,
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
