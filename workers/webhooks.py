"""Deliver a job's end to its callback_url: a signed POST, retried with backoff.

The store announces every job that reaches a final status (`Store.finish_job`, and a
cache hit created finished) to its ``on_job_finished`` hook, which queues
``deliver_webhook`` with three ids (tenant, job, event) for jobs that carry a
callback_url (`workers.celery_app.job_end_announcer`). The task reads the job record,
builds a small JSON event, signs it per Standard Webhooks (`nnkgeo.webhooks`) with the
tenant's secret and POSTs it:

- the webhook-id is the event id, the same on every retry (receivers deduplicate on it);
  the body is the same bytes on every retry too, the webhook-timestamp is the send time;
- the URL's host is checked against the allow-list again before each POST (settings may
  have changed since the job was submitted), and redirects are never followed, so that a
  listed host cannot bounce the request to an internal address;
- a 2xx answer is recorded in the store before the task returns: a redelivered or
  repeated message for a delivered event sends nothing;
- any other answer, or no answer, is retried after ``WEBHOOK_BACKOFF_S`` doubled at each
  attempt (capped), until ``WEBHOOK_MAX_ATTEMPTS`` POSTs were made; then it is given up.

Each attempt and its outcome are logged and kept in the store (`WebhookDelivery`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import httpx
from celery import Task

from api_schemas import JobStatus
from nnkgeo import __version__
from nnkgeo.webhooks import signature_headers
from service.records import JobRecord, utc_now
from service.settings import Settings, get_settings
from service.store import Store, WebhookState
from service.webhooks import WebhookPolicy, event_id_for
from workers.celery_app import DELIVER_WEBHOOK_TASK, app

# Longest wait between two attempts. A retry is an ETA message that a worker holds
# unacknowledged until it is due: held past the broker's visibility timeout, it would be
# delivered a second time, so the wait also stays below half of that timeout.
BACKOFF_CAP_S = 600.0
USER_AGENT = f"nnkgeo-webhooks/{__version__}"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Runtime:
    settings: Settings
    store: Store
    policy: WebhookPolicy


_runtime: _Runtime | None = None
_runtime_pid: int | None = None


def _webhook_runtime() -> _Runtime:
    """This process's settings, store and policy, made on first use in each process.

    As in `workers.tasks.worker_runtime`: a Redis connection opened in the prefork
    parent must not be shared with its children. This store has no finish hook: a
    delivery never finishes a job.
    """
    global _runtime, _runtime_pid
    if _runtime is None or _runtime_pid != os.getpid():
        settings = get_settings()
        _runtime = _Runtime(
            settings=settings,
            store=Store.from_settings(settings),
            policy=WebhookPolicy.from_settings(settings),
        )
        _runtime_pid = os.getpid()
    return _runtime


def retry_delay_s(settings: Settings, *, attempts: int) -> float:
    """Wait after the `attempts`-th failed POST: base x 2^(attempts-1), capped."""
    cap = min(BACKOFF_CAP_S, settings.visibility_timeout_s / 2)
    return min(settings.webhook_backoff_s * 2 ** (attempts - 1), cap)


def job_event(job: JobRecord) -> dict[str, Any]:
    """The event a job's end is announced with: what happened, and where to look.

    Links are paths on the API (the worker does not know the public base URL); the
    report links only exist for a succeeded job.
    """
    base = f"/v1/jobs/{job.id}"
    links = {"self": base}
    if job.status is JobStatus.succeeded:
        links |= {"report": f"{base}/report", "report_html": f"{base}/report.html"}
    data: dict[str, Any] = {"job_id": job.id, "status": job.status.value, "links": links}
    if job.error is not None:
        data["error"] = job.error.model_dump(mode="json", exclude_none=True)
    # The job's end, not the send time: the body stays byte for byte the same on retries.
    moment = job.finished_at or utc_now()
    return {
        "type": f"job.{job.status.value}",
        "timestamp": moment.isoformat().replace("+00:00", "Z"),
        "data": data,
    }


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one run of the task did; `retry_in_s` is set when it must run again."""

    word: str
    retry_in_s: float | None = None


