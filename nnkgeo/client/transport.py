"""Sending calls: the httpx session, authentication, retries, and errors as exceptions.

One transport per client: :class:`SyncTransport` for :class:`~nnkgeo.client.Client`,
:class:`AsyncTransport` for :class:`~nnkgeo.client.AsyncClient`. They differ only in how
they send and sleep; when to retry (:class:`RetryPolicy`) and how an error answer
becomes an exception (:func:`error_from_response`) are shared.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from api_schemas import Problem
from nnkgeo import __version__
from nnkgeo.client.calls import Call, Plan, Sleep, T
from nnkgeo.errors import (
    Hint,
    NNKGeoHTTPError,
    ServiceUnreachableError,
    UsageError,
    error_for_problem,
)

URL_VARIABLE = "NNKGEO_URL"
API_KEY_VARIABLE = "NNKGEO_API_KEY"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF_S = 0.5
# Statuses that mean "not now" rather than "no": the request is sent again.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_S = 30.0
# A Retry-After longer than this is not slept through: the error is raised at once.
MAX_RETRY_AFTER_S = 120.0
# Connection failures worth another attempt; not, e.g., an unsupported URL scheme.
RETRYABLE_TRANSPORT_ERRORS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
# Retrying quietly for longer than this, the client says so (logger "nnkgeo.client",
# which the nnkgeo command prints on stderr): a silent wait looks like a hang.
RETRY_NOTICE_AFTER_S = 2.0

logger = logging.getLogger("nnkgeo.client")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ClientSettings:
    """Where the service is, the key to it, and how patiently to talk to it."""

    url: str
    api_key: str | None
    timeout: float | httpx.Timeout
    retries: int
    backoff: float

    @classmethod
    def resolve(
        cls,
        url: str | None,
        api_key: str | None,
        *,
        timeout: float | httpx.Timeout,
        retries: int,
        backoff: float,
    ) -> ClientSettings:
        """The settings from the arguments, else ``NNKGEO_URL`` and ``NNKGEO_API_KEY``.

        Raises
        ------
        UsageError
            Without a URL, with one that is not http(s), or with negative retries or
            backoff.
        """
        url = url or os.environ.get(URL_VARIABLE)
        if not url:
            raise UsageError(
                "no nnkgeo service URL",
                hint=Hint(
                    python=f"pass url=... or set {URL_VARIABLE} (e.g. http://127.0.0.1:8000)",
                    cli=f"pass --url URL or set {URL_VARIABLE} (e.g. http://127.0.0.1:8000)",
                ),
            )
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"the service URL must start with http:// or https://, got {url!r}")
        if retries < 0:
            raise UsageError(f"retries must be >= 0, got {retries}")
        if backoff < 0:
            raise UsageError(f"backoff must be >= 0 seconds, got {backoff}")
        return cls(
            url=url.rstrip("/"),
            api_key=api_key or os.environ.get(API_KEY_VARIABLE) or None,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
        )

    def headers(self) -> dict[str, str]:
        """The headers of every request: who is asking, with which key."""
        headers = {"User-Agent": f"nnkgeo-python/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def describe(self, client_name: str) -> str:
        """A client's repr: its URL, and whether it has a key (never the key)."""
        key = "set" if self.api_key else "none"
        return f"{client_name}(url={self.url!r}, api_key={key})"


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """When an attempt is sent again, and after how long."""

    retries: int
    backoff: float

    def delay_after_status(
        self, attempt: int, call: Call[Any], response: httpx.Response
    ) -> float | None:
        """Seconds to wait before sending again, or None to raise the answer's error."""
        retry_after = retry_after_s(response.headers.get("Retry-After"))
        retryable = response.status_code in RETRY_STATUSES or (
            # A submit whose Idempotency-Key is still being processed: a retry of ours
            # overtook the first attempt. (Other 409s with Retry-After, such as the report
            # of a running job, are the caller's to handle: wait() exists for that.)
            response.status_code == 409
            and retry_after is not None
            and "Idempotency-Key" in call.headers
        )
        if not retryable or attempt >= self.retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= MAX_RETRY_AFTER_S else None
        return self.backoff_s(attempt)

    def delay_after_error(
        self, attempt: int, error: httpx.TransportError, *, answered_before: bool
    ) -> float | None:
        """Seconds to wait after a connection failure, or None to raise it now.

        A connection refused (or a host name unknown) before the service ever answered
        this client is raised at once: nothing listens at that URL, and minutes of
        backoff would only hide a typo or a service not started. Once the service has
        answered, a refusal is likely a restart, and is retried like the rest.
        """
        if isinstance(error, httpx.ConnectError) and not answered_before:
            return None
        return None if attempt >= self.retries else self.backoff_s(attempt)

    def backoff_s(self, attempt: int) -> float:
        """The backoff before retry ``attempt + 1``."""
        # Exponential, with "equal jitter": clients that failed together spread out.
        ceiling = min(self.backoff * 2**attempt, MAX_BACKOFF_S)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110, 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --------------------------------------------------------------------------- errors


