"""Which callback URLs a job may carry, and the tenants' signing secrets.

A `callback_url` makes a worker send an HTTP request to wherever the client says, from
inside the deployment's network: without a check, any tenant could make the service
probe or POST to internal addresses (SSRF). So the operator lists the hosts that
callbacks may reach (``NNKGEO_WEBHOOK_ALLOWED_HOSTS``), and the URL's host is checked
against that list twice: at submission (a 422 that names ``callback_url``) and again by
the worker just before each POST (the settings may have changed meanwhile). Nothing is
resolved or requested at submission, and redirects are never followed, so a listed
host cannot bounce a delivery elsewhere.

Each tenant signs with its own secret (``NNKGEO_WEBHOOK_SECRETS``); a tenant without
one cannot use callback_url, since its receivers could not tell our events from forged
ones.

Each POST's outcome is kept in the delivery record as one line of text
(`answer_outcome` writes the form of an HTTP answer, `status_code_of` reads its status
code back), and the job resource shows the record as its ``webhook`` field
(`webhook_out`).

Free of FastAPI and Celery: the API and the workers both use it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from api_schemas.jobs import JobWebhook, WebhookDeliveryStatus
from api_schemas.problems import FieldError
from api_schemas.webhooks import SECRET_PREFIX
from jobstate.store import WebhookDelivery, WebhookState

if TYPE_CHECKING:
    from jobstate.settings import Settings

CALLBACK_URL_FIELD = "callback_url"
_SCHEMES = ("http", "https")
_ANSWER_OUTCOME = re.compile(r"^HTTP (\d{3})\b")
_WEBHOOK_STATUS = {
    WebhookState.pending: WebhookDeliveryStatus.pending,
    WebhookState.delivered: WebhookDeliveryStatus.delivered,
    WebhookState.given_up: WebhookDeliveryStatus.failed,
}


def event_id_for(job_id: str, status: str) -> str:
    """The webhook-id of a job's end: the same for every retry, so receivers can dedupe.

    A job ends once, so (job, final status) names exactly one event.
    """
    return f"msg_{job_id.removeprefix('job_')}_{status}"


def answer_outcome(status_code: int, detail: str = "") -> str:
    """The outcome of a POST that got an answer, as the delivery record keeps it.

    Parameters
    ----------
    status_code : int
        The answer's HTTP status.
    detail : str, optional
        Why it counts as a failure, in our words (a redirect: they are not followed).
        Never the receiver's text: the record is shown to the tenant.

    Returns
    -------
    str
        ``HTTP 204``, or ``HTTP 307: <detail>``; `status_code_of` reads the code back.
    """
    return f"HTTP {status_code}: {detail}" if detail else f"HTTP {status_code}"


def status_code_of(outcome: str | None) -> int | None:
    """The HTTP status of an outcome written by `answer_outcome`; None for no answer."""
    match = _ANSWER_OUTCOME.match(outcome or "")
    return int(match.group(1)) if match else None


def webhook_out(delivery: WebhookDelivery | None) -> JobWebhook:
    """The ``webhook`` field of a job that has a callback_url, from its delivery record.

    Parameters
    ----------
    delivery : WebhookDelivery or None
        The store's record; None while no POST was made nor refused yet (the job has
        not ended, or its event is still queued).

    Returns
    -------
    JobWebhook
        ``pending`` until a 2xx answer (``delivered``) or the last attempt or a refusal
        (``failed``). The store keeps one outcome per event, so ``last_error`` is the
        latest failure; it is cleared once the event is delivered.
    """
    if delivery is None:
        return JobWebhook(status=WebhookDeliveryStatus.pending, attempts=0)
    delivered = delivery.state is WebhookState.delivered
    return JobWebhook(
        status=_WEBHOOK_STATUS[delivery.state],
        attempts=delivery.attempts,
        last_status_code=status_code_of(delivery.last_outcome),
        last_error=None if delivered else delivery.last_outcome,
        # The record is last written by the attempt that got the 2xx answer.
        delivered_at=delivery.updated_at if delivered else None,
    )


@dataclass(frozen=True)
class AllowedHost:
    """One entry of the allow-list: a host name or IP, and a port (None = any port)."""

    host: str
    port: int | None = None

    def admits(self, host: str, port: int) -> bool:
        return self.host == host and (self.port is None or self.port == port)


def _normalised_host(host: str) -> str:
    # urlsplit lower-cases the host and strips IPv6 brackets; a trailing dot names the
    # same DNS host, and must not slip past a list that spells it without one.
    return host.lower().rstrip(".")


def parse_allowed_hosts(text: str) -> tuple[AllowedHost, ...]:
    """Parse ``host`` / ``host:port`` entries (``[::1]:8080`` for IPv6), comma-separated."""
    hosts: list[AllowedHost] = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        parts = urlsplit(f"//{entry}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (
            not parts.hostname
            or port == -1
            or entry.endswith(":")
            or parts.path
            or parts.username is not None
        ):
            raise ValueError(
                f"WEBHOOK_ALLOWED_HOSTS: {entry!r} is not `host` or `host:port` (IPv6 as "
                "`[::1]:8080`)"
            )
        hosts.append(AllowedHost(host=_normalised_host(parts.hostname), port=port))
    return tuple(hosts)


def parse_webhook_secrets(text: str) -> dict[str, str]:
    """Parse ``tenant:whsec_<base64>`` entries, comma-separated, into tenant -> secret."""
    secrets: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        tenant, _, secret = entry.partition(":")
        tenant, secret = tenant.strip(), secret.strip()
        if not tenant or not secret.startswith(SECRET_PREFIX):
            # Never echo the entry: it may hold a secret.
            raise ValueError(
                "WEBHOOK_SECRETS: each entry is `tenant:whsec_<base64>` "
                "(make one with `python -c 'import nnkgeo.webhooks as w; "
                "print(w.generate_secret())'`)"
            )
        try:
            key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        # The Standard Webhooks spec asks for keys of 24 to 64 bytes.
        if not 24 <= len(key) <= 64:
            raise ValueError(
                f"WEBHOOK_SECRETS: the secret of tenant {tenant!r} is not `whsec_` followed "
                "by the base64 of 24 to 64 random bytes"
            )
        if tenant in secrets:
            raise ValueError(f"WEBHOOK_SECRETS: tenant {tenant!r} is listed twice")
        secrets[tenant] = secret
    return secrets


@dataclass(frozen=True)
class WebhookPolicy:
    """The operator's webhook settings, parsed once: allowed hosts and tenant secrets."""

    allowed_hosts: tuple[AllowedHost, ...] = ()
    secrets: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        return cls(
            allowed_hosts=parse_allowed_hosts(settings.webhook_allowed_hosts),
            secrets=parse_webhook_secrets(settings.webhook_secrets.get_secret_value()),
        )

    def secret_for(self, tenant: str) -> str | None:
        return self.secrets.get(tenant)

    def url_problem(self, url: str) -> str | None:
        """Why `url` may not receive webhooks, or None when it may."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "is not a valid URL"
        if parts.scheme not in _SCHEMES:
            return "must be an http or https URL"
        if not parts.hostname:
            return "must name a host"
        if parts.username is not None or parts.password is not None:
            # Credentials would be stored in the job record and echoed in logs.
            return "must not carry credentials (user:password@); events are signed instead"
        if not self.allowed_hosts:
            return (
                "webhooks are disabled on this service: the operator has not configured "
                "NNKGEO_WEBHOOK_ALLOWED_HOSTS"
            )
        host = _normalised_host(parts.hostname)
        effective_port = port if port is not None else (443 if parts.scheme == "https" else 80)
        if not any(allowed.admits(host, effective_port) for allowed in self.allowed_hosts):
            shown = f"{host}:{effective_port}" if ":" not in host else f"[{host}]:{effective_port}"
            return (
                f"host {shown} is not on the service's webhook allow-list "
                "(NNKGEO_WEBHOOK_ALLOWED_HOSTS); ask the operator to add it"
            )
        return None

    def check_callback(self, tenant: str, url: str) -> list[FieldError]:
        """The field errors of a submitted callback_url (none when it is acceptable)."""
        errors: list[FieldError] = []
        problem = self.url_problem(url)
        if problem is not None:
            errors.append(FieldError(field=CALLBACK_URL_FIELD, message=problem))
        if self.secret_for(tenant) is None:
            errors.append(
                FieldError(
                    field=CALLBACK_URL_FIELD,
                    message=f"tenant {tenant!r} has no webhook signing secret; the operator "
                    "must configure one in NNKGEO_WEBHOOK_SECRETS before its jobs can use "
                    "callback_url",
                )
            )
        return errors
