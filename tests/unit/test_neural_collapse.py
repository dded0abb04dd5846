"""NC1 against a direct numpy computation and exact constructed data."""

from __future__ import annotations

import numpy as np
import pytest

from jobstate.errors import InvalidInputError
from workers.geometry import neural_collapse
from workers.geometry.neural_collapse import nc1


def _nc1_direct(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """The definition, term by term, with full matrices and numpy's pinv."""
    x = np.asarray(embeddings, dtype=np.float64)
    classes = np.unique(labels)
    n, dim = x.shape
    global_mean = x.mean(axis=0)
    within = np.zeros((dim, dim))
    between = np.zeros((dim, dim))
    for label in classes:
        members = x[labels == label]
        mean = members.mean(axis=0)
        for point in members:
            within += np.outer(point - mean, point - mean)
        between += np.outer(mean - global_mean, mean - global_mean)
    within /= n
    between /= classes.size
    return float(np.trace(within @ np.linalg.pinv(between, hermitian=True)) / classes.size)


@pytest.mark.parametrize(("n_classes", "dim"), [(2, 5), (4, 3), (7, 20), (30, 8)])
def test_nc1_matches_the_direct_definition(n_classes, dim):
    rng = np.random.default_rng(n_classes * 100 + dim)
    counts = rng.integers(3, 40, n_classes)
    labels = np.repeat(np.arange(n_classes) * 7 + 3, counts)
    means = 3.0 * rng.standard_normal((n_classes, dim))
    # Anisotropic within-class noise, and a common offset mu_G far from 0.
    embeddings = 50.0 + means[np.repeat(np.arange(n_classes), counts)]
    embeddings = embeddings + rng.standard_normal((labels.size, dim)) * rng.uniform(0.2, 2, dim)
    order = rng.permutation(labels.size)
    embeddings, labels = embeddings[order].astype(np.float32), labels[order]
    assert nc1(embeddings, labels) == pytest.approx(_nc1_direct(embeddings, labels), rel=1e-9)


@pytest.mark.parametrize(("dim", "m_norm", "s"), [(3, 2.0, 0.5), (10, 1.0, 1.0), (6, 4.0, 0.1)])
def test_two_classes_with_exact_isotropic_spread(dim, m_norm, s):
    # Each class is its mean +-m plus the 2d points +-a e_j, a = s sqrt(d): the deviations
    # sum to 0 and sum_j 2 a^2 e_j e_j' = 2 a^2 I per class, so with N = 4d points
    # Sigma_W = (2 classes * 2 a^2 / 4d) I = s^2 I exactly, Sigma_B = m m', mu_G = 0, and
    # NC1 = tr(s^2 I m m' / |m|^4) / 2 = s^2 / (2 |m|^2).
    rng = np.random.default_rng(dim)
    m = rng.standard_normal(dim)
    m *= m_norm / np.linalg.norm(m)
    a = s * np.sqrt(dim)
    deviations = np.concatenate([a * np.eye(dim), -a * np.eye(dim)])
    embeddings = np.concatenate([m + deviations, -m + deviations])
    labels = np.repeat(["cat", "dog"], 2 * dim)
    assert nc1(embeddings, labels) == pytest.approx(s**2 / (2 * m_norm**2), rel=1e-12)


def test_nc1_is_invariant_to_rotation_translation_and_scale():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, 400)
    embeddings = rng.standard_normal((5, 12))[labels] + 0.7 * rng.standard_normal((400, 12))
    rotation, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    moved = 3.5 * embeddings @ rotation + rng.standard_normal(12) * 10
    assert nc1(moved, labels) == pytest.approx(nc1(embeddings, labels), rel=1e-9)


def test_perfect_collapse_gives_zero():
    labels = np.repeat([0, 1, 2], 10)
    means = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert nc1(means[labels], labels) == 0.0


def test_blocks_give_the_same_value(monkeypatch):
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 6, 500)
    embeddings = rng.standard_normal((6, 9))[labels] + rng.standard_normal((500, 9))
    whole = nc1(embeddings, labels)
    # Blocks of 7 rows (9 columns * 8 bytes * 7): many partial blocks, one short.
    monkeypatch.setattr(neural_collapse, "_BLOCK_BYTES", 8 * 9 * 7)
    assert nc1(embeddings, labels) == pytest.approx(whole, rel=1e-12)


def test_coinciding_class_means_give_nan():
    embeddings = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert np.isnan(nc1(embeddings, np.array([0, 0, 1, 1])))


def test_bad_input_is_refused():
    with pytest.raises(InvalidInputError, match="two classes"):
        nc1(np.ones((4, 2)), np.zeros(4))
    with pytest.raises(InvalidInputError) as raised:
        nc1(np.ones((4, 2)), np.zeros(3))
    assert raised.value.field == "labels"
