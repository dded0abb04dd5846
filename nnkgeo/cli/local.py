"""``nnkgeo analyze`` and ``nnkgeo study``: the engine in-process, without a server.

The same validation, graph, metrics and report code as the service's workers. The
engine (``workers.geometry``, ``workers.models``, ``arrayfiles``, ``htmlreport`` and
their libraries) is imported inside each command, so that ``nnkgeo --help``, the service
commands and ``nnkgeo check`` work in a plain ``pip install nnkgeo``; there these two
commands say which extra to install.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from api_schemas import AnalysisParams, Report
from nnkgeo.cli.outcome import EXIT_OK, CommandRefused, Handler
from nnkgeo.cli.param_flags import add_analysis_flags, field_choices, given_analysis_params

if TYPE_CHECKING:
    import numpy as np

    from api_schemas.models import StudySpec
    from workers.geometry import EmbeddingSet

__all__ = ["ENGINE_INSTALL", "ENGINE_LIBRARIES", "add_local_commands"]

_Subparsers = argparse._SubParsersAction  # type: ignore[type-arg]

# The engine's third-party libraries, by import name: what the [engine] extra adds to
# the client's install (tests/unit/test_cli_package.py checks them against pyproject).
ENGINE_LIBRARIES = frozenset(
    {"numpy", "scipy", "faiss", "torch", "sklearn", "pyarrow", "safetensors", "numba"}
)
ENGINE_INSTALL = "pip install 'nnkgeo[engine]'"

# Analysis parameters a study sets itself: its --seed seeds the training, its --device
# places training and analysis alike.
_STUDY_OWN_FLAGS = ("seed", "device")


def add_local_commands(subparsers: _Subparsers) -> None:
    """Add ``analyze`` and ``study`` to the ``nnkgeo`` parser's subparsers.

    Parameters
    ----------
    subparsers
        What ``parser.add_subparsers()`` returned; each command sets ``handler``.
    """
    _add_analyze(subparsers)
    _add_study(subparsers)


def _needs_engine(command_name: str) -> Callable[[Handler], Handler]:
    """Refuse, naming the extra to install, when the engine's libraries are missing."""

    def decorate(command: Handler) -> Handler:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            try:
                return command(args)
            except ModuleNotFoundError as error:
                missing = (error.name or "").partition(".")[0]
                if missing not in ENGINE_LIBRARIES:
                    raise
                raise CommandRefused(
                    f"nnkgeo {command_name} needs the engine: {ENGINE_INSTALL} "
                    f"({missing} is not installed)"
                ) from error

        return run

    return decorate


# --------------------------------------------------------------------------- analyze


def _add_analyze(subparsers: _Subparsers) -> None:
    analyze = subparsers.add_parser(
        "analyze",
        help="analyse embedding files in-process (no server)",
        description=(
            "Build the NNK graph of each embedding file and write the JSON report. "
            "Several files give several sets, compared in the order given."
        ),
    )
    analyze.add_argument(
        "embeddings",
        nargs="+",
        metavar="EMB",
        help="N x d embeddings: .npy, .npz, .safetensors or .parquet",
    )
    analyze.add_argument("--array", help="array name inside EMB (npz, safetensors, parquet)")
    analyze.add_argument("--name", action="append", help="set name, once per EMB (default: stem)")
    analyze.add_argument("--labels", metavar="Y", help="file with N labels (ints or strings)")
    analyze.add_argument("--labels-array", help="array name inside the labels file")
    analyze.add_argument("--ids", help="file with N point ids, shown beside suspects")
    analyze.add_argument("--ids-array", help="array name inside the ids file")
    analyze.add_argument(
        "--query",
        metavar="Q",
        help="held-out points (M x d), each interpolated from its k nearest points of EMB "
        "(report: sets[].out_of_sample)",
    )
    analyze.add_argument("--query-array", help="array name inside the query file")
    analyze.add_argument(
        "--query-labels", metavar="QY", help="file with M query labels (needs --labels)"
    )
    analyze.add_argument("--query-labels-array", help="array name inside the query labels file")
    add_analysis_flags(analyze, with_defaults=True)
    analyze.add_argument("--out", required=True, help="where to write report.json")
    analyze.add_argument(
        "--html", help="also write the report as one self-contained HTML page of plots"
    )
    analyze.add_argument("--graph", help="write the symmetric graph A (scipy .npz)")
    analyze.add_argument("--directed-graph", help="write the directed graph W (scipy .npz)")
    analyze.add_argument("--quiet", action="store_true", help="no progress or summary")
    analyze.set_defaults(handler=_analyze)