def _post(settings: Settings, url: str, payload: bytes, headers: dict[str, str]) -> str | None:
    """POST once; None on a 2xx answer, else why it failed (for the log and the store)."""
    try:
        # follow_redirects=False: a 3xx is a failed attempt, never a request elsewhere.
        # trust_env=False: no proxy or .netrc credentials picked up from the environment.
        with httpx.Client(
            timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False
        ) as client:
            response = client.post(url, content=payload, headers=headers)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"[:300]
    if response.is_success:
        return None
    return f"HTTP {response.status_code}"


def deliver_job_event(tenant: str, job_id: str, event_id: str) -> DeliveryOutcome:
    """Send the job's end event once (or find it sent); say whether to retry."""
    runtime = _webhook_runtime()
    store, settings = runtime.store, runtime.settings
    job = store.get_job(tenant, job_id)
    if job is None or job.callback_url is None or not job.status.finished:
        logger.warning("webhook %s: job %s has no event to send; dropped", event_id, job_id)
        return DeliveryOutcome("missing")
    if event_id != event_id_for(job.id, job.status):
        logger.warning("webhook %s: job %s ended %s instead", event_id, job_id, job.status)
        return DeliveryOutcome("stale")
    delivery = store.get_webhook_delivery(tenant, job_id)
    if delivery is not None and delivery.state is not WebhookState.pending:
        logger.info("webhook %s of job %s already %s", event_id, job_id, delivery.state.value)
        return DeliveryOutcome(f"already-{delivery.state.value}")

    secret = runtime.policy.secret_for(tenant)
    refusal = (
        f"tenant {tenant} has no webhook secret (NNKGEO_WEBHOOK_SECRETS)"
        if secret is None
        else runtime.policy.url_problem(job.callback_url)
    )
    if secret is None or refusal is not None:
        logger.error("webhook %s of job %s not sent: %s", event_id, job_id, refusal)
        store.give_up_webhook(
            tenant, job_id, event_id=event_id, reason=f"refused: {refusal}", now=utc_now()
        )
        return DeliveryOutcome("refused")

    payload = json.dumps(job_event(job), separators=(",", ":")).encode()
    headers = signature_headers(secret, msg_id=event_id, payload=payload) | {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    failure = _post(settings, job.callback_url, payload, headers)
    attempts_before = delivery.attempts if delivery is not None else 0
    exhausted = failure is not None and attempts_before + 1 >= settings.webhook_max_attempts
    state = (
        WebhookState.delivered
        if failure is None
        else WebhookState.given_up
        if exhausted
        else WebhookState.pending
    )
    attempts = store.record_webhook_attempt(
        tenant,
        job_id,
        event_id=event_id,
        outcome=failure or "delivered",
        state=state,
        now=utc_now(),
    )
    if failure is None:
        logger.info("webhook %s of job %s delivered (attempt %d)", event_id, job_id, attempts)
        return DeliveryOutcome("delivered")
    if state is WebhookState.given_up:
        logger.error(
            "webhook %s of job %s given up after %d attempts: %s",
            event_id,
            job_id,
            attempts,
            failure,
        )
        return DeliveryOutcome("given-up")
    delay = retry_delay_s(settings, attempts=attempts)
    logger.warning(
        "webhook %s of job %s: attempt %d failed (%s); retrying in %.1f s",
        event_id,
        job_id,
        attempts,
        failure,
        delay,
    )
    return DeliveryOutcome("retrying", retry_in_s=delay)


# Its own retry count lives in the store (it survives redeliveries), so Celery's
# max_retries is lifted.
@app.task(name=DELIVER_WEBHOOK_TASK, bind=True, max_retries=None, ignore_result=False)
def deliver_webhook(self: Task, tenant: str, job_id: str, event_id: str) -> str:
    outcome = deliver_job_event(tenant, job_id, event_id)
    if outcome.retry_in_s is not None:
        raise self.retry(countdown=outcome.retry_in_s)
    return outcome.word
