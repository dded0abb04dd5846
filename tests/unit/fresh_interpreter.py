"""Run Python code in a fresh interpreter, from the repository root, and read back the
JSON object it prints last: for what only a new process shows (imports, thread pools)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_json(code: str, *args: str, timeout: float) -> dict:
    """``python -c code *args``; fails the test on a non-zero exit, with its stderr."""
    completed = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])