@_needs_engine("analyze")
def _analyze(args: argparse.Namespace) -> int:
    import scipy.sparse as sp

    from workers.geometry import EmbeddingSet, InvalidInputError, analyze

    try:
        params = AnalysisParams(**given_analysis_params(args))
    except ValidationError as error:
        raise CommandRefused(_validation_problems(error, "params")) from error
    labels = None if args.labels is None else _read(args.labels, args.labels_array, "labels")
    ids = None if args.ids is None else _read(args.ids, args.ids_array, "ids")
    if args.query_labels is not None and args.query is None:
        raise CommandRefused("--query-labels needs --query")
    queries = None if args.query is None else _read(args.query, args.query_array, "query")
    query_labels = (
        None
        if args.query_labels is None
        else _read(args.query_labels, args.query_labels_array, "query labels")
    )
    names = _set_names(args.embeddings, args.name)
    sets = [
        EmbeddingSet(
            name=name,
            embeddings=_read(path, args.array, "embeddings"),
            labels=labels,
            ids=ids,
            query_embeddings=queries,
            query_labels=query_labels,
        )
        for path, name in zip(args.embeddings, names, strict=True)
    ]
    # Here, not at the top: the client package imports httpx, which ``--help`` never needs.
    from nnkgeo.client.progress import ProgressLine

    try:
        with ProgressLine(enabled=not args.quiet) as progress:
            result = analyze(sets, params=params, progress=progress)
    except InvalidInputError as error:
        raise CommandRefused(str(error)) from error

    inputs = [("embeddings", ", ".join(args.embeddings))]
    for role, given in (
        ("labels", args.labels),
        ("ids", args.ids),
        ("query", args.query),
        ("query labels", args.query_labels),
    ):
        if given is not None:
            inputs.append((role, given))
    _write_report(result.report, sets, out=args.out, html=args.html, inputs=inputs)
    for template, attribute in ((args.graph, "symmetric"), (args.directed_graph, "directed")):
        if template is None:
            continue
        for name, set_result in result.sets.items():
            path = _graph_path(template, name, len(result.sets))
            path.parent.mkdir(parents=True, exist_ok=True)
            sp.save_npz(path, getattr(set_result, attribute))
    if not args.quiet:
        for set_report in result.report.sets:
            summary = f"{set_report.name}: N={set_report.n_points} d={set_report.dim} "
            summary += f"NNK degree {set_report.nnk_degree.mean:.2f}"
            if set_report.loo_error is not None:
                summary += (
                    f", LOO error NNK {set_report.loo_error.nnk_weighted:.4f} / unweighted "
                    f"{set_report.loo_error.nnk_unweighted:.4f}, pure patches "
                    f"{set_report.homogeneity.pure_patch_fraction:.3f}, regime {set_report.regime}"
                )
            held_out = set_report.out_of_sample
            if held_out is not None and held_out.error is not None:
                summary += (
                    f"; held-out error NNK {held_out.error.nnk_weighted:.4f} / unweighted "
                    f"{held_out.error.nnk_unweighted:.4f} (M={held_out.n})"
                )
            print(summary, file=sys.stderr)
    return EXIT_OK


