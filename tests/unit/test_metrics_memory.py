"""The metrics stage of a large set stays small: no (points x classes) or float64 (points x k)
copies beyond the NNK graph it is given.

Measured in a separate process, as in tests/unit/test_memory.py: a fresh interpreter
builds a synthetic NNK graph of 200,000 points x 30 candidates with 1,000 classes,
resets its high-water mark (``/proc/self/clear_refs``), runs the whole metrics stage
(:func:`workers.geometry.analysis.measure_set`: both graphs, intrinsic dimension, label
metrics, the report), and reports VmHWM above the resident size it started from.

A dense (points x classes) float64 score matrix alone would be 200,000 x 1,000 x 8 bytes
= 1.5 GiB; a float64 copy of the (points x k) weights is 46 MiB, and the metrics used to
make several at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MIB = 1024**2
N_POINTS, K, N_CLASSES = 200_000, 30, 1_000
# The stage's own growth: the graphs W and A it returns (about 35 MiB here), per-point
# results (about 15 MiB), one block of class scores (16 MiB) and of edges. Measured
# 82 MiB; the code before this test grew by 174 MiB (float64 and int64 (points x k)
# copies), and with one dense score matrix by 1.7 GiB.
STAGE_BOUND = 128 * MIB

_STAGE_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    import numpy as np
    from api_schemas import AnalysisParams
    from workers.geometry.analysis import EmbeddingSet, NNKGraph, measure_set

    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(l.split()[1]) * 1024 for l in lines if l.startswith(field + ":"))

    def synthetic(n, k, n_classes):
        rng = np.random.default_rng(0)
        nnk = NNKGraph(
            candidate_indices=rng.integers(0, n, (n, k)),
            weights=rng.random((n, k)) * (rng.random((n, k)) < 0.5),
            query_kernel=rng.random((n, k)),
            valid=np.ones((n, k), dtype=bool),
            reconstruction_error=rng.random(n),
            knn_recall=1.0,
            knn_recall_sample=0,
            knn_s=0.0,
            solve_s=0.0,
        )
        points = rng.standard_normal((n, 4)).astype(np.float32)
        return EmbeddingSet("s", points, rng.integers(0, n_classes, n)), nnk

    n, k, n_classes = (int(v) for v in sys.argv[1:4])
    params = AnalysisParams(k=k, device="cpu", id_sample=500)
    measure_set(*synthetic(2000, k, n_classes), params=params)  # lazy imports, warm-up
    embedding_set, nnk = synthetic(n, k, n_classes)
    gc.collect()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)
    result = measure_set(embedding_set, nnk, params=params)
    print(json.dumps({"before": before, "peak": status("VmHWM"),
                      "n_classes": result.report.n_classes}))
    """
)


def _stage_growth(n: int, k: int, n_classes: int) -> int:
    completed = subprocess.run(
        [sys.executable, "-c", _STAGE_SCRIPT, str(n), str(k), str(n_classes)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    assert figures["n_classes"] == n_classes
    return figures["peak"] - figures["before"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_metrics_stage_of_200k_points_and_1000_classes_grows_by_a_bounded_amount() -> None:
    growth = _stage_growth(N_POINTS, K, N_CLASSES)
    dense_scores = N_POINTS * N_CLASSES * 8
    assert growth < STAGE_BOUND < dense_scores, growth / MIB
