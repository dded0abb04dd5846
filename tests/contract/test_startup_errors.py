"""A misconfigured API or worker says what to fix in a line per setting, with no traceback.

Each case starts the real process, as operators do (`uvicorn service.main:app`, `python
-m uvicorn ...`, `celery -A workers.celery_app worker`), with one bad setting, and reads
what it printed. No Redis is needed: the settings are refused before anything connects.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GOOD_KEYS = "alpha:alpha-key-0123456789abcdef"
BIN = Path(sys.executable).parent

API = [str(BIN / "uvicorn"), "service.main:app", "--port", "0"]
API_AS_MODULE = [sys.executable, "-m", "uvicorn", "service.main:app", "--port", "0"]
WORKER = [str(BIN / "celery"), "-A", "workers.celery_app", "worker", "--pool", "solo"]


def _start(
    command: list[str], settings: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("NNKGEO_")
    }
    environment.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "NNKGEO_DATA_DIR": str(tmp_path),
            # Nothing listens here: a process that got past its settings would hang on it.
            "NNKGEO_REDIS_URL": "redis://127.0.0.1:1/0",
            **settings,
        }
    )
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "settings", "process", "named", "fix"),
    [
        (API, {"NNKGEO_API_KEYS": "alpha:short"}, "API", "NNKGEO_API_KEYS", "use at least 16"),
        (API_AS_MODULE, {}, "API", "NNKGEO_API_KEYS", "set NNKGEO_API_KEYS=tenant:key"),
        (
            API,
            {"NNKGEO_API_KEYS": GOOD_KEYS, "NNKGEO_LEASE_S": "1"},
            "API",
            "NNKGEO_LEASE_S",
            "greater than or equal to 2",
        ),
        (
            API,
            {
                "NNKGEO_API_KEYS": GOOD_KEYS,
                "NNKGEO_TASK_SOFT_TIME_LIMIT_S": "100",
                "NNKGEO_TASK_TIME_LIMIT_S": "100",
            },
            "API",
            "TASK_SOFT_TIME_LIMIT_S",
            "must be below TASK_TIME_LIMIT_S",
        ),
        (WORKER, {"NNKGEO_LEASE_S": "1"}, "worker", "NNKGEO_LEASE_S", "greater than or equal"),
        (
            WORKER,
            {"NNKGEO_MAX_UPLOAD_BYTES": "0"},
            "worker",
            "NNKGEO_MAX_UPLOAD_BYTES",
            "greater than 0",
        ),
    ],
    ids=[
        "api-short-key",
        "api-no-key",
        "api-lease",
        "api-time-limits",
        "worker-lease",
        "worker-upload",
    ],
)
def test_a_bad_setting_stops_the_process_with_one_line_naming_it(
    tmp_path: Path,
    command: list[str],
    settings: dict[str, str],
    process: str,
    named: str,
    fix: str,
) -> None:
    completed = _start(command, settings, tmp_path)

    assert completed.returncode == 2, completed
    assert "Traceback" not in completed.stderr, completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith(f"nnkgeo {process} refuses to start: "), lines[0]
    assert named in lines[0] and fix in lines[0], lines[0]


def test_each_bad_setting_gets_its_own_line(tmp_path: Path) -> None:
    completed = _start(API, {"NNKGEO_LEASE_S": "1", "NNKGEO_LOG_LEVEL": "LOUD"}, tmp_path)

    assert completed.returncode == 2, completed
    assert "Traceback" not in completed.stderr, completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, completed.stderr
    assert "NNKGEO_LEASE_S" in lines[0] and "NNKGEO_LOG_LEVEL" in lines[1], lines
