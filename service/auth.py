"""Bearer API keys mapped to tenants.

A tenant name becomes part of every Redis key that holds its data (see `jobstate.store`),
so tenant names are restricted to a safe alphabet here, once, at start-up.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from jobstate.settings import ConfigurationError, Settings

TENANT_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MIN_API_KEY_LENGTH = 16
ANONYMOUS_TENANT = "anonymous"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tenant:
    name: str


@dataclass(frozen=True)
class _KeyEntry:
    key_digest: bytes
    tenant: str


class ApiKeyring:
    """Resolves a presented API key to its tenant without leaking timing information."""

    def __init__(self, keys_to_tenants: dict[str, str], *, allow_anonymous: bool = False) -> None:
        # Comparing fixed-length digests, and always all of them, keeps the time taken
        # independent of how much of a guessed key is right and of which entry matches.
        self._entries = [
            _KeyEntry(hashlib.sha256(key.encode()).digest(), tenant)
            for key, tenant in keys_to_tenants.items()
        ]
        self.allow_anonymous = allow_anonymous

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(entry.tenant for entry in self._entries)

    def tenant_for(self, presented_key: str) -> Tenant | None:
        presented_digest = hashlib.sha256(presented_key.encode()).digest()
        matched: str | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.key_digest, presented_digest):
                matched = entry.tenant
        return Tenant(matched) if matched is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeyring:
        """Build the keyring, refusing configurations that would be unsafe to serve."""
        sources: list[tuple[str, str]] = []
        inline = settings.api_keys.get_secret_value().strip()
        if inline:
            sources += [("NNKGEO_API_KEYS", item) for item in inline.split(",") if item.strip()]
        if settings.api_keys_file is not None:
            sources += [
                (f"NNKGEO_API_KEYS_FILE line {number}", line)
                for number, line in _read_key_lines(settings.api_keys_file)
            ]

        problems: list[str] = []
        keys_to_tenants: dict[str, str] = {}
        for origin, entry in sources:
            tenant, separator, key = entry.strip().partition(":")
            tenant, key = tenant.strip(), key.strip()
            if not separator or not key:
                problems.append(f"{origin}: expected `tenant:key`, got no key")
                continue
            if not TENANT_NAME_PATTERN.match(tenant):
                problems.append(
                    f"{origin}: tenant {tenant!r} must match {TENANT_NAME_PATTERN.pattern}"
                )
            if len(key) < MIN_API_KEY_LENGTH:
                problems.append(
                    f"{origin}: the key of tenant {tenant!r} is {len(key)} characters; "
                    f"use at least {MIN_API_KEY_LENGTH} (e.g. `openssl rand -hex 24`)"
                )
            if key in keys_to_tenants and keys_to_tenants[key] != tenant:
                problems.append(f"{origin}: the same key is configured for two tenants")
            keys_to_tenants[key] = tenant
        if not keys_to_tenants and not settings.allow_anonymous:
            problems.append(
                "no API key is configured: set NNKGEO_API_KEYS=tenant:key (or "
                "NNKGEO_API_KEYS_FILE), or NNKGEO_ALLOW_ANONYMOUS=true for local development"
            )
        if problems:
            raise ConfigurationError(
                "nnkgeo refuses to start with these API keys:\n"
                + "\n".join(f"  - {problem}" for problem in problems),
                problems=problems,
            )
        if settings.allow_anonymous:
            logger.warning(
                "NNKGEO_ALLOW_ANONYMOUS is set: requests without a key are served as tenant "
                "%r. Never use this on a reachable network.",
                ANONYMOUS_TENANT,
            )
        return cls(keys_to_tenants, allow_anonymous=settings.allow_anonymous)


def _read_key_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(
            f"nnkgeo cannot read NNKGEO_API_KEYS_FILE {path}: {error.strerror}"
        ) from None
    return [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
