"""The ``nnkgeo`` command line.

``nnkgeo analyze`` runs the engine in-process, without a server: the same validation,
graph, metrics and report code as the service's workers.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from api_schemas import AnalysisParams

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


class _Progress:
    """Stage and percentage on stderr: rewritten in place on a terminal, else every 10 %."""

    def __init__(self, stream=sys.stderr, *, quiet: bool = False) -> None:
        self._stream = stream
        self._quiet = quiet
        self._interactive = stream.isatty()
        self._last: tuple[str, int] | None = None
        self._started = time.monotonic()

    def __call__(self, stage: str, fraction: float) -> None:
        if self._quiet:
            return
        step = int(fraction * 100) if self._interactive else int(fraction * 10) * 10
        if self._last == (stage, step):
            return
        self._last = (stage, step)
        line = f"[{time.monotonic() - self._started:6.1f}s] {stage:<28} {step:3d}%"
        if self._interactive:
            self._stream.write("\r" + line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._interactive and self._last is not None and not self._quiet:
            self._stream.write("\n")


def _read(path: str, array: str | None, what: str) -> np.ndarray:
    from workers.arrayfiles import detect_format, load_array
    from workers.geometry import InvalidInputError

    if not Path(path).is_file():
        raise CliError(f"{what}: no such file: {path}")
    try:
        return load_array(path, fmt=detect_format(path), name=array)
    except InvalidInputError as error:
        raise CliError(f"{what} {path}: {error.message}") from error


def _set_names(paths: Sequence[str], names: Sequence[str] | None) -> list[str]:
    if names:
        if len(names) != len(paths):
            raise CliError(f"--name was given {len(names)} times for {len(paths)} embedding files")
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


def _analyze(args: argparse.Namespace) -> int:
    import scipy.sparse as sp

    from workers.geometry import EmbeddingSet, InvalidInputError, analyze

    try:
        params = AnalysisParams(
            k=args.k,
            kernel=args.kernel,
            sigma=args.sigma,
            knn=args.knn,
            solver=args.solver,
            symmetrize=args.symmetrize,
            ignore_identical=args.ignore_identical,
            device=args.device,
            suspects_top=args.suspects_top,
            seed=args.seed,
        )
    except ValidationError as error:
        problems = [
            f"{'.'.join(map(str, item['loc'])) or 'params'}: {item['msg']}"
            for item in error.errors()
        ]
        raise CliError("; ".join(problems)) from error
    labels = None if args.labels is None else _read(args.labels, args.labels_array, "labels")
    ids = None if args.ids is None else _read(args.ids, args.ids_array, "ids")
    names = _set_names(args.embeddings, args.name)
    sets = [
        EmbeddingSet(
            name=name,
            embeddings=_read(path, args.array, "embeddings"),
            labels=labels,
            ids=ids,
        )
        for path, name in zip(args.embeddings, names, strict=True)
    ]
    progress = _Progress(quiet=args.quiet)
    try:
        result = analyze(sets, params=params, progress=progress)
    except InvalidInputError as error:
        raise CliError(str(error)) from error
    finally:
        progress.close()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.report.model_dump_json(indent=2))
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
            print(summary, file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnkgeo", description="Geometry of embeddings with NNK graphs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    analyze = commands.add_parser(
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
    analyze.add_argument("--k", type=int, default=50, help="candidates per point (default 50)")
    analyze.add_argument("--kernel", choices=["cosine", "gaussian"], default="cosine")
    analyze.add_argument("--sigma", type=float, help="fixed gaussian bandwidth")
    analyze.add_argument("--knn", choices=["exact", "approximate"], default="exact")
    analyze.add_argument("--solver", choices=["exact", "authors"], default="exact")
    analyze.add_argument("--symmetrize", choices=["nnk", "max", "min", "mean"], default="nnk")
    analyze.add_argument(
        "--ignore-identical", action="store_true", help="drop candidates identical to the query"
    )
    analyze.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    analyze.add_argument("--suspects-top", type=int, default=100)
    analyze.add_argument("--seed", type=int, default=0)
    analyze.add_argument("--out", required=True, help="where to write report.json")
    analyze.add_argument("--graph", help="write the symmetric graph A (scipy .npz)")
    analyze.add_argument("--directed-graph", help="write the directed graph W (scipy .npz)")
    analyze.add_argument("--quiet", action="store_true", help="no progress or summary")
    analyze.set_defaults(handler=_analyze)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except CliError as error:
        print(f"nnkgeo: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
