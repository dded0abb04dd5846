"""Standard Webhooks signing against the specification's published test vector."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import api_schemas.webhooks
import nnkgeo.webhooks
from nnkgeo.webhooks import (
    WebhookVerificationError,
    generate_secret,
    sign,
    signature_headers,
    verify,
)

# The example of the Standard Webhooks specification and its reference libraries.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
PAYLOAD = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_specification_vector():
    assert sign(SECRET, msg_id=MSG_ID, timestamp=TIMESTAMP, payload=PAYLOAD) == EXPECTED


def test_verify_accepts_a_genuine_delivery_and_rotated_signatures():
    headers = signature_headers(SECRET, msg_id=MSG_ID, payload=PAYLOAD, timestamp=TIMESTAMP)
    verify(SECRET, headers, PAYLOAD, now=TIMESTAMP + 10)
    rotated = dict(headers, **{"webhook-signature": "v1,bm90LWl0 " + EXPECTED})
    verify(SECRET, {k.upper(): v for k, v in rotated.items()}, PAYLOAD, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"payload": b'{"test": 2432232315}'}, "no signature matches"),
        ({"secret": generate_secret()}, "no signature matches"),
        ({"now": TIMESTAMP + 301}, "tolerance"),
        ({"now": TIMESTAMP - 301}, "tolerance"),
        ({"drop": "webhook-id"}, "missing header"),
    ],
)
def test_verify_refuses_tampered_foreign_or_stale_deliveries(change, reason):
    headers = signature_headers(SECRET, msg_id=MSG_ID, payload=PAYLOAD, timestamp=TIMESTAMP)
    headers.pop(change.get("drop", "none"), None)
    with pytest.raises(WebhookVerificationError, match=reason):
        verify(
            change.get("secret", SECRET),
            headers,
            change.get("payload", PAYLOAD),
            now=change.get("now", TIMESTAMP),
        )


def test_generated_secrets_are_distinct_and_usable():
    first, second = generate_secret(), generate_secret()
    assert first != second and first.startswith("whsec_")
    headers = signature_headers(first, msg_id="m1", payload=b"{}")
    verify(first, headers, b"{}")


def test_receivers_verify_with_the_scheme_the_service_signs_with():
    for name in nnkgeo.webhooks.__all__:
        assert getattr(nnkgeo.webhooks, name) is getattr(api_schemas.webhooks, name), name


def test_the_scheme_needs_only_the_standard_library_so_receivers_can_vendor_it():
    source = Path(api_schemas.webhooks.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported - {"__future__"} <= sys.stdlib_module_names
