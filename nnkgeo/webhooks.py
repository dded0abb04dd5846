"""Verify (or sign) nnkgeo's webhook deliveries: the Standard Webhooks scheme (v1).

A receiver of job events checks each delivery with :func:`verify` before trusting it::

    from nnkgeo.webhooks import WebhookVerificationError, verify

    try:
        verify(secret, request.headers, request.body)
    except WebhookVerificationError:
        ...  # answer 400 and drop it

The scheme itself lives in :mod:`api_schemas.webhooks`, beside the other parts of the
wire contract, so that the service and its workers sign with it without depending on the
client; this module is its public name for receivers. Only the standard library is
needed: a receiver can vendor ``api_schemas/webhooks.py`` alone.
"""

from api_schemas.webhooks import (
    DEFAULT_TOLERANCE_S,
    SECRET_PREFIX,
    SIGNATURE_VERSION,
    WebhookVerificationError,
    generate_secret,
    sign,
    signature_headers,
    verify,
)

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SECRET_PREFIX",
    "SIGNATURE_VERSION",
    "WebhookVerificationError",
    "generate_secret",
    "sign",
    "signature_headers",
    "verify",
]