def error_from_response(response: httpx.Response) -> NNKGeoHTTPError:
    """The typed exception for an error answer (problem+json, or whatever a proxy sent)."""
    try:
        problem = Problem.model_validate_json(response.content)
    except ValidationError:
        text = response.text.strip()
        problem = Problem(
            title=response.reason_phrase or "HTTP error",
            status=response.status_code,
            detail=(text[:300] or None),
            instance=response.request.url.path,
        )
    return error_for_problem(problem)


_URL_HINT = Hint(
    python=f"is the service running there? Check url= or {URL_VARIABLE}",
    cli=f"is the service running there? Check --url or {URL_VARIABLE}",
)


def _unreachable(
    settings: ClientSettings, call: Call[Any], error: Exception, *, attempts: int
) -> ServiceUnreachableError:
    if isinstance(error, httpx.ConnectError):
        after = f" after {attempts} attempts" if attempts > 1 else ""
        return ServiceUnreachableError(
            f"cannot connect to {settings.url}{after} ({error})", hint=_URL_HINT
        )
    return ServiceUnreachableError(
        f"{call.method} {settings.url}{call.path} failed after {attempts} attempt"
        f"{'s' if attempts > 1 else ''}: {type(error).__name__}: {error}"
    )


class _RetryNotice:
    """Says, once retrying has lasted a while, each further retry of one call."""

    def __init__(self, settings: ClientSettings, call: Call[Any]) -> None:
        self._what = f"{call.method} {call.path}"
        self._attempts = settings.retries + 1
        self._started = time.monotonic()

    def before_sleep(self, attempt: int, delay: float, reason: str) -> None:
        waited = time.monotonic() - self._started
        if waited + delay < RETRY_NOTICE_AFTER_S:
            return
        logger.warning(
            "%s: %s; retrying in %.1f s (attempt %d of %d)",
            self._what,
            reason,
            delay,
            attempt + 2,
            self._attempts,
        )


def _failure(error: httpx.TransportError) -> str:
    return f"{type(error).__name__}: {error}".rstrip(": ")


def _answer(response: httpx.Response) -> str:
    return f"the service answered {response.status_code} {response.reason_phrase}".rstrip()


def _partial_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")


# --------------------------------------------------------------------------- transports


