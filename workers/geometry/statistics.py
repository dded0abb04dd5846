"""The statistics a study reports: exact McNemar, Wilson and t intervals, the claim verdicts.

Every function is pure (arrays and counts in, numbers out) so that each can be checked
against scipy or a closed form. Two rules of issue 14 decide the seed's claims:

- ``pure_patches_grow``: the pure-patch fraction grows with model size, judged by the
  paired (by training seed) t-interval of its difference between sizes.
- ``unweighted_catches_up``: at the largest size, uniform weights over the NNK neighbours
  predict as well as the NNK weights, judged by McNemar's exact test on the pooled
  points, on training points and on held-out points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "McNemarResult",
    "MeanInterval",
    "PairedCorrectness",
    "Verdict",
    "mcnemar_exact",
    "mcnemar_paired",
    "paired_difference_interval",
    "pure_patches_grow_verdict",
    "regime_uncertain",
    "t_interval",
    "unweighted_catches_up_verdict",
    "wilson_interval",
]

Verdict = Literal["supported", "partly", "not_supported"]

# The significance level of both claims (issue 14: "p > 0.05", "95 % interval").
_ALPHA = 0.05
# The normal quantile at 0.975 (the two-sided 95 % z), float(scipy.special.ndtri(0.975))
# to the last bit (tests/unit/test_fixed_costs.py checks it). Every analysis with
# labels draws two Wilson intervals at 95 %, and importing scipy.special for them would
# cost ~50 ms of start-up; other levels import it.
_NORMAL_QUANTILE_975 = 1.959963984540054


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test on paired predictions.

    Attributes
    ----------
    b : int
        Points the first rule gets right and the second gets wrong.
    c : int
        Points the first rule gets wrong and the second gets right.
    p_value : float
        Two-sided exact binomial p-value of ``b`` among ``b + c`` at 1/2.
    """

    b: int
    c: int
    p_value: float


@dataclass(frozen=True)
class MeanInterval:
    """A mean and its confidence interval.

    Attributes
    ----------
    mean : float
    low, high : float or None
        The interval's bounds; None when fewer than two values leave it undefined.
    n : int
        Number of values.
    """

    mean: float
    low: float | None
    high: float | None
    n: int

    def excludes_zero_upwards(self) -> bool:
        """Whether the whole interval lies above 0 (an interval touching 0 does not)."""
        return self.low is not None and self.low > 0.0


@dataclass(frozen=True)
class PairedCorrectness:
    """Per-point correctness of the NNK-weighted and NNK-unweighted predictions.

    The points of every fitted seed of one model, pooled; ``weighted[i]`` and
    ``unweighted[i]`` judge the same point.
    """

    weighted: np.ndarray
    unweighted: np.ndarray


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _normal_quantile(probability: float) -> float:
    """The standard normal quantile (``scipy.special.ndtri``), bit for bit."""
    if probability == 0.975:
        return _NORMAL_QUANTILE_975
    # scipy.special holds the functions scipy.stats's binom.cdf, norm.ppf and t.ppf call
    # (scipy.stats costs ~0.3 s of start-up); imported here, where it is needed.
    import scipy.special

    return float(scipy.special.ndtri(probability))


def _confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(confidence)


def mcnemar_exact(b: int, c: int) -> McNemarResult:
    """McNemar's exact test: are ``b`` and ``c`` discordant pairs equally likely?

    Parameters
    ----------
    b, c : int
        Discordant counts: first rule right and second wrong (``b``), and the reverse.

    Returns
    -------
    McNemarResult
        ``p_value = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)])``; 1 when ``b + c = 0``.

    Notes
    -----
    Under the null hypothesis each discordant point falls either way with probability
    1/2 (McNemar 1947; the exact form of Fay, "Two-sided exact tests and matching
    confidence intervals for discrete data", R Journal 2010). The binomial is symmetric
    at 1/2, so doubling the smaller tail equals summing every outcome no more likely than
    the observed one, which is what :func:`scipy.stats.binomtest` does.

    Examples
    --------
    >>> mcnemar_exact(40, 8).p_value < 1e-5
    True
    """
    b, c = _count(b, "b"), _count(c, "c")
    if b + c == 0:
        return McNemarResult(b=0, c=0, p_value=1.0)
    import scipy.special

    tail = scipy.special.bdtr(min(b, c), b + c, 0.5)
    return McNemarResult(b=b, c=c, p_value=float(min(1.0, 2.0 * tail)))


