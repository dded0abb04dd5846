"""Deliver a job's end to its callback_url: a signed POST, retried with backoff.

When a job that carries a callback_url reaches a final status (`Store.finish_job`, and a
cache hit created finished), the store writes ``deliver_webhook`` with three ids (tenant,
job, event) to its outbox in the same step, and sends it at once; should that send fail,
or its process die first, the workers' dispatcher sends it (`jobstate.store.outbox`,
`jobstate.dispatch.dispatch_pending`). So every job end is sent at least once. The task
reads the job record, builds a small JSON event, signs it per Standard Webhooks
(`api_schemas.webhooks`) with the tenant's secret and POSTs it:

- the webhook-id is the event id, the same on every retry (receivers deduplicate on it);
  the body is the same bytes on every retry too, the webhook-timestamp is the send time;
- the URL's host is checked against the allow-list again before each POST (settings may
  have changed since the job was submitted), and redirects are never followed, so that a
  listed host cannot bounce the request to an internal address;
- a 2xx answer is recorded in the store before the task returns: a redelivered or
  repeated message for a delivered event sends nothing;
- any other answer, or no answer, is retried after ``WEBHOOK_BACKOFF_S`` doubled at each
  attempt (capped), until ``WEBHOOK_MAX_ATTEMPTS`` POSTs were made; then it is given up.

A receiver is outside our control, so each POST is bounded (`post_event`): it ends by
``WEBHOOK_DEADLINE_S`` however slowly the receiver answers, and at most
`ANSWER_READ_LIMIT_BYTES` of its answer are read. The task runs on a queue of its own
(``WEBHOOK_QUEUE``), so that a slow receiver occupies a webhook worker, never one that
runs jobs.

Each attempt and its outcome are logged and kept in the store (`WebhookDelivery`); the
job resource shows them (`jobstate.webhooks.webhook_out`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import httpcore
import httpx
from celery import Task

from api_schemas import JobStatus
from api_schemas.webhooks import signature_headers
from jobstate.dispatch import DELIVER_WEBHOOK_TASK
from jobstate.records import JobRecord, utc_now
from jobstate.settings import Settings, get_settings
from jobstate.store import Store, WebhookState
from jobstate.webhooks import WebhookPolicy, answer_outcome, event_id_for
from workers.celery_app import app

# Longest wait between two attempts. A retry is an ETA message that a worker holds
# unacknowledged until it is due: held past the broker's visibility timeout, it would be
# delivered a second time, so the wait also stays below half of that timeout.
BACKOFF_CAP_S = 600.0
USER_AGENT = f"nnkgeo-webhooks/{version('nnkgeo')}"
# Of an answer's body, only the start is read (the log quotes a failure's reason from
# it); past it the connection is closed, however long the body says it is.
ANSWER_READ_LIMIT_BYTES = 4096
# Longest quote of a failed answer's body in the log.
ANSWER_EXCERPT_CHARS = 200

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

    As in `workers.runtime.worker_runtime`: a Redis connection opened in the prefork
    parent must not be shared with its children. This store has no sender: a delivery
    never finishes a job, so it writes no outbox entry to send.
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


class _Deadline:
    """The moment one POST must be over by, and what is left of it for each operation."""

    def __init__(self, seconds: float, *, operation_timeout_s: float) -> None:
        self.seconds = seconds
        self.ends_at = time.monotonic() + seconds
        self._operation_timeout_s = operation_timeout_s

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.ends_at

    def timeout_for(self, requested: float | None) -> float:
        """The timeout of the next socket operation: never past the deadline.

        Raises `socket.timeout` once the deadline passed, which the stream maps to the
        httpcore timeout of the operation at hand.
        """
        left = self.ends_at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the {self.seconds:g} s deadline passed")
        return min(left, self._operation_timeout_s if requested is None else requested)


@contextlib.contextmanager
def _socket_errors_as(
    timeout: type[httpcore.TimeoutException], failure: type[httpcore.NetworkError]
) -> Iterator[None]:
    # TimeoutError (socket.timeout) is an OSError: test it first.
    try:
        yield
    except TimeoutError as error:
        raise timeout(str(error) or "timed out") from error
    except OSError as error:
        raise failure(str(error)) from error


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read, write and TLS handshake ends by the deadline.

    httpcore bounds each operation by its own timeout, not their sum: a receiver that
    sends one byte every few seconds keeps each read short and the request going for
    ever. Here each operation gets at most what is left of the attempt's deadline.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _socket_errors_as(httpcore.ReadTimeout, httpcore.ReadError):
            self._sock.settimeout(self._deadline.timeout_for(timeout))
            # Small reads: what is read past the answer's first bytes is never buffered.
            return self._sock.recv(min(max_bytes, ANSWER_READ_LIMIT_BYTES))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _socket_errors_as(httpcore.WriteTimeout, httpcore.WriteError):
            # One send at a time, each under the deadline: a receiver that drains its
            # socket a byte at a time cannot stretch the write.
            unsent = memoryview(buffer)
            while unsent:
                self._sock.settimeout(self._deadline.timeout_for(timeout))
                unsent = unsent[self._sock.send(unsent) :]

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        with _socket_errors_as(httpcore.ConnectTimeout, httpcore.ConnectError):
            try:
                # The handshake as a whole is bounded by the socket's timeout (CPython
                # runs it against one deadline), so a single cut suffices.
                self._sock.settimeout(self._deadline.timeout_for(timeout))
                tls = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
            except BaseException:
                self._sock.close()
                raise
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object" and isinstance(self._sock, ssl.SSLSocket):
            return self._sock  # httpcore asks it for the ALPN protocol only
        if info == "socket":
            return self._sock
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "is_readable":
            return bool(select.select([self._sock], [], [], 0)[0])
        return None


def _resolve(host: str, port: int, timeout_s: float) -> list[Any]:
    """getaddrinfo, given up after `timeout_s`: the resolver has no timeout of its own.

    A lookup left behind runs out in its daemon thread (the system resolver gives up
    by itself after its own retries); the attempt does not wait for it.
    """
    answer: dict[str, Any] = {}

    def lookup() -> None:
        try:
            answer["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            answer["error"] = error

    resolver = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    resolver.start()
    resolver.join(timeout_s)
    if "error" in answer:
        raise answer["error"]
    if "addresses" not in answer:
        raise TimeoutError(f"resolving {host} took longer than {timeout_s:.1f} s")
    return answer["addresses"]


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network layer for one POST: connections that end by its deadline."""

    def __init__(self, deadline: _Deadline) -> None:
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        with _socket_errors_as(httpcore.ConnectTimeout, httpcore.ConnectError):
            addresses = _resolve(host, port, self._deadline.timeout_for(timeout))
            failure: OSError = OSError(f"{host} has no address")
            for family, kind, protocol, _, address in addresses:
                sock = socket.socket(family, kind, protocol)
                try:
                    sock.settimeout(self._deadline.timeout_for(timeout))
                    sock.connect(address)
                except OSError as error:
                    sock.close()
                    failure = error
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return _DeadlineStream(sock, self._deadline)
            raise failure

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, max(self._deadline.ends_at - time.monotonic(), 0.0)))


