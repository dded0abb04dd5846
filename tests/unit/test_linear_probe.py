"""The linear-probe baseline against scikit-learn called directly in the test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from jobstate.errors import InvalidInputError
from workers.geometry.linear_probe import linear_probe_error


def _data(n: int = 240, dim: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    # Overlapping classes on very different scales: standardising matters, errors > 0.
    scales = np.geomspace(0.01, 100, dim)
    embeddings = (
        rng.standard_normal((3, dim))[labels] + 1.5 * rng.standard_normal((n, dim))
    ) * scales
    return embeddings, labels


@pytest.mark.parametrize("seed", [0, 7])
def test_cross_validation_error_matches_sklearn(seed):
    embeddings, labels = _data()
    got = linear_probe_error(embeddings, labels, seed=seed)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=1.0))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    expected = 1.0 - cross_val_score(pipeline, embeddings, labels, cv=folds).mean()
    assert got.method == "cross_validation"
    assert got.error == pytest.approx(expected, abs=1e-12)
    assert 0.0 < got.error < 0.6


def test_cross_validation_fits_the_scaler_on_each_training_fold():
    embeddings, labels = _data()
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    wrong = 0
    for train, test in folds.split(embeddings, labels):
        mean = embeddings[train].astype(np.float64).mean(axis=0)
        scale = embeddings[train].astype(np.float64).std(axis=0)
        model = LogisticRegression(max_iter=1000, C=1.0)
        model.fit((embeddings[train] - mean) / scale, labels[train])
        wrong += int((model.predict((embeddings[test] - mean) / scale) != labels[test]).sum())
    # Folds of equal size (240 / 5): the mean fold error is the pooled error.
    assert linear_probe_error(embeddings, labels).error == pytest.approx(wrong / 240, abs=1e-12)


def test_held_out_error_fits_on_all_training_points():
    embeddings, labels = _data(seed=1)
    queries, query_labels = _data(n=90, seed=2)
    got = linear_probe_error(
        embeddings, labels, query_embeddings=queries, query_labels=query_labels
    )
    scaler = StandardScaler().fit(embeddings)
    model = LogisticRegression(max_iter=1000, C=1.0).fit(scaler.transform(embeddings), labels)
    expected = float(np.mean(model.predict(scaler.transform(queries)) != query_labels))
    assert got.method == "held_out"
    assert got.error == pytest.approx(expected, abs=1e-12)
    assert 0.0 < got.error < 1.0


def test_separable_classes_give_zero_error():
    labels = np.repeat([0, 1], 50)
    embeddings = np.where(labels[:, None] == 1, 5.0, -5.0) + np.linspace(-1, 1, 100)[:, None]
    assert linear_probe_error(embeddings, labels).error == 0.0


def test_bad_input_is_refused():
    embeddings, labels = _data()
    with pytest.raises(InvalidInputError, match="two classes"):
        linear_probe_error(embeddings, np.zeros(240))
    with pytest.raises(InvalidInputError) as raised:
        linear_probe_error(
            embeddings, labels, query_embeddings=embeddings[:, :3], query_labels=labels
        )
    assert raised.value.field == "query.embeddings"
    with pytest.raises(InvalidInputError) as raised:
        linear_probe_error(embeddings, labels, query_embeddings=embeddings)
    assert raised.value.field == "query"
