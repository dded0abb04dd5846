"""``nnkgeo compare`` and ``nnkgeo drift``: the engine in-process, like ``nnkgeo analyze``.

``compare A B``: two embeddings of the same points (layers, models, checkpoints), each
analysed, then compared point by point through their NNK neighbourhoods (the report's
``compare`` section). ``drift REF CUR``: the reference analysed, each current point
solved against it, and its reconstruction error ranked among the reference's own
leave-one-out errors (the report's ``drift`` section; ``nnkgeo check --max-drift`` gates
on it). The same core as the service's compare and drift jobs
(:mod:`workers.geometry.comparison_report`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from api_schemas import AnalysisParams
from nnkgeo.cli.local import _needs_engine, _read, _validation_problems, _write_report
from nnkgeo.cli.outcome import EXIT_OK, CommandRefused
from nnkgeo.cli.param_flags import add_analysis_flags, given_analysis_params

if TYPE_CHECKING:
    import numpy as np

__all__ = ["add_comparison_commands"]

_Subparsers = argparse._SubParsersAction  # type: ignore[type-arg]


def add_comparison_commands(subparsers: _Subparsers) -> None:
    """Add ``compare`` and ``drift`` to the ``nnkgeo`` parser's subparsers."""
    _add_compare(subparsers)
    _add_drift(subparsers)


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    add_analysis_flags(parser, with_defaults=True)
    parser.add_argument("--out", required=True, help="where to write report.json")
    parser.add_argument(
        "--html", help="also write the report as one self-contained HTML page of plots"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress or summary")


def _add_compare(subparsers: _Subparsers) -> None:
    compare = subparsers.add_parser(
        "compare",
        help="compare two embeddings of the same points, point by point (no server)",
        description=(
            "Analyse A and B (the same points in the same order: two layers, models or "
            "checkpoints) and compare each point's NNK neighbourhood in A and in B: "
            "Jaccard and weighted overlap, per class, the most changed points, linear CKA."
        ),
    )
    compare.add_argument("a", metavar="A", help="N x d_a embeddings (.npy, .npz, ...)")
    compare.add_argument("b", metavar="B", help="N x d_b embeddings of the same points")
    compare.add_argument("--array", help="array name inside A and B (npz, safetensors, parquet)")
    compare.add_argument(
        "--name", action="append", help="set names, twice: A's then B's (default: file stems)"
    )
    compare.add_argument("--labels", metavar="Y", help="file with N labels, for per-class overlap")
    compare.add_argument("--labels-array", help="array name inside the labels file")
    compare.add_argument("--ids", help="file with N point ids, shown beside the changed points")
    compare.add_argument("--ids-array", help="array name inside the ids file")
    _add_output_flags(compare)
    compare.set_defaults(handler=_compare)


def _add_drift(subparsers: _Subparsers) -> None:
    drift = subparsers.add_parser(
        "drift",
        help="score new embeddings against a reference set (no server)",
        description=(
            "Analyse REF, solve each point of CUR against it (out-of-sample NNK) and rank "
            "its reconstruction error among REF's leave-one-out errors; a two-sample "
            "Kolmogorov-Smirnov test gives the verdict. Neighbour search is exact."
        ),
    )
    drift.add_argument("reference", metavar="REF", help="N x d reference embeddings")
    drift.add_argument("current", metavar="CUR", help="M x d embeddings to check")
    drift.add_argument("--array", help="array name inside REF and CUR")
    drift.add_argument("--labels", metavar="Y", help="file with N reference labels")
    drift.add_argument("--labels-array", help="array name inside the labels file")
    drift.add_argument(
        "--current-labels", metavar="CY", help="file with M current labels (per-class shifts)"
    )
    drift.add_argument("--current-labels-array", help="array name inside that file")
    drift.add_argument("--current-ids", help="file with M current ids, shown beside drifted points")
    drift.add_argument("--current-ids-array", help="array name inside that file")
    drift.add_argument(
        "--threshold",
        type=float,
        default=0.01,
        help="verdict 'drift' when the KS p-value is below it (default 0.01)",
    )
    _add_output_flags(drift)
    drift.set_defaults(handler=_drift)


def _params(args: argparse.Namespace, *, exact: bool = False) -> AnalysisParams:
    try:
        params = AnalysisParams(**given_analysis_params(args))
    except ValidationError as error:
        raise CommandRefused(_validation_problems(error, "params")) from error
    if exact and params.knn != "exact":
        if params.knn == "approximate":
            raise CommandRefused(
                "--knn approximate: drift compares exact leave-one-out errors; use --knn exact"
            )
        params = params.model_copy(update={"knn": "exact"})
    return params


def _optional(path: str | None, array: str | None, what: str) -> np.ndarray | None:
    return None if path is None else _read(path, array, what)


def _stem(path: str, fallback: str) -> str:
    return Path(path).name.split(".")[0] or fallback


@_needs_engine("compare")
def _compare(args: argparse.Namespace) -> int:
    from workers.geometry import EmbeddingSet, InvalidInputError, analyze
    from workers.geometry.comparison_report import add_comparison_sections

    params = _params(args)
    if args.name is not None and len(args.name) != 2:
        raise CommandRefused(f"--name was given {len(args.name)} times; give it twice (A, B)")
    names = args.name or [_stem(args.a, "a"), _stem(args.b, "b")]
    if names[0] == names[1]:
        names = [f"0-{names[0]}", f"1-{names[1]}"]
    labels = _optional(args.labels, args.labels_array, "labels")
    ids = _optional(args.ids, args.ids_array, "ids")
    sets = [
        EmbeddingSet(name=name, embeddings=_read(path, args.array, what), labels=labels, ids=ids)
        for name, path, what in zip(names, (args.a, args.b), ("A", "B"), strict=True)
    ]
    if sets[0].embeddings.shape[0] != sets[1].embeddings.shape[0]:
        raise CommandRefused(
            f"B has {sets[1].embeddings.shape[0]} points and A {sets[0].embeddings.shape[0]}; "
            "compare needs the same points in both, in the same order"
        )
    from nnkgeo.client.progress import ProgressLine

    try:
        with ProgressLine(enabled=not args.quiet) as progress:
            result = analyze(sets, params=params, progress=progress)
        result = add_comparison_sections(result, sets, params=params, compare_sets=True)
    except InvalidInputError as error:
        raise CommandRefused(str(error)) from error
    inputs = [("A", args.a), ("B", args.b)]
    inputs += [
        (role, given) for role, given in (("labels", args.labels), ("ids", args.ids)) if given
    ]
    _write_report(result.report, sets, out=args.out, html=args.html, inputs=inputs)
    section = result.report.compare
    if not args.quiet and section is not None:
        print(
            f"{section.a} vs {section.b}: N={section.n_points}, Jaccard overlap mean "
            f"{section.overlap.jaccard.mean:.3f} (p10 {section.overlap.jaccard.p10:.3f}), "
            f"weighted {section.overlap.weighted.mean:.3f}, linear CKA {section.cka_linear:.3f}",
            file=sys.stderr,
        )
    return EXIT_OK


@_needs_engine("drift")
def _drift(args: argparse.Namespace) -> int:
    from workers.geometry import EmbeddingSet, InvalidInputError, analyze
    from workers.geometry.comparison_report import add_comparison_sections

    params = _params(args, exact=True)
    if not 0.0 < args.threshold < 1.0:
        raise CommandRefused(f"--threshold must lie in (0, 1), got {args.threshold}")
    reference = EmbeddingSet(
        name=_stem(args.reference, "reference"),
        embeddings=_read(args.reference, args.array, "REF"),
        labels=_optional(args.labels, args.labels_array, "labels"),
    )
    current = EmbeddingSet(
        name=_stem(args.current, "current"),
        embeddings=_read(args.current, args.array, "CUR"),
        labels=_optional(args.current_labels, args.current_labels_array, "current labels"),
        ids=_optional(args.current_ids, args.current_ids_array, "current ids"),
    )
    from nnkgeo.client.progress import ProgressLine

    try:
        with ProgressLine(enabled=not args.quiet) as progress:
            result = analyze([reference], params=params, progress=progress)
        result = add_comparison_sections(
            result, [reference], params=params, current=current, threshold=args.threshold
        )
    except InvalidInputError as error:
        raise CommandRefused(str(error)) from error
    inputs = [("reference", args.reference), ("current", args.current)]
    _write_report(result.report, [reference], out=args.out, html=args.html, inputs=inputs)
    section = result.report.drift
    if not args.quiet and section is not None:
        print(
            f"{section.current} against {section.reference}: {section.verdict} (KS statistic "
            f"{section.ks.statistic:.3f}, p = {section.ks.p_value:.3g}, threshold "
            f"{section.threshold:g}); mean score {section.score.mean:.3f}",
            file=sys.stderr,
        )
    return EXIT_OK