def _excerpt(response: httpcore.Response) -> str:
    """The start of a failed answer's body, as one short printable line (may be empty)."""
    head = bytearray()
    # The status decided the outcome already: a body cut short only shortens the quote.
    with contextlib.suppress(
        httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError
    ):
        for chunk in response.iter_stream():
            head += chunk[: ANSWER_READ_LIMIT_BYTES - len(head)]
            if len(head) >= ANSWER_READ_LIMIT_BYTES:
                break
    text = head.decode("utf-8", errors="replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[
        :ANSWER_EXCERPT_CHARS
    ]


@dataclass(frozen=True)
class PostOutcome:
    """How one POST ended: `delivered` on a 2xx answer; `outcome` for the record.

    `answer_excerpt`, the start of a failed answer's body, goes to the log only: the
    record is shown to the tenant, and the receiver may be any service on an allowed
    host, whose error pages are none of the tenant's business.
    """

    delivered: bool
    outcome: str
    answer_excerpt: str = ""


def post_event(
    url: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    deadline_s: float,
    operation_timeout_s: float,
) -> PostOutcome:
    """POST one event, bounded in time and in what is read of the answer.

    Parameters
    ----------
    url : str
        The callback URL (already checked against the allow-list).
    payload : bytes
        The signed JSON body.
    headers : dict of str to str
        Signature, content type and user agent.
    deadline_s : float
        The whole attempt (resolving, connecting, TLS, sending, reading the answer's
        head) ends within this many seconds, however slowly the receiver trickles.
    operation_timeout_s : float
        Longest wait for any single operation (a connect, one read, one write).

    Returns
    -------
    PostOutcome
        Delivered on a 2xx status, decided from the status line alone: a 2xx answer's
        body is not read at all, a failed one's up to `ANSWER_READ_LIMIT_BYTES`.

    Notes
    -----
    httpcore (httpx's transport) with a network backend of our own: each socket
    operation's timeout is cut to what is left of the deadline (`_DeadlineStream`), so
    the sum is bounded without a watchdog that would have to kill a socket in use from
    another thread. No redirect is followed, no proxy or ``.netrc`` read from the
    environment, no content decoded (we send no Accept-Encoding), and the connection is
    closed after the one request.
    """
    deadline = _Deadline(deadline_s, operation_timeout_s=operation_timeout_s)
    try:
        # httpx parses the URL as the rest of the service does (IDNA hosts, escapes).
        parsed = httpx.URL(url)
        target = httpcore.URL(
            scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port, target=parsed.raw_path
        )
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), operation_timeout_s)
        with (
            httpcore.ConnectionPool(
                network_backend=_DeadlineBackend(deadline), max_connections=1, retries=0
            ) as pool,
            pool.stream(
                "POST", target, headers=headers, content=payload, extensions={"timeout": timeouts}
            ) as response,
        ):
            if 200 <= response.status < 300:
                return PostOutcome(delivered=True, outcome=answer_outcome(response.status))
            if 300 <= response.status < 400:
                return PostOutcome(
                    delivered=False,
                    outcome=answer_outcome(response.status, "redirects are not followed"),
                )
            return PostOutcome(
                delivered=False,
                outcome=answer_outcome(response.status),
                answer_excerpt=_excerpt(response),
            )
    except httpcore.TimeoutException as error:
        if deadline.passed:
            why = f"no complete answer within the {deadline_s:g} s deadline"
        else:
            why = f"{type(error).__name__}: {error}"
    except (
        httpcore.NetworkError,
        httpcore.ProtocolError,
        httpcore.UnsupportedProtocol,
        httpx.InvalidURL,
        OSError,
    ) as error:
        why = f"{type(error).__name__}: {error}"
    return PostOutcome(delivered=False, outcome=why[:300])


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
    posted = post_event(
        job.callback_url,
        payload,
        headers,
        # Below the task's soft time limit, so that an attempt always ends by its own
        # deadline and is recorded, never by Celery stopping the task.
        deadline_s=min(settings.webhook_deadline_s, 0.9 * settings.task_soft_time_limit_s),
        operation_timeout_s=settings.webhook_timeout_s,
    )
    attempts_before = delivery.attempts if delivery is not None else 0
    exhausted = not posted.delivered and attempts_before + 1 >= settings.webhook_max_attempts
    state = (
        WebhookState.delivered
        if posted.delivered
        else WebhookState.given_up
        if exhausted
        else WebhookState.pending
    )
    attempts = store.record_webhook_attempt(
        tenant,
        job_id,
        event_id=event_id,
        outcome=posted.outcome,
        state=state,
        now=utc_now(),
    )
    if posted.delivered:
        logger.info("webhook %s of job %s delivered (attempt %d)", event_id, job_id, attempts)
        return DeliveryOutcome("delivered")
    if state is WebhookState.given_up:
        logger.error(
            "webhook %s of job %s given up after %d attempts: %s%s",
            event_id,
            job_id,
            attempts,
            posted.outcome,
            f": {posted.answer_excerpt!r}" if posted.answer_excerpt else "",
        )
        return DeliveryOutcome("given-up")
    delay = retry_delay_s(settings, attempts=attempts)
    logger.warning(
        "webhook %s of job %s: attempt %d failed (%s%s); retrying in %.1f s",
        event_id,
        job_id,
        attempts,
        posted.outcome,
        f": {posted.answer_excerpt!r}" if posted.answer_excerpt else "",
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
