"""The Celery task class of job tasks: what the worker's main process does when a task's
pool process dies or passes the hard time limit, and so cannot say it itself."""

from __future__ import annotations

import logging
import re
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task
from celery.worker.request import Request

from api_schemas import JobStatus
from jobstate.dispatch import ANALYZE_SETS_TASK
from workers.outcomes import end_job, hard_time_limit_problem
from workers.runtime import worker_runtime

logger = logging.getLogger(__name__)

# Signals that end a process whose allocation failed under its address-space limit:
# C++ code (torch, faiss) aborts on std::bad_alloc, or touches memory it never got.
# SIGKILL is left out: it is also how an operator, or a lost node, stops a worker.
_MEMORY_DEATHS = re.compile(r"signal \d+ \((SIGABRT|SIGSEGV|SIGBUS)\)")


class JobRequest(Request):
    """A delivery of a job task, as the worker's main process sees it."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        # Runs in the worker's main process, which outlives the pool child that died.
        exception = getattr(exc_info, "exception", None)
        death = (
            _MEMORY_DEATHS.search(str(exception))
            if isinstance(exception, WorkerLostError)
            else None
        )
        if death is not None and self.name == ANALYZE_SETS_TASK:
            job_id, tenant = self.args[:2]
            try:
                runtime = worker_runtime()
                job = runtime.store.get_job(tenant, job_id)
                if job is not None:
                    runtime.store.record_attempt_death(
                        tenant, job_id, attempt=job.attempts, cause=death.group(1)
                    )
            except Exception:
                logger.exception("job %s: recording how its process died failed", job_id)
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        # Runs in the worker's main process. At the hard limit the pool kills the child,
        # which can no longer record anything: mark the job failed here, or its record
        # would say `running` for ever (the message is acknowledged, never redelivered).
        super().on_timeout(soft, timeout)
        if soft:
            return
        job_id, tenant, *rest = self.args
        attempt = int(rest[0]) if rest else None
        runtime = worker_runtime()
        job = runtime.store.get_job(tenant, job_id)
        if job is None:
            return
        end_job(
            runtime,
            job,
            JobStatus.failed,
            attempt=attempt,
            error=hard_time_limit_problem(job_id, timeout),
        )


class JobTask(Task):
    """The base of job tasks: their deliveries are `JobRequest`."""

    Request = JobRequest
