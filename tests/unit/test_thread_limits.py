"""A worker's thread limit reaches every pool that sizes itself to the host's cores.

Run in a fresh interpreter: the pools are per process, and this one's are set by other
tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
import faiss, numba
from workers.runtime import _limit_cpu_threads
before = {"numba": numba.get_num_threads(), "faiss": faiss.omp_get_max_threads()}
_limit_cpu_threads(1)
after = {"numba": numba.get_num_threads(), "faiss": faiss.omp_get_max_threads()}
if "torch" in sys.modules:
    after["torch"] = sys.modules["torch"].get_num_threads()
print(json.dumps({"before": before, "after": after}))
"""


def test_one_thread_limits_faiss_numba_and_a_loaded_torch() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    threads = json.loads(completed.stdout.strip().splitlines()[-1])
    assert threads["before"] == {"numba": 2, "faiss": 2}
    assert set(threads["after"].values()) == {1}, threads
