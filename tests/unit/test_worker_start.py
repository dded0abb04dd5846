"""What a worker says at start about its memory budget (a log line operators act on)."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest

from workers.celery_app import _warn_when_budgets_exceed_the_machine

MACHINE_BYTES = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
BUDGET_BYTES = 4 * 1024**3  # the default NNKGEO_WORKER_MEMORY_BYTES


def test_warns_when_budget_times_concurrency_passes_three_quarters_of_the_machine(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NNKGEO_WORKER_MEMORY_BYTES", raising=False)
    too_many = int(0.75 * MACHINE_BYTES // BUDGET_BYTES) + 1
    with caplog.at_level(logging.WARNING, logger="workers.celery_app"):
        _warn_when_budgets_exceed_the_machine(instance=SimpleNamespace(concurrency=too_many))
    assert "exceeds 75% of this machine" in caplog.text


def test_says_nothing_when_the_budgets_fit(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NNKGEO_WORKER_MEMORY_BYTES", raising=False)
    fitting = max(1, int(0.75 * MACHINE_BYTES // BUDGET_BYTES))
    with caplog.at_level(logging.WARNING, logger="workers.celery_app"):
        _warn_when_budgets_exceed_the_machine(instance=SimpleNamespace(concurrency=fitting))
    if fitting * BUDGET_BYTES <= 0.75 * MACHINE_BYTES:
        assert "exceeds" not in caplog.text


def test_default_settings_give_an_uploaded_model_the_job_budget_and_most_of_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The security tests lower these limits to run fast; here are the defaults, once."""
    from jobstate.settings import Settings
    from workers.runtime import WorkerRuntime, model_sandbox_policy

    for name in list(os.environ):
        if name.startswith("NNKGEO_"):
            monkeypatch.delenv(name)
    settings = Settings()
    policy = model_sandbox_policy(WorkerRuntime(settings=settings, store=None, blobs=None))  # type: ignore[arg-type]
    assert policy.memory_bytes == BUDGET_BYTES == settings.memory_planning_budget_bytes
    assert policy.cpu_seconds == int(0.8 * 3600)
    assert policy.wall_seconds == pytest.approx(0.9 * 3600)
    assert policy.unavailable is None and policy.confine  # this kernel enforces it