def _read(path: str, array: str | None, what: str) -> np.ndarray:
    from arrayfiles import ArrayFileError, detect_format, load_array

    if not Path(path).is_file():
        raise CommandRefused(f"{what}: no such file: {path}")
    try:
        fmt = detect_format(path)
    except ArrayFileError:
        # arrayfiles advises the Python spelling (format=...); analyze has no --format.
        raise CommandRefused(
            f"{what} {path}: cannot tell its format from its suffix; analyze reads "
            ".npy, .npz, .safetensors and .parquet (or .pq) files: convert it to one of "
            "them (CSV: np.save of np.loadtxt), or give it its right suffix"
        ) from None
    try:
        return load_array(path, fmt=fmt, name=array)
    except ArrayFileError as error:
        raise CommandRefused(f"{what} {path}: {error.message}") from error


def _set_names(paths: Sequence[str], names: Sequence[str] | None) -> list[str]:
    if names:
        if len(names) != len(paths):
            raise CommandRefused(
                f"--name was given {len(names)} times for {len(paths)} embedding files"
            )
        chosen = list(names)
    else:
        chosen = [Path(path).name.split(".")[0] or "set" for path in paths]
    if len(set(chosen)) != len(chosen):
        chosen = [f"{i}-{name}" for i, name in enumerate(chosen)]
    return chosen


def _graph_path(template: str, name: str, n_sets: int) -> Path:
    path = Path(template)
    if n_sets == 1:
        return path
    return path.with_name(f"{path.stem}-{name}{path.suffix or '.npz'}")


def _write_report(
    report: Report,
    sets: Sequence[EmbeddingSet],
    *,
    out: str,
    html: str | None,
    inputs: Sequence[tuple[str, str]] = (),
) -> None:
    """report.json, and the HTML page (with the 2-D maps: the sets' arrays are at hand).

    The page names its ``inputs`` ((role, file) pairs) and the time it was made: a local
    report has no job to look them up by.
    """
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(report.model_dump_json(indent=2))
    if html is None:
        return
    from htmlreport import render_report_html

    page = render_report_html(
        report,
        embeddings={s.name: s.embeddings for s in sets},
        labels={s.name: s.labels for s in sets if s.labels is not None},
        inputs=inputs,
        generated_at=datetime.now(UTC),
    )
    Path(html).parent.mkdir(parents=True, exist_ok=True)
    Path(html).write_text(page, encoding="utf-8")


def _validation_problems(error: ValidationError, what: str) -> str:
    return "; ".join(
        f"{'.'.join(map(str, item['loc'])) or what}: {item['msg']}" for item in error.errors()
    )


# --------------------------------------------------------------------------- study


