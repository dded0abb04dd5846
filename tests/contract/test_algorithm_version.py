"""Every change of the engine's results comes with a new ALGORITHM_VERSION.

The result cache keys on ALGORITHM_VERSION: a change that alters any number of a report
under the same version would let the cache answer with results the new code would not
give. Here the real engine runs on small fixed, seeded data, and its results are
fingerprinted in a form that is the same across runs and machines: the NNK graphs' edge
sets and degrees (discrete), label-homogeneity counts, and every float of the report
rounded to 4 significant digits (timings left out). The fingerprint must be the one
recorded for the current version.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from api_schemas import AnalysisParams
from jobstate.version import ALGORITHM_VERSION
from workers.geometry import Analysis, EmbeddingSet, analyze

SIGNIFICANT_DIGITS = 4
N_POINTS = 300
N_CLASSES = 3
DIM = 12
# The default params, on the CPU: "auto" would pick a GPU where there is one, and the
# fingerprint must not depend on the machine.
DEFAULT_PARAMS = AnalysisParams(device="cpu")
VARIED_PARAMS = AnalysisParams(
    k=15, kernel="gaussian", sigma=2.0, symmetrize="mean", suspects_top=10, device="cpu"
)

# ALGORITHM_VERSION -> {params name -> fingerprint}. A version gets an entry when it is
# introduced; an entry never changes afterwards.
FINGERPRINTS: dict[str, dict[str, str]] = {
    "3": {
        "default": "918ad0aba0cf232738588f077f75ca0e4273fb0051250beeb204f63ce71aaece",
        "varied": "77c7ca9836ee09fa47229b81839f7e1482960c5c7595ee0248abd7d72bc95568",
    },
    # 4: --knn auto by default (IVF-Flat from 200,000 points), ties at the k-th candidate
    # to the smaller index, the compiled CPU solve.
    "4": {
        "default": "5ba7b65efed4a72df0373cf47f526da60ef05c6d2607aa9b370747491ddf09b6",
        "varied": "36fb05670e0ede6b5fd73ffe9265a722c07182ea0771d84eb4aa34d5ab51f298",
    },
    # 5: comparison.overlap_consecutive for sets of the same points (report schema 1.2);
    # every other number as in 4.
    "5": {
        "default": "afd78dd12bd196036e967c1c7260a740dde80aa3f54b8be4744e69707593aaa7",
        "varied": "37fc7fdd01e52d79b1d42edd6b4684cb9f8cd18944912738c8a9c974a94a6211",
    },
    # 6: exact search on tiles of the Gram matrix, equal float32 scores in index order.
    # Every number here is as in 5 (the fingerprint moves with the version in the report).
    "6": {
        "default": "ebbcdeef0ae8fe3df47340688f177c3c9a4b03a46cf70f026965b5a1903cc4e0",
        "varied": "e3e68ee9f48baeedfcf742271807b110ce1654ba6cfdff95aebd58fdf748556c",
    },
}


def _labelled_sets() -> list[EmbeddingSet]:
    """Two sets of the same labelled points: gaussian blobs, and a non-linear image of them."""
    rng = np.random.default_rng(20240611)
    labels = rng.integers(0, N_CLASSES, N_POINTS)
    centres = rng.standard_normal((N_CLASSES, DIM)) * 0.7
    blobs = (centres[labels] + rng.standard_normal((N_POINTS, DIM))).astype(np.float32)
    projection = rng.standard_normal((DIM, DIM)).astype(np.float32) / math.sqrt(DIM)
    bent = np.tanh(blobs @ projection).astype(np.float32)
    return [EmbeddingSet("blobs", blobs, labels), EmbeddingSet("bent", bent, labels)]


def _rounded(value: Any) -> Any:
    """Floats to SIGNIFICANT_DIGITS significant digits, everywhere in a JSON value."""
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT_DIGITS - 1}e}") if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def _edges_digest(graph: sp.csr_matrix) -> str:
    """sha256 of the sorted (row, column) pairs of the graph's non-zero entries."""
    coo = sp.coo_matrix(graph)
    nonzero = coo.data != 0
    pairs = np.stack([coo.row[nonzero], coo.col[nonzero]], axis=1).astype(np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return hashlib.sha256(pairs.tobytes()).hexdigest()


def _homogeneity_counts(symmetric: sp.csr_matrix, labels: np.ndarray) -> dict[str, int]:
    """Edges within and across classes, and points whose neighbours all share their label."""
    coo = sp.triu(symmetric, k=1).tocoo()
    same = labels[coo.row] == labels[coo.col]
    neighbour_differs = np.zeros(labels.size, dtype=bool)
    neighbour_differs[coo.row[~same]] = True
    neighbour_differs[coo.col[~same]] = True
    degree = np.diff(symmetric.indptr)
    return {
        "same_label_edges": int(same.sum()),
        "cross_label_edges": int((~same).sum()),
        "pure_points": int(((degree > 0) & ~neighbour_differs).sum()),
    }


def _fingerprint(analysis: Analysis, sets: list[EmbeddingSet]) -> str:
    report = analysis.report.model_dump(mode="json", exclude={"job_id"})
    for set_report in report["sets"]:
        set_report.pop("timings")
    graphs = {}
    for embedding_set in sets:
        result = analysis.sets[embedding_set.name]
        symmetric = sp.csr_matrix(result.symmetric)
        symmetric.eliminate_zeros()
        graphs[embedding_set.name] = {
            "directed_edges": _edges_digest(result.directed),
            "symmetric_edges": _edges_digest(symmetric),
            "degrees": hashlib.sha256(
                np.diff(symmetric.indptr).astype(np.int64).tobytes()
            ).hexdigest(),
            "homogeneity": _homogeneity_counts(symmetric, embedding_set.labels),
        }
    summary = {"report": _rounded(report), "graphs": graphs}
    return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize(
    ("params_name", "params"), [("default", DEFAULT_PARAMS), ("varied", VARIED_PARAMS)]
)
def test_results_changed_only_with_a_new_algorithm_version(
    params_name: str, params: AnalysisParams
) -> None:
    sets = _labelled_sets()
    fingerprint = _fingerprint(analyze(sets, params=params), sets)

    recorded = FINGERPRINTS.get(ALGORITHM_VERSION, {}).get(params_name)
    assert recorded is not None, (
        f"ALGORITHM_VERSION {ALGORITHM_VERSION!r} has no recorded fingerprint for the "
        f"{params_name} params: add {params_name!r}: {fingerprint!r} under "
        f"{ALGORITHM_VERSION!r} in FINGERPRINTS ({__name__})"
    )
    assert fingerprint == recorded, (
        f"the engine's results changed (fingerprint {fingerprint}, recorded {recorded} "
        f"for ALGORITHM_VERSION {ALGORITHM_VERSION!r}, {params_name} params): bump "
        "ALGORITHM_VERSION in jobstate/version.py, saying why, so that the result cache "
        "answers no result of the old code; then record the new fingerprint in FINGERPRINTS"
    )
