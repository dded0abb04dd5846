"""A worker's thread limit reaches the pools that size themselves to the host's cores,
and leaves numba's pool unstarted in the process that forks the pool processes.

Run in fresh interpreters: the pools are per process, and this one's are set by other
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
_ENVIRONMENT = {
    "PATH": "/usr/bin:/bin",
    "NUMBA_NUM_THREADS": "2",
    "OMP_NUM_THREADS": "2",
    "NUMBA_THREADING_LAYER": "omp",
}

_PROBE = """
import json, sys
import faiss, numba
from numba.np.ufunc import parallel
from workers.runtime import _limit_cpu_threads
before = {"faiss": faiss.omp_get_max_threads()}
_limit_cpu_threads(1)
after = {"faiss": faiss.omp_get_max_threads()}
if "torch" in sys.modules:
    after["torch"] = sys.modules["torch"].get_num_threads()
print(json.dumps({"before": before, "after": after, "numba_started": parallel._is_initialized}))
"""

# Celery's main process sets the limit (its reaper builds the runtime), then forks the
# pool processes, which solve on numba's parallel loops: numba kills a process whose
# parent had started its OpenMP pool.
_FORKED_SOLVE = """
import os
import numpy as np
from workers.runtime import _limit_cpu_threads
from workers.geometry import nnk_kernel
_limit_cpu_threads(1)
points = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
candidates = (np.arange(300)[:, None] + np.arange(1, 9)[None, :]) % 300
pid = os.fork()
if pid == 0:
    weights, _, _ = nnk_kernel.solve_vectors(
        points, np.arange(300), candidates, kernel="cosine", n_threads=1
    )
    os._exit(0 if weights.shape == (300, 8) else 3)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


def test_one_thread_limits_faiss_and_a_loaded_torch_and_does_not_start_numba() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env=_ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    threads = json.loads(completed.stdout.strip().splitlines()[-1])
    assert threads["before"] == {"faiss": 2}
    assert set(threads["after"].values()) == {1}, threads
    assert threads["numba_started"] is False


def test_a_process_forked_after_the_limit_solves_on_numbas_parallel_loops() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _FORKED_SOLVE],
        cwd=ROOT,
        env=_ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