class SyncTransport:
    """Sends calls and runs plans with a blocking ``httpx.Client``."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._policy = RetryPolicy(retries=settings.retries, backoff=settings.backoff)
        # Whether the service has answered this client yet (see delay_after_error).
        self._answered = False
        self._http = httpx.Client(
            base_url=settings.url, headers=settings.headers(), timeout=settings.timeout
        )

    def send(self, call: Call[T]) -> T:
        """Send ``call``, retrying as the policy says; its parsed answer, or the error."""
        attempt = 0
        notice = _RetryNotice(self.settings, call)
        while True:
            try:
                response = self._attempt(call)
            except RETRYABLE_TRANSPORT_ERRORS as error:
                delay = self._policy.delay_after_error(
                    attempt, error, answered_before=self._answered
                )
                if delay is None or call.probe:
                    raise _unreachable(self.settings, call, error, attempts=attempt + 1) from error
                reason = _failure(error)
            else:
                self._answered = True
                if response.is_success or call.probe:
                    return call.parse(response)
                delay = self._policy.delay_after_status(attempt, call, response)
                if delay is None:
                    raise error_from_response(response)
                reason = _answer(response)
            notice.before_sleep(attempt, delay, reason)
            time.sleep(delay)
            attempt += 1

    def _attempt(self, call: Call[Any]) -> httpx.Response:
        request = self._http.build_request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            content=None if call.body is None else call.body.sync_chunks(),
            headers=call.request_headers(),
        )
        response = self._http.send(request, stream=True)
        try:
            if call.download_to is None or not response.is_success:
                response.read()
            else:
                partial = _partial_path(call.download_to)
                try:
                    with partial.open("wb") as file:
                        for chunk in response.iter_bytes():
                            file.write(chunk)
                    partial.replace(call.download_to)
                finally:
                    partial.unlink(missing_ok=True)
        finally:
            response.close()
        return response

    def run(self, plan: Plan[T]) -> T:
        """Run a plan: send its calls, take its sleeps; its result."""
        result: Any = None
        try:
            while True:
                step = plan.send(result)
                result = time.sleep(step.seconds) if isinstance(step, Sleep) else self.send(step)
        except StopIteration as finished:
            return finished.value
        finally:
            plan.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


class AsyncTransport:
    """Sends calls and runs plans with an ``httpx.AsyncClient`` (asyncio or trio)."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._policy = RetryPolicy(retries=settings.retries, backoff=settings.backoff)
        self._answered = False
        self._http = httpx.AsyncClient(
            base_url=settings.url, headers=settings.headers(), timeout=settings.timeout
        )

    async def send(self, call: Call[T]) -> T:
        """See :meth:`SyncTransport.send`."""
        import anyio  # httpx's own dependency

        attempt = 0
        notice = _RetryNotice(self.settings, call)
        while True:
            try:
                response = await self._attempt(call)
            except RETRYABLE_TRANSPORT_ERRORS as error:
                delay = self._policy.delay_after_error(
                    attempt, error, answered_before=self._answered
                )
                if delay is None or call.probe:
                    raise _unreachable(self.settings, call, error, attempts=attempt + 1) from error
                reason = _failure(error)
            else:
                self._answered = True
                if response.is_success or call.probe:
                    return call.parse(response)
                delay = self._policy.delay_after_status(attempt, call, response)
                if delay is None:
                    raise error_from_response(response)
                reason = _answer(response)
            notice.before_sleep(attempt, delay, reason)
            await anyio.sleep(delay)
            attempt += 1

    async def _attempt(self, call: Call[Any]) -> httpx.Response:
        import anyio

        request = self._http.build_request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            content=None if call.body is None else call.body.async_chunks(),
            headers=call.request_headers(),
        )
        response = await self._http.send(request, stream=True)
        try:
            if call.download_to is None or not response.is_success:
                await response.aread()
            else:
                partial = _partial_path(call.download_to)
                try:
                    async with await anyio.open_file(partial, "wb") as file:
                        async for chunk in response.aiter_bytes():
                            await file.write(chunk)
                    partial.replace(call.download_to)
                finally:
                    partial.unlink(missing_ok=True)
        finally:
            await response.aclose()
        return response

    async def run(self, plan: Plan[T]) -> T:
        """See :meth:`SyncTransport.run`."""
        import anyio

        result: Any = None
        try:
            while True:
                step = plan.send(result)
                if isinstance(step, Sleep):
                    result = await anyio.sleep(step.seconds)
                else:
                    result = await self.send(step)
        except StopIteration as finished:
            return finished.value
        finally:
            plan.close()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()
