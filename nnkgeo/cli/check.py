"""``nnkgeo check``: a CI gate that exits 1 when a report misses a threshold.

It reads a local report.json (or, with ``--job``, the service's report) and checks each
set against the thresholds given. It needs neither the engine nor a server for a local
file: it works in a plain ``pip install nnkgeo``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from api_schemas import Report, SetReport
from nnkgeo.cli.connection import client_for, connection_flags
from nnkgeo.cli.outcome import EXIT_FAILED, EXIT_OK, CommandRefused, guarded, print_json

__all__ = ["LOO_METRICS", "add_check_command"]

LOO_METRICS = (
    "nnk_weighted",
    "nnk_unweighted",
    "knn_weighted",
    "knn_unweighted",
    "soft_nnk_weighted",
)


def add_check_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``check`` to the ``nnkgeo`` parser's subparsers.

    Parameters
    ----------
    subparsers
        What ``parser.add_subparsers()`` returned; the command sets ``handler``.
    """
    check = subparsers.add_parser(
        "check",
        parents=[connection_flags()],
        help="exit 1 when a report misses a threshold (CI gates)",
        description=(
            "Check each set of a report against thresholds; print which set and metric "
            "fail, and exit 1 if any does (0 if all hold, 2 if a metric is missing)."
        ),
        epilog=(
            "exit status: 0 every threshold holds; 1 a threshold fails, or (--job) the "
            "service could not be reached or answered 5xx; 2 a usage error, a report "
            "without the metric asked for, or a 4xx answer (unknown job, wrong API key)"
        ),
    )
    check.add_argument("report", nargs="?", metavar="REPORT", help="a local report.json")
    check.add_argument("--job", help="check this job's report on the service instead")
    check.add_argument(
        "--max-loo-error", type=float, metavar="X", help="largest leave-one-out error allowed"
    )
    check.add_argument(
        "--metric",
        choices=LOO_METRICS,
        default="nnk_weighted",
        help="which LOO error --max-loo-error bounds (default nnk_weighted)",
    )
    check.add_argument(
        "--min-pure-patch",
        type=float,
        metavar="X",
        help="smallest homogeneity.pure_patch_fraction allowed",
    )
    check.add_argument(
        "--max",
        dest="upper_bounds",
        action="append",
        default=[],
        metavar="METRIC=X",
        help="any numeric metric of a set, dotted: --max reconstruction_error.mean=0.2",
    )
    check.add_argument(
        "--min",
        dest="lower_bounds",
        action="append",
        default=[],
        metavar="METRIC=X",
        help="a lower bound: --min homogeneity.nnk_mean=0.9",
    )
    check.add_argument(
        "--max-drift",
        type=float,
        metavar="D",
        help="largest drift.ks.statistic allowed (a drift job's KS statistic, in [0, 1])",
    )
    check.add_argument(
        "--set", dest="set_names", action="append", help="check only this set (repeatable)"
    )
    check.set_defaults(handler=guarded(_check))


@dataclass(frozen=True)
class _Threshold:
    metric: str  # dotted path into a SetReport
    bound: float
    upper: bool  # True: value <= bound passes

    def holds(self, value: float) -> bool:
        return value <= self.bound if self.upper else value >= self.bound


@dataclass(frozen=True)
class _Verdict:
    set: str
    metric: str
    value: float
    operator: str
    threshold: float
    passed: bool


def _check(args: argparse.Namespace) -> int:
    thresholds = _thresholds(args)
    report = _report_to_check(args)
    available = [set_report.name for set_report in report.sets]
    chosen = args.set_names or available
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise CommandRefused(
            f"the report has no set {', '.join(map(repr, unknown))} "
            f"(its sets: {', '.join(available)})"
        )
    verdicts = [
        _verdict(set_report, threshold)
        for set_report in report.sets
        if set_report.name in chosen
        for threshold in thresholds
    ]
    if args.max_drift is not None:
        verdicts.append(_drift_verdict(report, args.max_drift))
    failed = [verdict for verdict in verdicts if not verdict.passed]
    if args.json:
        print_json({"passed": not failed, "checks": [asdict(verdict) for verdict in verdicts]})
    else:
        for verdict in verdicts:
            print(
                f"{'PASS' if verdict.passed else 'FAIL'}  {verdict.set}  {verdict.metric} = "
                f"{verdict.value:.4g} (must be {verdict.operator} {verdict.threshold:g})"
            )
    if failed:
        names = ", ".join(f"{verdict.set}: {verdict.metric}" for verdict in failed)
        print(f"nnkgeo: check failed: {names}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _thresholds(args: argparse.Namespace) -> list[_Threshold]:
    thresholds = []
    if args.max_loo_error is not None:
        thresholds.append(_Threshold(f"loo_error.{args.metric}", args.max_loo_error, upper=True))
    if args.min_pure_patch is not None:
        thresholds.append(
            _Threshold("homogeneity.pure_patch_fraction", args.min_pure_patch, upper=False)
        )
    for text in args.upper_bounds:
        thresholds.append(_parse_bound(text, option="--max", upper=True))
    for text in args.lower_bounds:
        thresholds.append(_parse_bound(text, option="--min", upper=False))
    if not thresholds and args.max_drift is None:
        raise CommandRefused(
            "no threshold given: use --max-loo-error, --min-pure-patch, --max, --min or --max-drift"
        )
    return thresholds


def _parse_bound(text: str, *, option: str, upper: bool) -> _Threshold:
    metric, separator, bound = text.partition("=")
    try:
        value = float(bound)
    except ValueError:
        value = math.nan
    if not separator or not metric or math.isnan(value):
        raise CommandRefused(f"{option} {text!r}: expected METRIC=NUMBER, e.g. nnk_degree.mean=12")
    return _Threshold(metric, value, upper=upper)


def _report_to_check(args: argparse.Namespace) -> Report:
    if (args.report is None) == (args.job is None):
        raise CommandRefused("give either a REPORT file or --job ID")
    if args.job is not None:
        with client_for(args) as client:
            return client.report(args.job)
    path = Path(args.report)
    try:
        return Report.model_validate_json(path.read_bytes())
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "report"
        raise CommandRefused(f"{path} is not an nnkgeo report ({where}: {first['msg']})") from None


def _verdict(set_report: SetReport, threshold: _Threshold) -> _Verdict:
    value: Any = set_report
    for part in threshold.metric.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if value is None:
            hint = " (the set has no labels)" if part in ("loo_error", "homogeneity") else ""
            raise CommandRefused(f"set {set_report.name!r} has no metric {threshold.metric}{hint}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandRefused(f"{threshold.metric} is not a number in set {set_report.name!r}")
    return _Verdict(
        set=set_report.name,
        metric=threshold.metric,
        value=float(value),
        operator="<=" if threshold.upper else ">=",
        threshold=threshold.bound,
        passed=threshold.holds(float(value)),
    )


def _drift_verdict(report: Report, bound: float) -> _Verdict:
    """drift.ks.statistic <= bound: the report's, not a set's (a drift job's section)."""
    if report.drift is None:
        raise CommandRefused(
            "--max-drift needs a drift report (nnkgeo drift, or a drift job); this report "
            "has no drift section"
        )
    value = report.drift.ks.statistic
    return _Verdict(
        set=report.drift.current,
        metric="drift.ks.statistic",
        value=value,
        operator="<=",
        threshold=bound,
        passed=value <= bound,
    )