def _add_study(subparsers: _Subparsers) -> None:
    study = subparsers.add_parser(
        "study",
        help="train models of growing size and compare their embeddings (no server)",
        description=(
            "The model-size study of Shekkizhar & Ortega (GSP 2023), in-process: train each "
            "model until it fits its training set (or --max-epochs), embed the training set "
            "at the chosen layers, analyse every set and write the JSON report, whose "
            "comparison runs over the models in size order."
        ),
    )
    study.add_argument(
        "--dataset",
        required=True,
        help="'digits' (scikit-learn's, bundled), an npz/safetensors file with inputs and "
        "labels, or an image folder (one sub-directory of .npy images per class)",
    )
    study.add_argument("--inputs", help="inputs array in the dataset file (default 'inputs')")
    study.add_argument(
        "--labels-array", dest="labels_array", help="labels array in the file (default 'labels')"
    )
    study.add_argument("--layout", choices=["images", "vectors"], default="images")
    study.add_argument("--test-fraction", type=float, default=0.25)
    study.add_argument("--split-seed", type=int, default=0)
    study.add_argument("--family", choices=["mlp", "cnn"], default="mlp")
    study.add_argument("--depth", type=int, default=2, help="MLP hidden layers (default 2)")
    study.add_argument("--widths", help="MLP widths, comma-separated: 8,32,128,512")
    study.add_argument("--width-multipliers", help="CNN width multipliers: 0.25,0.5,1,2")
    study.add_argument(
        "--layers",
        default="penultimate",
        help="'penultimate', 'all', or module names, comma-separated (default penultimate)",
    )
    study.add_argument("--pooling", choices=["avg", "flatten", "max"], default="avg")
    study.add_argument("--max-epochs", type=int, default=500)
    study.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    study.add_argument(
        "--seeds",
        help="several training seeds, comma-separated (0,1,2): each model is trained once per "
        "seed and the report's study section gives t-intervals and verdicts; overrides --seed",
    )
    study.add_argument(
        "--min-epochs", type=int, default=0, help="train at least this many epochs (default 0)"
    )
    study.add_argument(
        "--until",
        choices=["fit", "loss"],
        default="fit",
        help="stop when the training accuracy is 1.0 (fit, default) or the training loss is "
        "at most --target-loss (loss)",
    )
    study.add_argument("--target-loss", type=float, help="the training loss --until loss stops at")
    study.add_argument(
        "--no-standardize",
        dest="standardize",
        action="store_false",
        help="train on the inputs as given (default: z-scored with the training statistics)",
    )
    study.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    study.add_argument("--batch-size", type=int, default=64)
    # --seed seeds the training and --device places it too: the study's own.
    add_analysis_flags(study, with_defaults=True, exclude=_STUDY_OWN_FLAGS)
    study.add_argument(
        "--device",
        choices=field_choices("device"),
        default="cpu",
        help="where training, embedding and the analysis run (default: cpu)",
    )
    study.add_argument("--out", required=True, help="where to write report.json")
    study.add_argument(
        "--html", help="also write the report as one self-contained HTML page of plots"
    )
    study.add_argument(
        "--embeddings-out", help="also save each set's embeddings, labels and ids (.npz)"
    )
    study.add_argument("--quiet", action="store_true", help="no progress or table")
    study.set_defaults(handler=_study)


@_needs_engine("study")
def _study(args: argparse.Namespace) -> int:
    """Train the study's models, embed their training sets, analyse, write the report."""
    import numpy as np

    from workers.geometry import InvalidInputError, analyze
    from workers.models import load_dataset, run_study
    from workers.models.study import TRAINING_PROGRESS_SHARE, scaled_progress
    from workers.models.study_report import add_study_section

    spec, local_path = _study_spec(args)
    try:
        params = AnalysisParams(
            **given_analysis_params(args, exclude=_STUDY_OWN_FLAGS), device=args.device
        )
    except ValidationError as error:
        raise CommandRefused(_validation_problems(error, "study")) from error
    from nnkgeo.client.progress import ProgressLine

    started = time.perf_counter()
    try:
        with ProgressLine(enabled=not args.quiet) as progress:
            data = load_dataset(
                spec.dataset,
                locate_upload=lambda _dataset_id: local_path,
                data_roots=[] if local_path is None else [local_path],
            )
            # Training, then the analysis, on consecutive spans of one bar: each phase
            # reports its own 0..1, and the bar must not fall back to 0 between them.
            sets = run_study(
                spec,
                dataset=data,
                params=params,
                device=args.device,
                progress=scaled_progress(progress, 0.0, TRAINING_PROGRESS_SHARE),
            )
            result = analyze(
                sets,
                params=params,
                progress=scaled_progress(
                    progress, TRAINING_PROGRESS_SHARE, 1.0 - TRAINING_PROGRESS_SHARE
                ),
            )
            result = add_study_section(result, sets, params=params)
    except InvalidInputError as error:
        raise CommandRefused(str(error)) from error
    _write_report(
        result.report, sets, out=args.out, html=args.html, inputs=[("dataset", args.dataset)]
    )
    if args.embeddings_out:
        embeddings_out = Path(args.embeddings_out)
        embeddings_out.parent.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for embedding_set in sets:
            arrays[f"{embedding_set.name}.embeddings"] = embedding_set.embeddings
            arrays[f"{embedding_set.name}.labels"] = embedding_set.labels
            arrays[f"{embedding_set.name}.ids"] = embedding_set.ids
        np.savez(embeddings_out, **arrays)
    if not args.quiet:
        _print_study_table(result.report, seconds=time.perf_counter() - started)
    return EXIT_OK


