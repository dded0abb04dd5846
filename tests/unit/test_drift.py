"""Drift scores against a slow reference, a planted drift, and the false-positive rate.

The reference finds neighbours by full float64 distance scans, builds K_S and k_i by the
DESIGN formulas, solves each point with scipy's NNLS (tests/unit/reference.py), and
scores with plain loops. It shares no code with workers.geometry.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from jobstate.errors import InvalidInputError
from tests.unit.reference import brute_force_neighbours, nnk_reference
from workers.geometry.drift import drift_scores
from workers.geometry.drift_statistics import DEFAULT_THRESHOLD, drift_statistics

K = 8


def _node_error(neighbours: np.ndarray, centre: np.ndarray, *, kernel: str) -> tuple[float, int]:
    """Reconstruction error and NNK degree of one point from its candidates (DESIGN 1)."""
    neighbours, centre = neighbours.astype(np.float64), centre.astype(np.float64)
    if kernel == "cosine":
        neighbours = neighbours / np.linalg.norm(neighbours, axis=1, keepdims=True)
        centre = centre / np.linalg.norm(centre)
        gram = np.clip((1.0 + neighbours @ neighbours.T) / 2.0, 0.0, 1.0)
        np.fill_diagonal(gram, 1.0)
        rhs = np.clip((1.0 + neighbours @ centre) / 2.0, 0.0, 1.0)
    else:
        pair = ((neighbours[:, None, :] - neighbours[None, :, :]) ** 2).sum(axis=2)
        to_centre = ((neighbours - centre) ** 2).sum(axis=1)
        bandwidth = np.sqrt(to_centre.max()) / 3.0
        gram, rhs = np.exp(-pair / (2 * bandwidth**2)), np.exp(-to_centre / (2 * bandwidth**2))
    theta = nnk_reference(gram, rhs)
    return float(1.0 - 2.0 * theta @ rhs + theta @ gram @ theta), int((theta > 0).sum())


def _reference_drift(reference: np.ndarray, current: np.ndarray, *, kernel: str):
    metric = "cosine" if kernel == "cosine" else "euclidean"
    loo = brute_force_neighbours(reference, K, metric=metric)
    reference_error = [
        _node_error(reference[loo[i]], reference[i], kernel=kernel)[0]
        for i in range(reference.shape[0])
    ]
    current_error, degree = [], []
    for point in current:
        everything = brute_force_neighbours(
            np.vstack([point[None, :], reference]), K, metric=metric
        )
        # Row 0 is the current point; its candidates (never itself) are reference rows + 1.
        error, nnk_degree = _node_error(reference[everything[0] - 1], point, kernel=kernel)
        current_error.append(error)
        degree.append(nnk_degree)
    scores = [sum(e <= c for e in reference_error) / len(reference_error) for c in current_error]
    return np.array(reference_error), np.array(current_error), np.array(degree), np.array(scores)


def _ks_statistic(first: np.ndarray, second: np.ndarray) -> float:
    """sup_t |F_1(t) - F_2(t)| over every observed t (the sup is attained at one)."""
    return max(
        abs(np.mean(first <= t) - np.mean(second <= t)) for t in np.concatenate([first, second])
    )


def _clusters(rng: np.random.Generator, n: int, centres: np.ndarray, shift=None):
    labels = rng.integers(0, centres.shape[0], n)
    points = centres[labels] + rng.standard_normal((n, centres.shape[1]))
    if shift is not None:
        moved_class, offset = shift
        points[labels == moved_class] += offset
    return points.astype(np.float32), labels


@pytest.mark.parametrize(("kernel", "dim"), [("cosine", 12), ("gaussian", 6)])
def test_drift_scores_match_brute_force(kernel, dim):
    rng = np.random.default_rng(7)
    centres = 3.0 * rng.standard_normal((3, dim))
    reference, reference_labels = _clusters(rng, 120, centres)
    # Class 1 of the current set moved a little, so the scores are not all alike.
    current, current_labels = _clusters(rng, 40, centres, shift=(1, 1.5))
    ids = np.arange(40) + 1000

    got = drift_scores(
        reference,
        current,
        reference_labels=reference_labels,
        current_labels=current_labels,
        current_ids=ids,
        k=K,
        kernel=kernel,
        n_threads=1,
        top=10,
    )
    reference_error, current_error, degree, scores = _reference_drift(
        reference, current, kernel=kernel
    )
    np.testing.assert_allclose(got.reference_error, reference_error, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.current_error, current_error, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got.current_degree, degree)
    np.testing.assert_array_equal(got.scores, scores)
    assert 0.0 < scores.min() < scores.max()

    assert got.score.mean == pytest.approx(scores.mean())
    assert got.score.p90 == pytest.approx(np.percentile(scores, 90))
    assert got.score.p99 == pytest.approx(np.percentile(scores, 99))
    assert got.ks.statistic == pytest.approx(_ks_statistic(current_error, reference_error))
    assert got.ks.p_value == pytest.approx(
        scipy.stats.ks_2samp(current_error, reference_error).pvalue, rel=1e-6
    )
    assert got.verdict == ("drift" if got.ks.p_value < DEFAULT_THRESHOLD else "no_drift")

    expected = sorted(range(40), key=lambda c: (-scores[c], -current_error[c], c))[:10]
    assert [d.index for d in got.drifted] == expected
    assert [d.id for d in got.drifted] == [1000 + c for c in expected]
    assert [d.nnk_degree for d in got.drifted] == [degree[c] for c in expected]

    assert [c.label for c in got.per_class] == [0, 1, 2]
    for entry in got.per_class:
        in_reference = reference_labels == entry.label
        in_current = current_labels == entry.label
        assert (entry.n_reference, entry.n_current) == (in_reference.sum(), in_current.sum())
        assert entry.reference_error_mean == pytest.approx(reference_error[in_reference].mean())
        assert entry.current_error_mean == pytest.approx(current_error[in_current].mean())
        assert entry.error_shift == pytest.approx(
            current_error[in_current].mean() - reference_error[in_reference].mean()
        )
        assert entry.score_mean == pytest.approx(scores[in_current].mean())
        vectors = [x.astype(np.float64) for x in (reference, current)]
        if kernel == "cosine":
            vectors = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in vectors]
        members = vectors[0][in_reference]
        centre = members.mean(axis=0)
        rms = np.sqrt(np.mean([np.sum((m - centre) ** 2) for m in members]))
        moved = np.linalg.norm(vectors[1][in_current].mean(axis=0) - centre)
        assert entry.centroid_shift == pytest.approx(moved / rms, rel=1e-9)


def test_scores_count_ties_as_at_or_below():
    reference_error = np.array([0.0, 0.0, 1.0, 2.0, 3.0])
    current_error = np.array([0.0, 1.0, 2.5, 5.0, 3.0, -1.0])
    got = drift_statistics(reference_error, current_error, current_degree=[1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(got.scores, [0.4, 0.6, 0.8, 1.0, 1.0, 0.0])
    # Equal scores: the larger error first.
    assert [d.index for d in got.drifted] == [3, 4, 2, 1, 0, 5]
    assert got.drifted[0].nnk_degree == 4 and got.drifted[0].id is None
    assert got.per_class == []


def test_per_class_without_reference_labels_has_current_side_only():
    got = drift_statistics(
        np.array([0.1, 0.2, 0.3, 0.4]),
        np.array([0.15, 0.5, 0.05]),
        current_labels=np.array(["b", "a", "b"]),
        reference_labels=None,
    )
    assert [(c.label, c.n_current, c.n_reference) for c in got.per_class] == [
        ("a", 1, None),
        ("b", 2, None),
    ]
    assert got.per_class[1].current_error_mean == pytest.approx(0.1)
    assert got.per_class[1].score_mean == pytest.approx((0.25 + 0.0) / 2)
    assert got.per_class[0].error_shift is None


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_planted_drift_of_one_class_is_detected(kernel):
    rng = np.random.default_rng(11)
    centres = 3.0 * rng.standard_normal((4, 8))
    reference, reference_labels = _clusters(rng, 300, centres)
    direction = rng.standard_normal(8)
    # Class 2 moves 6 sigma (its points' per-coordinate spread is 1) off its place.
    offset = 6.0 * direction / np.linalg.norm(direction)
    current, current_labels = _clusters(rng, 200, centres, shift=(2, offset))
    got = drift_scores(
        reference,
        current,
        reference_labels=reference_labels,
        current_labels=current_labels,
        k=10,
        kernel=kernel,
        n_threads=1,
        top=20,
    )
    assert got.verdict == "drift"
    # One class in four moved, so the KS statistic cannot pass about 0.25.
    assert got.ks.p_value < 1e-3 and got.ks.statistic > 0.15
    moved = got.per_class[2]
    others = [c for c in got.per_class if c.label != 2]
    assert moved.error_shift > 0.02 and all(moved.error_shift > c.error_shift for c in others)
    assert moved.score_mean > 0.9 > max(c.score_mean for c in others)
    assert moved.centroid_shift > 5 * max(c.centroid_shift for c in others)
    # The most drifted points are (mostly) the moved class's.
    assert sum(current_labels[d.index] == 2 for d in got.drifted) >= 15


def test_fresh_samples_of_the_reference_distribution_are_rarely_flagged():
    # The promise of DEFAULT_THRESHOLD: at most 10 % false positives, over 20 seeds.
    flagged, p_values = 0, []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        centres = 3.0 * rng.standard_normal((4, 8))
        reference, _ = _clusters(rng, 300, centres)
        current, _ = _clusters(rng, 200, centres)
        kernel = "cosine" if seed % 2 else "gaussian"
        got = drift_scores(reference, current, k=10, kernel=kernel, n_threads=1)
        flagged += got.verdict == "drift"
        p_values.append(got.ks.p_value)
        # Under no drift a score is about uniform on [0, 1].
        assert 0.35 < got.score.mean < 0.65
    assert flagged / 20 <= 0.10, sorted(p_values)
    # The p-values spread out as a test's should under its null, not piled near 0 or 1.
    assert 0.1 < np.median(p_values) < 0.9


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"k": 30}, "params.k"),
        ({"k": 4, "threshold": 1.0}, "threshold"),
        ({"k": 4, "top": -1}, "top"),
        ({"k": 4, "kernel": "linear"}, "params.kernel"),
        ({"k": 4, "current": np.zeros((5, 3), dtype=np.float32)}, "current"),
        ({"k": 4, "current": np.ones((5, 4), dtype=np.float32)}, "current"),
        ({"k": 4, "current_labels": np.arange(4)}, "current_labels"),
        (
            {"k": 4, "current_labels": np.array(list("abcde")), "reference_labels": np.arange(30)},
            "current_labels",
        ),
    ],
)
def test_bad_input_names_the_field(arguments, field):
    rng = np.random.default_rng(0)
    inputs = {
        "reference": rng.standard_normal((30, 3)).astype(np.float32),
        "current": rng.standard_normal((5, 3)).astype(np.float32),
    }
    inputs.update(arguments)
    reference, current = inputs.pop("reference"), inputs.pop("current")
    with pytest.raises(InvalidInputError) as raised:
        drift_scores(reference, current, **inputs)
    assert raised.value.field == field
