"""Standard Webhooks signatures: how the service signs job events, how receivers verify.

Part of the wire contract, beside the models: the workers sign with it, the API checks
secrets against it, and receivers verify with it (through ``nnkgeo.webhooks``, the
client's public module, which re-exports this one).

The scheme of the Standard Webhooks specification (v1): the signed content is
``"{webhook-id}.{webhook-timestamp}.{body}"``, signed with HMAC-SHA256 under the
base64 key that follows ``whsec_`` in the secret; the ``webhook-signature`` header holds
``v1,<base64 signature>`` (several, space-separated, while a secret is being rotated).
Receivers must check the timestamp too, so that an old delivery cannot be replayed.

Only the standard library is needed, so a receiver can vendor this file alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(Exception):
    """The delivery is not authentic, or too old: answer it 400 and drop it."""


def generate_secret(n_bytes: int = 32) -> str:
    """A fresh signing secret, ``whsec_`` + base64 of ``n_bytes`` random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(n_bytes)).decode()


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError as error:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from error


def sign(secret: str, *, msg_id: str, timestamp: int, payload: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of one delivery."""
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_headers(
    secret: str, *, msg_id: str, payload: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers a delivery carries: webhook-id, -timestamp and -signature."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id=msg_id, timestamp=timestamp, payload=payload),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    payload: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a delivery's signature and age; raise WebhookVerificationError if either fails.

    Parameters
    ----------
    secret : str
        The tenant's signing secret (``whsec_...``).
    headers : mapping
        The request headers (names in any case).
    payload : bytes
        The raw request body, exactly as received (not re-serialised JSON).
    tolerance_s : int
        Largest accepted distance between the timestamp and ``now``, either way.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        timestamp_text = lowered["webhook-timestamp"]
        offered = lowered["webhook-signature"]
    except KeyError as missing:
        raise WebhookVerificationError(f"missing header {missing.args[0]}") from None
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance window")
    expected = sign(secret, msg_id=msg_id, timestamp=timestamp, payload=payload)
    for candidate in offered.split():
        if hmac.compare_digest(candidate, expected):
            return
    raise WebhookVerificationError("no signature matches")
