"""What a worker process works with: its settings, store and blob store, thread limits,
and the sandbox policy for uploaded models."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from jobstate.blobs import BlobStore, open_blob_store
from jobstate.dispatch import message_sender
from jobstate.settings import Settings, get_settings
from jobstate.store import Store
from workers.celery_app import app
from workers.models.sandbox.runner import SandboxPolicy, sandbox_support


@dataclass(frozen=True)
class WorkerRuntime:
    """The settings, store and blob store one worker process uses for every job."""

    settings: Settings
    store: Store
    blobs: BlobStore

    @property
    def threads(self) -> int | None:
        """CPU threads one task may use; None = one per core."""
        return self.settings.worker_threads or None

    @property
    def cpu_threads(self) -> int:
        """CPU threads one task may use, counted (the cores when unset)."""
        return self.threads or os.cpu_count() or 1


_runtime: WorkerRuntime | None = None
_runtime_pid: int | None = None


def _limit_cpu_threads(threads: int | None) -> None:
    if threads is None:
        return
    import faiss

    # faiss (OpenMP), torch and numba size their thread pools to the host's cores;
    # several worker processes on one host would each start that many. torch and numba
    # are limited only when already loaded: importing torch here would put its ~2 s
    # import on the CPU path, which never uses it.
    faiss.omp_set_num_threads(threads)
    if (torch := sys.modules.get("torch")) is not None:
        torch.set_num_threads(threads)
    # numba is not limited here: setting its threads starts its OpenMP pool, and this
    # runs in Celery's main process too (the reaper), whose pool processes numba would
    # then kill at their first parallel loop (its pool is not fork-safe). The engine
    # gets the limit with each call instead (n_threads: the solve's and the search's).


def limit_torch_threads(threads: int | None) -> None:
    """Give torch the worker's thread limit; called by a model job before it loads torch.

    A CPU worker imports torch only for embed and study jobs (``workers.models`` resolves
    its names lazily), after :func:`_limit_cpu_threads` ran at start-up; without this, a
    model job would train on every core of the host, and its losses would differ in the
    last bits from a run with the configured threads.
    """
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


def worker_runtime() -> WorkerRuntime:
    """This process's store and blob store.

    Made on first use in each process: a Redis connection opened in the prefork parent
    and inherited by a child would be shared by two processes.
    """
    global _runtime, _runtime_pid
    if _runtime is None or _runtime_pid != os.getpid():
        settings = get_settings()
        _runtime = WorkerRuntime(
            settings=settings,
            # Every job's end, on any path (finish, cancel, failure, time limit), writes
            # the webhook of a job with a callback_url to the outbox; the sender sends it
            # at once (the dispatcher later, should that fail).
            store=Store.from_settings(settings, sender=message_sender(app)),
            # Workers cache what they store: a sharded run reads its blocks back.
            blobs=open_blob_store(
                settings.blob_url,
                settings.data_dir,
                cache_bytes=settings.blob_cache_bytes,
                cache_writes=True,
            ),
        )
        _runtime_pid = os.getpid()
        _limit_cpu_threads(_runtime.threads)
    return _runtime


def model_sandbox_policy(runtime: WorkerRuntime) -> SandboxPolicy:
    """How this worker runs uploaded models: limits from the job's budget, confinement
    from the start-up probe (:func:`workers.models.sandbox.runner.sandbox_support`)."""
    settings = runtime.settings
    status = sandbox_support(
        min_landlock_abi=settings.sandbox_min_landlock_abi,
        allow_unsandboxed=settings.unsafe_allow_unsandboxed_models,
    )
    return SandboxPolicy(
        memory_bytes=settings.worker_memory_bytes,
        cpu_seconds=settings.model_cpu_limit_s,
        # Below the soft time limit, so that the model's own deadline is what ends it.
        wall_seconds=0.9 * settings.task_soft_time_limit_s,
        threads=runtime.threads,
        confine=status.enforceable,
        protected_paths=(settings.data_dir.resolve(), *settings.data_root_paths),
        unavailable=None
        if status.allowed
        else f"This worker cannot sandbox uploaded models ({status.description}); the "
        "operator must run it where Landlock (ABI >= 4) and seccomp are available.",
    )
