"""The study's statistics against scipy, closed forms, and verdicts clear by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from workers.geometry.statistics import (
    PairedCorrectness,
    mcnemar_exact,
    mcnemar_paired,
    paired_difference_interval,
    pure_patches_grow_verdict,
    regime_uncertain,
    t_interval,
    unweighted_catches_up_verdict,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("b", "c"), [(40, 8), (8, 40), (5, 5), (0, 7), (1, 0), (13, 20), (300, 260), (0, 1)]
)
def test_mcnemar_matches_scipy_binomtest(b, c):
    expected = scipy.stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    got = mcnemar_exact(b, c)
    assert (got.b, got.c) == (b, c)
    assert got.p_value == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_mcnemar_closed_forms():
    # 0 of n discordant pairs one way: p = 2 / 2^n.
    assert mcnemar_exact(0, 10).p_value == pytest.approx(2.0 / 2**10, rel=1e-14)
    assert mcnemar_exact(0, 0).p_value == 1.0
    assert mcnemar_exact(6, 6).p_value == 1.0


def test_mcnemar_paired_counts_discordant_points():
    first = np.array([1, 1, 1, 0, 0, 1, 0], dtype=bool)
    second = np.array([1, 0, 0, 1, 0, 1, 0], dtype=bool)
    got = mcnemar_paired(first, second)
    assert (got.b, got.c) == (2, 1)


@pytest.mark.parametrize("bad", [(-1, 3), (2.5, 3), (True, 3)])
def test_mcnemar_refuses_non_counts(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        mcnemar_exact(*bad)


def _wilson_by_hand(errors: int, n: int, confidence: float) -> tuple[float, float]:
    z = scipy.stats.norm.ppf(1 - (1 - confidence) / 2)
    p = errors / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = (z / denominator) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


@pytest.mark.parametrize(
    ("errors", "n", "confidence"),
    [(0, 1347, 0.95), (13, 1347, 0.95), (1347, 1347, 0.95), (3, 10, 0.9), (50, 100, 0.99)],
)
def test_wilson_interval_matches_closed_form_and_scipy(errors, n, confidence):
    low, high = wilson_interval(errors, n, confidence=confidence)
    by_hand = _wilson_by_hand(errors, n, confidence)
    assert low == pytest.approx(max(0.0, by_hand[0]), abs=1e-14)
    assert high == pytest.approx(min(1.0, by_hand[1]), abs=1e-14)
    scipy_ci = scipy.stats.binomtest(errors, n).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    assert (low, high) == pytest.approx((scipy_ci.low, scipy_ci.high), abs=1e-12)


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_regime_uncertain_when_an_interval_contains_epsilon():
    # 13 / 1347 = 0.0097: the Wilson interval (0.0056, 0.0165) contains 0.01.
    assert regime_uncertain(13, 200, 1347)
    # 0 / 1347: (0, 0.0028), clear of 0.01; 200 / 1347: far above it.
    assert not regime_uncertain(0, 200, 1347)
    # The same share of 20 points: (0, 0.16) contains 0.01.
    assert regime_uncertain(0, 10, 20)


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_t_interval_matches_scipy(confidence):
    values = np.array([0.871, 0.935, 0.902, 0.911, 0.889])
    got = t_interval(values, confidence=confidence)
    low, high = scipy.stats.t.interval(
        confidence, values.size - 1, loc=values.mean(), scale=scipy.stats.sem(values)
    )
    assert got.mean == pytest.approx(values.mean(), abs=1e-15)
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-13)
    assert got.n == 5


def test_t_interval_of_one_value_has_no_bounds_and_of_equal_values_is_a_point():
    single = t_interval([0.7])
    assert (single.mean, single.low, single.high, single.n) == (0.7, None, None, 1)
    equal = t_interval([0.5, 0.5, 0.5])
    assert (equal.low, equal.high) == (0.5, 0.5)


def test_paired_difference_interval_is_the_t_interval_of_differences():
    larger = np.array([0.84, 0.86, 0.83, 0.85])
    smaller = np.array([0.70, 0.75, 0.69, 0.72])
    got = paired_difference_interval(larger, smaller)
    differences = larger - smaller
    low, high = scipy.stats.t.interval(
        0.95, 3, loc=differences.mean(), scale=scipy.stats.sem(differences)
    )
    assert (got.mean, got.low, got.high) == pytest.approx((differences.mean(), low, high))
    with pytest.raises(ValueError, match="equal shapes"):
        paired_difference_interval(larger, smaller[:3])


def test_pure_patches_grow_supported_when_every_step_rises():
    # Widths 8 / 32 / 512, five seeds: every seed rises by ~0.06 at each step.
    fractions = np.array(
        [
            [0.86, 0.87, 0.88, 0.87, 0.86],
            [0.93, 0.94, 0.93, 0.94, 0.92],
            [0.97, 0.98, 0.97, 0.97, 0.98],
        ]
    )
    verdict, evidence = pure_patches_grow_verdict(fractions, sizes=["w8", "w32", "w512"])
    assert verdict == "supported"
    assert [(step["from"], step["to"]) for step in evidence["steps"]] == [
        ("w8", "w32"),
        ("w32", "w512"),
    ]
    first = evidence["steps"][0]
    assert first["mean_difference"] == pytest.approx(np.mean(fractions[1] - fractions[0]))
    assert first["ci95"][0] > 0 and first["n_pairs"] == 5
    assert evidence["overall"]["from"] == "w8" and evidence["overall"]["to"] == "w512"


def test_pure_patches_grow_partly_when_a_middle_step_is_flat():
    fractions = np.array(
        [
            [0.80, 0.81, 0.79, 0.80],
            [0.90, 0.92, 0.89, 0.91],
            [0.91, 0.90, 0.90, 0.92],  # up and down around the middle size
        ]
    )
    verdict, evidence = pure_patches_grow_verdict(fractions)
    assert verdict == "partly"
    assert evidence["steps"][1]["ci95"][0] < 0 < evidence["steps"][1]["ci95"][1]
    assert evidence["overall"]["ci95"][0] > 0


def test_pure_patches_grow_interval_touching_zero_does_not_exclude_it():
    # Identical fractions at both sizes: every difference is 0, the interval [0, 0].
    fractions = np.array([[0.9, 0.8, 0.85], [0.9, 0.8, 0.85]])
    verdict, evidence = pure_patches_grow_verdict(fractions)
    assert evidence["overall"]["ci95"] == [0.0, 0.0]
    assert verdict == "not_supported"


def test_pure_patches_grow_pairs_only_fitted_seeds():
    # Seed 2 did not fit at the smallest size (NaN): it leaves that pair, not the study.
    fractions = np.array([[0.70, 0.72, np.nan], [0.80, 0.83, 0.81]])
    verdict, evidence = pure_patches_grow_verdict(fractions)
    assert evidence["overall"]["n_pairs"] == 2
    # Two pairs, differences 0.10 and 0.11: t_1 = 12.71, half-width 12.71 * 0.005 > 0.
    expected = paired_difference_interval([0.80, 0.83], [0.70, 0.72])
    assert evidence["overall"]["ci95"] == pytest.approx([expected.low, expected.high])
    assert verdict == "supported"


def test_pure_patches_grow_single_seed_cannot_be_supported():
    verdict, evidence = pure_patches_grow_verdict(np.array([[0.7], [0.9]]))
    assert verdict == "not_supported"
    assert evidence["overall"]["ci95"] is None


def test_pure_patches_grow_falling_fractions_are_not_supported():
    fractions = np.array([[0.95, 0.96, 0.94], [0.85, 0.86, 0.84]])
    assert pure_patches_grow_verdict(fractions)[0] == "not_supported"


def _pairs(n: int, *, both_wrong: int, only_weighted_right: int, only_unweighted_right: int):
    """Correctness arrays with the given discordant counts; the rest both right."""
    weighted = np.ones(n, dtype=bool)
    unweighted = np.ones(n, dtype=bool)
    position = 0
    for count, weighted_value, unweighted_value in (
        (both_wrong, False, False),
        (only_weighted_right, True, False),
        (only_unweighted_right, False, True),
    ):
        weighted[position : position + count] = weighted_value
        unweighted[position : position + count] = unweighted_value
        position += count
    return PairedCorrectness(weighted=weighted, unweighted=unweighted)


def test_unweighted_catches_up_supported_when_the_gap_closes_on_both():
    # Smallest: 60 vs 10 discordant (p ~ 1e-10); largest: 6 vs 4 (p = 0.75).
    small = _pairs(2000, both_wrong=100, only_weighted_right=60, only_unweighted_right=10)
    large = _pairs(2000, both_wrong=20, only_weighted_right=6, only_unweighted_right=4)
    verdict, evidence = unweighted_catches_up_verdict(train=(small, large), held_out=(small, large))
    assert verdict == "supported"
    for kind in ("train", "held_out"):
        assert evidence[kind]["status"] == "caught_up"
        assert evidence[kind]["largest"]["p_value"] == pytest.approx(
            scipy.stats.binomtest(6, 10, 0.5).pvalue
        )
        assert evidence[kind]["smallest"]["b"] == 60
        assert evidence[kind]["smallest"]["gap"] == pytest.approx(50 / 2000)
        assert evidence[kind]["smallest"]["error_weighted"] == pytest.approx(110 / 2000)
        assert evidence[kind]["smallest"]["error_unweighted"] == pytest.approx(160 / 2000)


def test_unweighted_catches_up_partly_when_the_gap_narrows_but_stays():
    small = _pairs(2000, both_wrong=100, only_weighted_right=120, only_unweighted_right=10)
    # Largest: 40 vs 8 (p ~ 3e-6, the held-out width-512 figure of issue 14).
    large = _pairs(2000, both_wrong=50, only_weighted_right=40, only_unweighted_right=8)
    verdict, evidence = unweighted_catches_up_verdict(train=(small, large), held_out=(small, large))
    assert verdict == "partly"
    narrowing = evidence["held_out"]["narrowing"]
    # Gaps 110/2000 and 32/2000; variances ((b + c)/n - gap^2)/n, independent sizes.
    gap_small, gap_large = 110 / 2000, 32 / 2000
    variance = (130 / 2000 - gap_small**2) / 2000 + (48 / 2000 - gap_large**2) / 2000
    half = scipy.stats.norm.ppf(0.975) * math.sqrt(variance)
    assert narrowing["difference"] == pytest.approx(gap_small - gap_large)
    assert narrowing["ci95"] == pytest.approx(
        [gap_small - gap_large - half, gap_small - gap_large + half]
    )
    assert narrowing["ci95"][0] > 0
    assert evidence["held_out"]["status"] == "narrowed"


def test_unweighted_catches_up_not_supported_when_held_out_gap_stays():
    # Training points catch up, but held-out points keep the same significant gap.
    caught_small = _pairs(2000, both_wrong=100, only_weighted_right=60, only_unweighted_right=10)
    caught_large = _pairs(2000, both_wrong=20, only_weighted_right=6, only_unweighted_right=4)
    stays = _pairs(2000, both_wrong=50, only_weighted_right=40, only_unweighted_right=8)
    verdict, evidence = unweighted_catches_up_verdict(
        train=(caught_small, caught_large), held_out=(stays, stays)
    )
    assert verdict == "not_supported"
    assert evidence["train"]["status"] == "caught_up"
    assert evidence["held_out"]["status"] == "neither"
    assert evidence["held_out"]["narrowing"]["difference"] == 0.0


def test_unweighted_catches_up_needs_a_gap_at_the_smallest_size():
    # No significant difference anywhere: nothing was caught up.
    even = _pairs(500, both_wrong=10, only_weighted_right=3, only_unweighted_right=3)
    verdict, evidence = unweighted_catches_up_verdict(train=(even, even), held_out=(even, even))
    assert verdict == "not_supported"
    assert evidence["train"]["smallest"]["p_value"] == 1.0


def test_narrowing_interval_touching_zero_is_not_significant():
    # Every point: weighted right, unweighted wrong, at both sizes. Each gap is 1 with
    # variance ((b + c)/n - gap^2)/n = 0, so the narrowing interval is exactly [0, 0]:
    # it touches 0, the gap did not narrow, and the significant gap stays.
    wide = _pairs(20, both_wrong=0, only_weighted_right=20, only_unweighted_right=0)
    verdict, evidence = unweighted_catches_up_verdict(train=(wide, wide), held_out=(wide, wide))
    assert evidence["train"]["narrowing"]["ci95"] == [0.0, 0.0]
    assert evidence["train"]["largest"]["p_value"] == pytest.approx(2.0 / 2**20)
    assert evidence["train"]["status"] == "neither"
    assert verdict == "not_supported"


def test_significance_is_p_at_most_alpha():
    small = _pairs(2000, both_wrong=100, only_weighted_right=60, only_unweighted_right=10)
    # 9 vs 3 discordant: p = 2 P[Bin(12, 1/2) <= 3] = 0.146 > 0.05, no difference.
    close = _pairs(2000, both_wrong=20, only_weighted_right=9, only_unweighted_right=3)
    # 10 vs 2: p = 2 P[Bin(12, 1/2) <= 2] = 0.039 <= 0.05, a difference.
    apart = _pairs(2000, both_wrong=20, only_weighted_right=10, only_unweighted_right=2)
    verdict, evidence = unweighted_catches_up_verdict(train=(small, close), held_out=(small, close))
    assert evidence["train"]["largest"]["p_value"] == pytest.approx(2 * 299 / 4096)
    assert verdict == "supported"
    verdict, evidence = unweighted_catches_up_verdict(train=(small, apart), held_out=(small, close))
    assert evidence["train"]["largest"]["p_value"] == pytest.approx(2 * 79 / 4096)
    assert evidence["train"]["largest"]["significant"]
    assert verdict != "supported"