def _comma_list(text: str, kind: type, option: str) -> list[Any]:
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise CommandRefused(
            f"{option}: expected a comma-separated list of numbers, got {text!r}"
        ) from None


def _study_dataset(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """The dataset reference for ``--dataset``, and the local file or folder it names."""
    split = {"test_fraction": args.test_fraction, "seed": args.split_seed}
    if args.dataset == "digits":
        return {"builtin": "digits", "layout": args.layout, "split": split}, None
    path = Path(args.dataset).resolve()
    if path.is_dir():
        return {"path": str(path), "split": split}, path
    if path.is_file():
        reference = {"dataset": path.name[:128] or "file", "split": split}
        reference.update({"inputs": args.inputs, "labels": args.labels_array})
        return reference, path
    raise CommandRefused(f"--dataset: not 'digits', a file or a directory: {args.dataset}")


def _study_model(args: argparse.Namespace) -> dict[str, Any]:
    if args.family == "mlp":
        if not args.widths:
            raise CommandRefused("--widths is required with --family mlp")
        return {
            "family": "mlp",
            "depth": args.depth,
            "widths": _comma_list(args.widths, int, "--widths"),
        }
    if not args.width_multipliers:
        raise CommandRefused("--width-multipliers is required with --family cnn")
    return {
        "family": "cnn",
        "width_multipliers": _comma_list(args.width_multipliers, float, "--width-multipliers"),
    }


def _study_spec(args: argparse.Namespace) -> tuple[StudySpec, Path | None]:
    from api_schemas.models import StudySpec

    dataset, local_path = _study_dataset(args)
    model = _study_model(args)
    layers = args.layers if args.layers in ("all", "penultimate") else args.layers.split(",")
    try:
        spec = StudySpec(
            dataset=dataset,
            model=model,
            train={
                "max_epochs": args.max_epochs,
                "min_epochs": args.min_epochs,
                "until": args.until,
                "target_loss": args.target_loss,
                "standardize": args.standardize,
                "seeds": None if args.seeds is None else _comma_list(args.seeds, int, "--seeds"),
                "seed": args.seed,
                "lr": args.lr,
                "batch_size": args.batch_size,
            },
            layers=layers,
            pooling=args.pooling,
        )
    except ValidationError as error:
        raise CommandRefused(_validation_problems(error, "study")) from error
    return spec, local_path


def _print_study_table(report: Report, *, seconds: float) -> None:
    header = (
        f"{'set':<28} {'params':>8} {'epochs':>6} {'train':>6} {'test':>6} {'degree':>6} "
        f"{'nnk_w':>6} {'nnk_u':>6} {'knn_u':>6} {'pure':>6} {'regime':<17}"
    )
    print(header, file=sys.stderr)
    for set_report in report.sets:
        extra = set_report.extra
        print(
            f"{set_report.name:<28} {extra.get('parameters', ''):>8} {extra.get('epochs', ''):>6} "
            f"{extra.get('train_accuracy', float('nan')):>6.3f} "
            f"{extra.get('test_accuracy') or float('nan'):>6.3f} "
            f"{set_report.nnk_degree.mean:>6.2f} {set_report.loo_error.nnk_weighted:>6.3f} "
            f"{set_report.loo_error.nnk_unweighted:>6.3f} "
            f"{set_report.loo_error.knn_unweighted:>6.3f} "
            f"{set_report.homogeneity.pure_patch_fraction:>6.3f} {set_report.regime:<17}",
            file=sys.stderr,
        )
    if report.study is not None:
        for summary in report.study.models:
            print(
                f"{summary.name}: fitted {len(summary.fitted_seeds)} of {summary.seeds} seeds",
                file=sys.stderr,
            )
        for claim in report.study.claims:
            print(f"claim {claim.id} ({claim.layer}): {claim.verdict}", file=sys.stderr)
    print(f"study and analysis took {seconds:.1f} s", file=sys.stderr)
