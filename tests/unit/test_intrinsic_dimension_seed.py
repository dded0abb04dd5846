"""The report names the seed of the intrinsic-dimension sample, and it is the one used.

The sample is drawn again here, independently (numpy's default_rng, without the
module's code), its estimates recomputed from plain float64 distances to every point,
and compared with the report's.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from api_schemas import AnalysisParams
from workers.geometry import EmbeddingSet, analyze

N_POINTS, DIM, SAMPLE, MLE_K = 3000, 6, 400, 20


def _points() -> np.ndarray:
    rng = np.random.default_rng(11)
    return (rng.standard_normal((N_POINTS, DIM)) * np.linspace(1.0, 3.0, DIM)).astype(np.float32)


def _reference_estimates(points: np.ndarray, seed: int) -> tuple[int, float, float]:
    """n_used, TwoNN and MLE (MacKay-Ghahramani averaging) of the sample ``seed`` draws."""
    queries = np.sort(np.random.default_rng(seed).choice(N_POINTS, SAMPLE, replace=False))
    distances = cdist(points[queries].astype(np.float64), points.astype(np.float64))
    distances[np.arange(SAMPLE), queries] = np.inf  # a point is not its own neighbour
    nearest = np.sort(distances, axis=1)[:, :MLE_K]
    twonn = SAMPLE / np.log(nearest[:, 1] / nearest[:, 0]).sum()
    inverse = np.log(nearest[:, -1:] / nearest[:, :-1]).sum(axis=1) / (MLE_K - 1)
    return queries.size, float(twonn), float(1.0 / inverse.mean())


@pytest.mark.parametrize("seed", [0, 123])
def test_report_names_the_seed_its_intrinsic_dimension_sample_was_drawn_with(seed: int) -> None:
    points = _points()
    params = AnalysisParams(k=8, id_sample=SAMPLE, seed=seed, device="cpu")
    report = analyze([EmbeddingSet(name="s", embeddings=points)], params=params).report
    estimate = report.sets[0].intrinsic_dimension

    n_used, twonn, mle = _reference_estimates(points, estimate.seed)
    assert estimate.seed == seed
    assert estimate.n_used == n_used == SAMPLE
    assert estimate.mle_k == MLE_K
    assert estimate.twonn == pytest.approx(twonn, rel=1e-9)
    assert estimate.mle == pytest.approx(mle, rel=1e-9)


def test_another_seed_draws_another_sample_with_another_estimate() -> None:
    """The control: the comparison above can tell samples apart."""
    points = _points()
    _, twonn_0, mle_0 = _reference_estimates(points, 0)
    _, twonn_1, mle_1 = _reference_estimates(points, 1)
    assert abs(twonn_0 - twonn_1) > 1e-6 * twonn_0
    assert abs(mle_0 - mle_1) > 1e-6 * mle_0
