"""What a local ``nnkgeo analyze`` pays before and around the work, and that cutting it
changed no reported number.

- start-up: the run imports no library the path does not use (parquet, HTTP, special
  functions);
- the metrics give the same numbers, bit for bit, as the obvious sequential computation:
  blockwise class scores, and the intrinsic dimension estimated on a thread.

Import checks run in a fresh interpreter: this test process has loaded
everything already.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.special

from api_schemas import AnalysisParams
from tests.unit.fresh_interpreter import run_json
from workers.geometry import EmbeddingSet, analyze_set, metrics
from workers.geometry import statistics as study_statistics
from workers.geometry.intrinsic_dimension import estimate_intrinsic_dimension
from workers.geometry.metrics import class_scores, point_metrics


def _run(code: str, *args: str) -> dict:
    return run_json(code, *args, timeout=300)


# ----------------------------------------------------------------------------- imports

_CLI_MODULES = """
import json, sys
from nnkgeo.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_local_analyze_loads_no_parquet_http_or_special_function_library(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "emb.npy", rng.standard_normal((120, 8)).astype(np.float32))
    np.save(tmp_path / "labels.npy", np.arange(120) % 3)
    shown = _run(
        _CLI_MODULES,
        "analyze",
        str(tmp_path / "emb.npy"),
        "--labels",
        str(tmp_path / "labels.npy"),
        "--k",
        "5",
        "--quiet",
        "--out",
        str(tmp_path / "report.json"),
    )
    assert shown["code"] == 0
    report = json.loads((tmp_path / "report.json").read_text())
    # The run did draw Wilson intervals (labels given): at 95 % without scipy.special.
    assert report["sets"][0]["loo_error"]["nnk_weighted_ci95"] is not None
    loaded = set(shown["modules"])
    for unused in ("pyarrow", "safetensors", "httpx", "scipy.special", "nnkgeo.client.transport"):
        assert unused not in loaded, unused
    # What the path does use is there: the check above is not vacuous.
    assert {"arrayfiles.npy", "nnkgeo.client.progress", "numba", "faiss"} <= loaded


@pytest.mark.parametrize("library", ["pyarrow", "safetensors"])
def test_parse_errors_still_catch_the_errors_of_a_loaded_library(library: str) -> None:
    """arrayfiles no longer imports pyarrow or safetensors up front; once loaded (as their
    readers load them), their own errors still become the user's ArrayFileError."""
    from arrayfiles import ArrayFileError
    from arrayfiles.checks import parse_errors

    if library == "pyarrow":
        import pyarrow

        # A TypeError too, but not among the errors parse_errors lists by name.
        raised: Exception = pyarrow.lib.ArrowTypeError("column 'x' is not a list")
        assert not isinstance(raised, ValueError | OSError | NotImplementedError)
    else:
        from safetensors import SafetensorError

        raised = SafetensorError("header too large")
    with pytest.raises(ArrayFileError, match="not a valid demo file"), parse_errors("demo"):
        raise raised


def test_normal_quantile_at_95_percent_is_scipys_to_the_last_bit() -> None:
    assert float(scipy.special.ndtri(0.975)) == study_statistics._NORMAL_QUANTILE_975
    # And every level takes the same z as scipy's, so an interval is unchanged, bit for bit.
    for probability in (0.975, 0.95, 0.995, 0.6):
        z = study_statistics._normal_quantile(probability)
        assert z == float(scipy.special.ndtri(probability))


@pytest.mark.parametrize(("errors", "n"), [(0, 1347), (13, 1347), (500, 1000), (7, 7)])
def test_wilson_interval_at_95_percent_equals_the_scipy_formula_bit_for_bit(
    errors: int, n: int
) -> None:
    z = float(scipy.special.ndtri(0.975))
    rate = errors / n
    shrink = 1.0 + z * z / n
    centre = (rate + z * z / (2 * n)) / shrink
    half = z * np.sqrt(rate * (1.0 - rate) / n + z * z / (4 * n * n)) / shrink
    low = 0.0 if errors == 0 else max(0.0, centre - half)
    high = 1.0 if errors == n else min(1.0, centre + half)
    assert study_statistics.wilson_interval(errors, n) == (float(low), float(high))


# ----------------------------------------------------------------------------- metrics


def _sequential_point_metrics(candidates, weights, query_kernel, codes, n_classes, valid):
    """Each rule's dense scores of all rows at once, from class_scores."""
    scores = class_scores(candidates, weights, codes, n_classes)
    total = scores.sum(axis=1)
    own = scores[np.arange(codes.size), codes]
    share = np.zeros(codes.size)
    np.divide(own, total, out=share, where=total > 0)
    rules = {
        "nnk_u": (weights > 0).astype(np.float64),
        "knn_w": np.where(valid, query_kernel, 0.0),
        "knn_u": valid.astype(np.float64),
    }
    wrong = {
        rule: class_scores(candidates, rule_weights, codes, n_classes).argmax(axis=1) != codes
        for rule, rule_weights in rules.items()
    }
    return scores.argmax(axis=1), 1.0 - share, wrong


@pytest.mark.parametrize(("n_classes", "block"), [(2, 256), (37, 256), (37, None), (1500, None)])
def test_point_metrics_equal_the_whole_dense_scores_bit_for_bit(
    n_classes: int, block: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 256 rows, or of the cache cap (4,096) and the memory plan, against all
    9,000 rows at once; 1,500 classes take the per-row sort of predicted_classes."""
    if block is not None:
        monkeypatch.setattr(metrics, "plan_metrics_block", lambda *args, **kwargs: block)
    rng = np.random.default_rng(n_classes)
    n_points, k = 9_000, 12
    candidates = rng.integers(0, n_points, (n_points, k))
    weights = np.where(rng.random((n_points, k)) < 0.4, rng.random((n_points, k)), 0.0)
    query_kernel = rng.random((n_points, k))
    valid = rng.random((n_points, k)) < 0.9
    codes = rng.integers(0, n_classes, n_points)
    predicted, soft_error, wrong = _sequential_point_metrics(
        candidates, weights, query_kernel, codes, n_classes, valid
    )
    points = point_metrics(candidates, weights, query_kernel, codes, n_classes, valid=valid)
    np.testing.assert_array_equal(points.predicted, predicted)
    np.testing.assert_array_equal(points.soft_error, soft_error)
    np.testing.assert_array_equal(points.wrong_nnk_unweighted, wrong["nnk_u"])
    np.testing.assert_array_equal(points.wrong_knn_weighted, wrong["knn_w"])
    np.testing.assert_array_equal(points.wrong_knn_unweighted, wrong["knn_u"])


def test_intrinsic_dimension_estimated_on_a_thread_is_the_sequential_estimate() -> None:
    rng = np.random.default_rng(3)
    points = rng.standard_normal((900, 10)).astype(np.float32)
    labels = np.arange(900) % 4
    params = AnalysisParams(k=8, id_sample=300, seed=5)
    reported = analyze_set(EmbeddingSet("s", points, labels), params=params).report
    sequential = estimate_intrinsic_dimension(points, sample=300, seed=5)
    assert reported.intrinsic_dimension.model_dump() == {
        "twonn": sequential.twonn,
        "mle": sequential.mle,
        "mle_k": sequential.mle_k,
        "n_used": sequential.n_used,
        "seed": sequential.seed,
    }