def mcnemar_paired(first_correct: np.ndarray, second_correct: np.ndarray) -> McNemarResult:
    """McNemar's exact test on two rules' per-point correctness (same points, same order).

    ``b`` counts points only the first rule gets right, ``c`` points only the second does.
    """
    first = np.asarray(first_correct, dtype=bool)
    second = np.asarray(second_correct, dtype=bool)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(
            f"correctness arrays must be 1-D of equal length, got shapes {first.shape} "
            f"and {second.shape}"
        )
    return mcnemar_exact(int((first & ~second).sum()), int((~first & second).sum()))


def wilson_interval(errors: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an error rate ``errors / n``.

    Parameters
    ----------
    errors : int
        Points predicted wrongly, ``0 <= errors <= n``.
    n : int
        Points predicted, at least 1.
    confidence : float, optional

    Returns
    -------
    (low, high) : tuple of float
        Within [0, 1].

    Notes
    -----
    With p = errors / n and z the two-sided normal quantile (Wilson 1927)::

        (p + z^2 / 2n  +-  z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)

    Unlike the Wald interval it keeps a positive width at 0 errors, which is where the
    regime threshold (0.01) sits.
    """
    errors, n = _count(errors, "errors"), _count(n, "n")
    if n == 0 or errors > n:
        raise ValueError(f"need 0 <= errors <= n and n >= 1, got errors={errors}, n={n}")
    z = _normal_quantile(0.5 + _confidence(confidence) / 2.0)
    rate = errors / n
    shrink = 1.0 + z * z / n
    centre = (rate + z * z / (2 * n)) / shrink
    half = z * np.sqrt(rate * (1.0 - rate) / n + z * z / (4 * n * n)) / shrink
    # At 0 (or n) errors a bound is exactly 0 (or 1); rounding would leave ~1e-18.
    low = 0.0 if errors == 0 else max(0.0, centre - half)
    high = 1.0 if errors == n else min(1.0, centre + half)
    return float(low), float(high)


def regime_uncertain(
    nnk_weighted_errors: int, nnk_unweighted_errors: int, n: int, *, epsilon: float = 0.01
) -> bool:
    """Whether the Wilson 95 % interval of either LOO error contains ``epsilon``.

    An interval that contains the regime threshold cannot tell which side of it the error
    lies on, so the regime verdict (DESIGN section 2) could flip with other points.
    """
    for errors in (nnk_weighted_errors, nnk_unweighted_errors):
        low, high = wilson_interval(errors, n)
        if low <= epsilon <= high:
            return True
    return False


def t_interval(values: np.ndarray | Sequence[float], *, confidence: float = 0.95) -> MeanInterval:
    """Student-t interval of the mean of ``values`` (e.g. a metric over training seeds).

    Parameters
    ----------
    values : array-like of shape (n,)
        Finite values; at least one.
    confidence : float, optional

    Returns
    -------
    MeanInterval
        ``mean +- t_{n-1} s / sqrt(n)`` with s the sample standard deviation; no bounds
        (None) for a single value; ``[mean, mean]`` when all values are equal.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise ValueError("values must be a non-empty 1-D array of finite numbers")
    confidence = _confidence(confidence)
    mean = float(array.mean())
    if array.size < 2:
        return MeanInterval(mean=mean, low=None, high=None, n=1)
    import scipy.special

    half = float(
        scipy.special.stdtrit(array.size - 1, 0.5 + confidence / 2.0)
        * array.std(ddof=1)
        / np.sqrt(array.size)
    )
    return MeanInterval(mean=mean, low=mean - half, high=mean + half, n=int(array.size))


def paired_difference_interval(
    larger: np.ndarray | Sequence[float],
    smaller: np.ndarray | Sequence[float],
    *,
    confidence: float = 0.95,
) -> MeanInterval:
    """t-interval of the paired differences ``larger - smaller`` (paired by position)."""
    larger_values = np.asarray(larger, dtype=np.float64)
    smaller_values = np.asarray(smaller, dtype=np.float64)
    if larger_values.shape != smaller_values.shape:
        raise ValueError(
            f"paired values need equal shapes, got {larger_values.shape} and {smaller_values.shape}"
        )
    return t_interval(larger_values - smaller_values, confidence=confidence)


def _interval_evidence(interval: MeanInterval) -> dict:
    ci95 = None if interval.low is None else [interval.low, interval.high]
    return {"mean_difference": interval.mean, "ci95": ci95, "n_pairs": interval.n}


def pure_patches_grow_verdict(
    fraction_by_size_and_seed: np.ndarray, *, sizes: Sequence[str] | None = None
) -> tuple[Verdict, dict]:
    """Verdict on "pure patches grow with model size", from paired seeds.

    Parameters
    ----------
    fraction_by_size_and_seed : ndarray of shape (n_sizes, n_seeds)
        ``pure_patch_fraction`` of each model (rows, smallest size first) and training seed
        (columns: the same seed in every row). NaN marks an unfitted model: that seed
        drops out of every pair it belongs to.
    sizes : sequence of str, optional
        Names of the sizes for the evidence; default their positions.

    Returns
    -------
    verdict : {"supported", "partly", "not_supported"}
    evidence : dict
        ``steps``: per consecutive pair of sizes, the mean paired difference (larger
        minus smaller), its 95 % t-interval ``ci95`` (None below two pairs) and
        ``n_pairs``; ``overall``: the same from the smallest to the largest size.

    Notes
    -----
    Supported when every consecutive step's interval lies above 0; partly when only the
    smallest-to-largest interval does; not supported otherwise. An interval touching 0
    does not exclude it, nor does a step with fewer than two paired seeds.
    """
    fractions = np.asarray(fraction_by_size_and_seed, dtype=np.float64)
    if fractions.ndim != 2 or fractions.shape[0] < 2 or fractions.shape[1] < 1:
        raise ValueError(
            "fraction_by_size_and_seed must have shape (n_sizes >= 2, n_seeds >= 1), got "
            f"{fractions.shape}"
        )
    names = [str(position) for position in range(fractions.shape[0])] if sizes is None else sizes
    if len(names) != fractions.shape[0]:
        raise ValueError(f"sizes names {len(names)} sizes, the fractions {fractions.shape[0]}")

    def step(smaller: int, larger: int) -> tuple[bool, dict]:
        paired = np.isfinite(fractions[smaller]) & np.isfinite(fractions[larger])
        evidence = {"from": names[smaller], "to": names[larger]}
        if not paired.any():
            return False, {**evidence, "mean_difference": None, "ci95": None, "n_pairs": 0}
        interval = paired_difference_interval(fractions[larger, paired], fractions[smaller, paired])
        return interval.excludes_zero_upwards(), {**evidence, **_interval_evidence(interval)}

    steps = [step(size, size + 1) for size in range(fractions.shape[0] - 1)]
    overall_grows, overall = step(0, fractions.shape[0] - 1)
    if all(grows for grows, _ in steps):
        verdict: Verdict = "supported"
    elif overall_grows:
        verdict = "partly"
    else:
        verdict = "not_supported"
    return verdict, {"steps": [evidence for _, evidence in steps], "overall": overall}


def _gap(correctness: PairedCorrectness, alpha: float) -> dict:
    """The unweighted-minus-weighted error gap of one model on one kind of points."""
    weighted = np.asarray(correctness.weighted, dtype=bool)
    unweighted = np.asarray(correctness.unweighted, dtype=bool)
    test = mcnemar_paired(weighted, unweighted)
    n = weighted.size
    if n == 0:
        raise ValueError("correctness arrays must hold at least one point")
    # Per point d = [unweighted wrong] - [weighted wrong] in {-1, 0, 1}: mean (b - c) / n,
    # and the variance of that mean is (E[d^2] - E[d]^2) / n with E[d^2] = (b + c) / n.
    gap = (test.b - test.c) / n
    return {
        "n": int(n),
        "error_weighted": float(1.0 - weighted.mean()),
        "error_unweighted": float(1.0 - unweighted.mean()),
        "gap": float(gap),
        "gap_variance": float(((test.b + test.c) / n - gap * gap) / n),
        "b": test.b,
        "c": test.c,
        "p_value": test.p_value,
        "significant": bool(test.p_value <= alpha),
    }


def _catch_up(
    smallest: PairedCorrectness, largest: PairedCorrectness, *, alpha: float
) -> tuple[str, dict]:
    small, large = _gap(smallest, alpha), _gap(largest, alpha)
    z = _normal_quantile(1.0 - alpha / 2.0)
    narrowing = small["gap"] - large["gap"]
    half = z * np.sqrt(small.pop("gap_variance") + large.pop("gap_variance"))
    narrowed = narrowing - half > 0.0
    if small["significant"] and not large["significant"]:
        status = "caught_up"
    elif large["significant"] and narrowed:
        status = "narrowed"
    else:
        status = "neither"
    return status, {
        "smallest": small,
        "largest": large,
        "narrowing": {
            "difference": float(narrowing),
            "ci95": [float(narrowing - half), float(narrowing + half)],
        },
        "status": status,
    }


def unweighted_catches_up_verdict(
    *,
    train: tuple[PairedCorrectness, PairedCorrectness],
    held_out: tuple[PairedCorrectness, PairedCorrectness],
    alpha: float = _ALPHA,
) -> tuple[Verdict, dict]:
    """Verdict on "NNK-unweighted catches up with NNK-weighted as models grow".

    Parameters
    ----------
    train, held_out : (PairedCorrectness, PairedCorrectness)
        Per-point correctness at the smallest and at the largest size (in that order),
        seeds pooled, on training points (LOO predictions) and on held-out points
        (out-of-sample predictions).
    alpha : float, optional
        Significance level of every test (0.05).

    Returns
    -------
    verdict : {"supported", "partly", "not_supported"}
    evidence : dict
        For ``train`` and ``held_out`` separately: at each size ``n``, both errors,
        ``gap`` (unweighted minus weighted error), McNemar's ``b``, ``c``, ``p_value``
        and ``significant``; ``narrowing``, the smallest gap minus the largest with its
        Wald interval; and ``status`` ("caught_up", "narrowed" or "neither").

    Notes
    -----
    On each kind of points the status is "caught_up" when McNemar finds a difference
    (p <= alpha) at the smallest size and none (p > alpha) at the largest; "narrowed"
    when the difference stays significant at the largest size but the gap shrank
    significantly, i.e. the (1 - alpha) interval of (smallest gap - largest gap) lies
    above 0 (an interval touching 0 does not). The two sizes are different models, so
    their gaps are treated as independent: the variance of a gap is
    ``((b + c) / n - gap^2) / n``. The verdict is "supported" when both kinds of points
    caught up, "partly" when each caught up or narrowed, "not_supported" otherwise.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    statuses: dict[str, str] = {}
    evidence: dict[str, object] = {"alpha": alpha}
    for name, (smallest, largest) in (("train", train), ("held_out", held_out)):
        statuses[name], evidence[name] = _catch_up(smallest, largest, alpha=alpha)
    if all(status == "caught_up" for status in statuses.values()):
        verdict: Verdict = "supported"
    elif all(status in ("caught_up", "narrowed") for status in statuses.values()):
        verdict = "partly"
    else:
        verdict = "not_supported"
    return verdict, evidence
