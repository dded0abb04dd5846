"""The service refuses to start with missing or unsafe settings, saying what to fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from jobstate.settings import ConfigurationError, Settings, load_settings
from service.auth import ApiKeyring

REPO_ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = "k" * 16


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("NNKGEO_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        (
            {"NNKGEO_TASK_SOFT_TIME_LIMIT_S": "100", "NNKGEO_TASK_TIME_LIMIT_S": "100"},
            "TASK_SOFT_TIME_LIMIT_S must be below TASK_TIME_LIMIT_S",
        ),
        (
            {"NNKGEO_LEASE_S": "60", "NNKGEO_VISIBILITY_TIMEOUT_S": "60"},
            "VISIBILITY_TIMEOUT_S must exceed LEASE_S",
        ),
        ({"NNKGEO_LEASE_S": "1"}, "NNKGEO_LEASE_S"),
        (
            {"NNKGEO_JOB_TTL_S": "10", "NNKGEO_RESULT_TTL_S": "20"},
            "JOB_TTL_S must be at least RESULT_TTL_S",
        ),
        ({"NNKGEO_MAX_UPLOAD_BYTES": "0"}, "NNKGEO_MAX_UPLOAD_BYTES"),
        ({"NNKGEO_CPU_QUEUE": "same", "NNKGEO_GPU_QUEUE": "same"}, "must differ"),
        ({"NNKGEO_LOG_LEVEL": "LOUD"}, "NNKGEO_LOG_LEVEL"),
    ],
)
def test_unsafe_settings_are_refused_with_a_message_naming_them(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], named: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigurationError, match="refuses to start") as refusal:
        load_settings()

    assert named in str(refusal.value)


def test_defaults_are_safe() -> None:
    settings = load_settings()

    assert settings.task_soft_time_limit_s < settings.task_time_limit_s
    assert settings.lease_s < settings.visibility_timeout_s
    # Recovery of a dead worker's job: lease expiry plus a reaper sweep, well under 60 s.
    assert settings.lease_s + settings.reaper_interval_s < 60
    assert settings.heartbeat_interval_s == settings.lease_s / 3


def test_a_long_job_is_bounded_by_its_own_time_limit_not_the_visibility_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NNKGEO_TASK_SOFT_TIME_LIMIT_S", "20000")
    monkeypatch.setenv("NNKGEO_TASK_TIME_LIMIT_S", "21600")
    settings = load_settings()

    assert settings.task_time_limit_s > settings.visibility_timeout_s
    assert "redis://" in settings.redis_url


@pytest.mark.parametrize(
    ("api_keys", "named"),
    [
        ("", "no API key is configured"),
        ("alpha:short", "use at least 16"),
        ("alpha", "expected `tenant:key`"),
        (f"Alpha Team:{GOOD_KEY}", "must match"),
        (f"alpha:{GOOD_KEY},beta:{GOOD_KEY}", "the same key is configured for two tenants"),
    ],
)
def test_missing_or_weak_api_keys_are_refused(api_keys: str, named: str) -> None:
    with pytest.raises(ConfigurationError) as refusal:
        ApiKeyring.from_settings(Settings(api_keys=SecretStr(api_keys)))

    assert named in str(refusal.value)


def test_keys_come_from_the_variable_and_the_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# rotated 2026-11\n\nbeta:{'b' * 20}\ngamma:{'c' * 20}\n")

    keyring = ApiKeyring.from_settings(
        Settings(api_keys=SecretStr(f"alpha:{'a' * 20}"), api_keys_file=keys_file)
    )

    assert keyring.tenants == {"alpha", "beta", "gamma"}
    tenant = keyring.tenant_for("c" * 20)
    assert tenant is not None
    assert tenant.name == "gamma"
    assert keyring.tenant_for("c" * 19) is None
    assert keyring.tenant_for("") is None


def test_unreadable_keys_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read NNKGEO_API_KEYS_FILE"):
        ApiKeyring.from_settings(Settings(api_keys_file=tmp_path / "missing"))


def test_anonymous_access_must_be_asked_for() -> None:
    keyring = ApiKeyring.from_settings(Settings(allow_anonymous=True))

    assert keyring.allow_anonymous
    assert keyring.tenants == frozenset()


def test_the_api_process_exits_with_the_message_when_no_key_is_configured(
    tmp_path: Path,
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "uvicorn", "service.main:app", "--port", "0"],
        cwd=REPO_ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO_ROOT),
            "NNKGEO_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode != 0
    assert "no API key is configured" in completed.stderr
