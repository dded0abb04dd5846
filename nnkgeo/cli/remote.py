"""The ``nnkgeo`` commands that talk to a running service, through :mod:`nnkgeo.client`.

``upload | datasets | submit | status | wait | report | graph | jobs | cancel`` (and
``check --job``, in :mod:`nnkgeo.cli.check`). Each takes ``--url`` and ``--api-key`` (default:
``NNKGEO_URL``, ``NNKGEO_API_KEY``) and prints for people by default, or the API's JSON
with ``--json`` (for scripts; progress bars and messages go to stderr, so stdout stays
parseable). Exit statuses: :mod:`nnkgeo.cli.outcome`.

``submit`` sends only the analysis flags the user gave, so that the service decides
every default.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_args

from pydantic import BaseModel

from api_schemas import DatasetList, DatasetOut, JobList, JobOut, JobStatus, SetReport
from api_schemas.datasets import DatasetFormat
from nnkgeo.cli.connection import connection_flags, with_client
from nnkgeo.cli.outcome import EXIT_CODES_EPILOG, EXIT_OK, CommandRefused, print_json
from nnkgeo.cli.param_flags import add_analysis_flags, given_analysis_params
from nnkgeo.errors import JobError, JobTimeoutError, problem_text

if TYPE_CHECKING:
    # The client (httpx) is imported when a command opens one (connection.client_for).
    from nnkgeo.client import Client

__all__ = ["add_remote_commands"]

T = TypeVar("T")

_Subparsers = argparse._SubParsersAction  # type: ignore[type-arg]


# --------------------------------------------------------------------------- the parsers


def add_remote_commands(subparsers: _Subparsers) -> None:
    """Add the service commands to the ``nnkgeo`` parser's subparsers.

    Parameters
    ----------
    subparsers
        What ``parser.add_subparsers()`` returned. Each command sets ``handler``, a
        function of the parsed arguments returning the exit status.
    """
    connection = connection_flags()
    waiting = _waiting_flags()
    _add_upload(subparsers, connection)
    _add_datasets(subparsers, connection)
    _add_submit(subparsers, connection, waiting)
    _add_status(subparsers, connection)
    _add_wait(subparsers, connection, waiting)
    _add_report(subparsers, connection)
    _add_graph(subparsers, connection)
    _add_jobs(subparsers, connection)
    _add_cancel(subparsers, connection)


def _waiting_flags() -> argparse.ArgumentParser:
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    waiting.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return waiting


def _add_upload(subparsers: _Subparsers, connection: argparse.ArgumentParser) -> None:
    upload = subparsers.add_parser(
        "upload",
        epilog=EXIT_CODES_EPILOG,
        parents=[connection],
        help="upload an array file (or a model file) to the service",
        description="Upload one file (streamed); the same bytes give the same dataset id.",
    )
    upload.add_argument(
        "file",
        help=".npy, .npz, .safetensors or .parquet; a model: .onnx, .pt2, or TorchScript "
        "with --format torchscript",
    )
    upload.add_argument(
        "--format", choices=list(get_args(DatasetFormat)), help="default: the suffix"
    )
    upload.add_argument("-q", "--quiet", action="store_true", help="print only the dataset id")
    upload.set_defaults(handler=with_client(_upload))


def _add_datasets(subparsers: _Subparsers, connection: argparse.ArgumentParser) -> None:
    datasets = subparsers.add_parser(
        "datasets",
        parents=[connection],
        help="list your uploaded datasets, newest first",
        description="One line per dataset: id, format, size, upload time and its arrays.",
        epilog=EXIT_CODES_EPILOG,
    )
    datasets.add_argument(
        "--limit", type=int, default=20, help="datasets per page (1-100, default 20)"
    )
    datasets.add_argument("--cursor", help="the next_cursor of the previous page")
    datasets.add_argument("--all", action="store_true", help="every page")
    datasets.set_defaults(handler=with_client(_datasets))


def _add_submit(
    subparsers: _Subparsers,
    connection: argparse.ArgumentParser,
    waiting: argparse.ArgumentParser,
) -> None:
    submit = subparsers.add_parser(
        "submit",
        epilog=EXIT_CODES_EPILOG,
        parents=[connection, waiting],
        help="submit an analysis job on uploaded datasets",
        description=(
            "Submit a job of one or more sets (compared in the order given). Params come "
            "from --params-json, then the flags, which override it; the service's defaults "
            "fill the rest."
        ),
    )
    submit.add_argument(
        "--set",
        dest="sets",
        action="append",
        required=True,
        metavar="NAME=EMB[:LABELS[:IDS]]",
        help="a set: dataset ids of its embeddings, labels and ids; DATASET/ARRAY names an "
        "array of a several-array dataset (repeatable)",
    )
    submit.add_argument(
        "--query",
        dest="queries",
        action="append",
        default=[],
        metavar="NAME=Q[:QY]",
        help="held-out points of set NAME: dataset ids of their embeddings and labels, "
        "each interpolated from the set (report: sets[].out_of_sample; repeatable)",
    )
    submit.add_argument("--params-json", metavar="JSON|@FILE", help="params as JSON, or @file.json")
    # No defaults here: a flag not given stays out of the request, and the service
    # fills it with its own default (which may differ from this client's version).
    add_analysis_flags(submit, with_defaults=False)
    submit.add_argument("--idempotency-key", help="the same key and body return the first job")
    submit.add_argument("--wait", action="store_true", help="wait for the job to finish")
    submit.add_argument("-q", "--quiet", action="store_true", help="print only the job id")
    submit.set_defaults(handler=with_client(_submit))


def _add_status(subparsers: _Subparsers, connection: argparse.ArgumentParser) -> None:
    status = subparsers.add_parser(
        "status", parents=[connection], help="a job's status and progress", epilog=EXIT_CODES_EPILOG
    )
    status.add_argument("job", metavar="JOB")
    status.set_defaults(handler=with_client(_status))


def _add_wait(
    subparsers: _Subparsers,
    connection: argparse.ArgumentParser,
    waiting: argparse.ArgumentParser,
) -> None:
    wait = subparsers.add_parser(
        "wait",
        epilog=EXIT_CODES_EPILOG,
        parents=[connection, waiting],
        help="wait for a job to finish",
        description="Exit 0 once it succeeded, 1 when it failed, was canceled or --timeout passed.",
    )
    wait.add_argument("job", metavar="JOB")
    wait.set_defaults(handler=with_client(_wait))


def _add_report(subparsers: _Subparsers, connection: argparse.ArgumentParser) -> None:
    report = subparsers.add_parser(
        "report",
        epilog=EXIT_CODES_EPILOG,
        parents=[connection],
        help="fetch a job's report",
        description="Print a summary of each set (--json: the report), and write files.",
    )
    report.add_argument("job", metavar="JOB")
    report.add_argument("--out", help="write the JSON report here")
    report.add_argument("--html", help="write the HTML report here")
    report.set_defaults(handler=with_client(_report))


def _add_graph(subparsers: _Subparsers, connection: argparse.ArgumentParser) -> None:
    graph = subparsers.add_parser(
        "graph",
        epilog=EXIT_CODES_EPILOG,
        parents=[connection],
        help="download a set's NNK graph (scipy .npz)",
        description="Stream the graph to a file; load it with scipy.sparse.load_npz.",
    )
    graph.add_argument("job", metavar="JOB")
    graph.add_argument("set", metavar="SET", help="the set's name")
    graph.add_argument("--out", required=True, help="where to write the .npz")
    graph.add_argument(
        "--kind",
        choices=["symmetric", "directed"],
        default="symmetric",
        help="the symmetric graph A (default) or the directed weights W",
    )
    graph.set_defaults(handler=with_client(_graph))


def _add_jobs(subparsers: _Subparsers, connection: argparse.ArgumentParser) -> None:
    jobs = subparsers.add_parser(
        "jobs", parents=[connection], help="list your jobs, newest first", epilog=EXIT_CODES_EPILOG
    )
    jobs.add_argument("--limit", type=int, default=20, help="jobs per page (1-100, default 20)")
    jobs.add_argument("--cursor", help="the next_cursor of the previous page")
    jobs.add_argument("--all", action="store_true", help="every page")
    jobs.set_defaults(handler=with_client(_jobs))


def _add_cancel(subparsers: _Subparsers, connection: argparse.ArgumentParser) -> None:
    cancel = subparsers.add_parser(
        "cancel", parents=[connection], help="cancel a job", epilog=EXIT_CODES_EPILOG
    )
    cancel.add_argument("job", metavar="JOB")
    cancel.set_defaults(handler=with_client(_cancel))


# --------------------------------------------------------------------------- commands


def _upload(args: argparse.Namespace, client: Client) -> int:
    dataset = client.upload(Path(args.file), format=args.format)
    if args.json:
        print_json(dataset)
    elif args.quiet:
        print(dataset.id)
    else:
        print(_describe_dataset(dataset))
    return EXIT_OK


def _describe_dataset(dataset: DatasetOut) -> str:
    return f"{dataset.id}  {dataset.format}  {dataset.size_bytes:,} bytes  {_arrays(dataset)}"


def _arrays(dataset: DatasetOut) -> str:
    return ", ".join(
        f"{array.name}: {array.dtype} [{', '.join(map(str, array.shape))}]"
        for array in dataset.arrays
    )


def _listing(
    args: argparse.Namespace,
    page: Callable[..., JobList | DatasetList],
    every: Callable[..., Iterator[T]],
) -> tuple[list[T], str | None]:
    """What ``jobs``/``datasets`` list: one page (--limit, --cursor), or every page (--all)."""
    if args.all:
        return list(every(page_size=100)), None
    found = page(limit=args.limit, cursor=args.cursor)
    return list(found.items), found.next_cursor


def _print_listing_json(listed: Sequence[BaseModel], next_cursor: str | None) -> None:
    print_json(
        {"items": [item.model_dump(mode="json") for item in listed], "next_cursor": next_cursor}
    )


def _datasets(args: argparse.Namespace, client: Client) -> int:
    listed, next_cursor = _listing(args, client.datasets, client.iter_datasets)
    if args.json:
        _print_listing_json(listed, next_cursor)
        return EXIT_OK
    for dataset in listed:
        print(
            f"{dataset.id}  {dataset.format:<11}  {dataset.size_bytes:>13,} bytes  "
            f"{dataset.created_at:%Y-%m-%d %H:%M:%S}  {_arrays(dataset)}".rstrip()
        )
    if next_cursor:
        print(f"more: nnkgeo datasets --cursor {next_cursor}", file=sys.stderr)
    return EXIT_OK


def _submit(args: argparse.Namespace, client: Client) -> int:
    sets = _with_queries([_parse_set(text) for text in args.sets], args.queries)
    job = client.submit(sets, _params(args), idempotency_key=args.idempotency_key)
    if args.wait:
        job = _wait_for(args, client, job.id)
    if args.json:
        print_json(job)
    elif args.quiet:
        print(job.id)
    else:
        print(_describe_job(job))
    return EXIT_OK


def _parse_set(text: str) -> dict[str, Any]:
    name, separator, inputs = text.partition("=")
    if not separator or not name or not inputs:
        raise CommandRefused(f"--set {text!r}: expected NAME=EMB[:LABELS[:IDS]]")
    parts = inputs.split(":")
    if len(parts) > 3 or not parts[0]:
        raise CommandRefused(f"--set {text!r}: expected NAME=EMB[:LABELS[:IDS]]")
    spec: dict[str, Any] = {"name": name}
    for role, part in zip(("embeddings", "labels", "ids"), parts, strict=False):
        if part:
            dataset, _, array = part.partition("/")
            spec[role] = {"dataset": dataset, **({"array": array} if array else {})}
    return spec


def _with_queries(sets: list[dict[str, Any]], queries: list[str]) -> list[dict[str, Any]]:
    """Each ``--query NAME=Q[:QY]`` as the ``query`` of the set it names."""
    by_name = {spec["name"]: spec for spec in sets}
    for text in queries:
        name, separator, inputs = text.partition("=")
        parts = inputs.split(":")
        if not separator or not parts[0] or len(parts) > 2:
            raise CommandRefused(f"--query {text!r}: expected NAME=Q[:QY]")
        if name not in by_name:
            raise CommandRefused(f"--query {text!r}: no --set named {name!r}")
        query: dict[str, Any] = {}
        for role, part in zip(("embeddings", "labels"), parts, strict=False):
            if part:
                dataset, _, array = part.partition("/")
                query[role] = {"dataset": dataset, **({"array": array} if array else {})}
        by_name[name]["query"] = query
    return sets


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.params_json:
        text = args.params_json
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        try:
            params = json.loads(text)
        except json.JSONDecodeError as error:
            raise CommandRefused(f"--params-json is not JSON: {error}") from None
        if not isinstance(params, dict):
            raise CommandRefused("--params-json must be a JSON object, e.g. '{\"k\": 30}'")
    return params | given_analysis_params(args)


def _wait_for(args: argparse.Namespace, client: Client, job_id: str) -> JobOut:
    try:
        return client.wait(job_id, timeout=args.timeout, progress=not args.no_progress)
    except (JobError, JobTimeoutError) as error:
        if args.json:
            print_json(error.job)
        raise
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"stopped waiting; job {job_id} goes on (nnkgeo cancel {job_id} stops it)"
        ) from None


def _status(args: argparse.Namespace, client: Client) -> int:
    job = client.job(args.job)
    if args.json:
        print_json(job)
    else:
        print(_describe_job(job))
    return EXIT_OK


def _describe_job(job: JobOut) -> str:
    line = f"{job.id}  {job.status.value}"
    if job.cached:
        line += " (cached)"
    if job.status is JobStatus.running:
        line += f"  {job.progress.stage} {job.progress.fraction:.0%}"
    line += f"  created {job.created_at:%Y-%m-%d %H:%M:%S}"
    if job.error is not None:
        line += f"\n  error: {problem_text(job.error, 'cli')}"
    return line


def _wait(args: argparse.Namespace, client: Client) -> int:
    job = _wait_for(args, client, args.job)
    if args.json:
        print_json(job)
    else:
        print(_describe_job(job))
    return EXIT_OK


def _report(args: argparse.Namespace, client: Client) -> int:
    report = client.report(args.job)
    if args.out:
        _write_text(Path(args.out), report.model_dump_json(indent=2))
    if args.html:
        path = Path(args.html)
        path.parent.mkdir(parents=True, exist_ok=True)
        client.report_html(args.job, path)
    if args.json:
        print_json(report)
        return EXIT_OK
    for set_report in report.sets:
        print(_summarize_set(set_report))
    for path in (args.out, args.html):
        if path:
            print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def _summarize_set(set_report: SetReport) -> str:
    line = (
        f"{set_report.name}: N={set_report.n_points} d={set_report.dim} "
        f"NNK degree {set_report.nnk_degree.mean:.2f}"
    )
    if set_report.loo_error is not None and set_report.homogeneity is not None:
        line += (
            f", LOO error NNK {set_report.loo_error.nnk_weighted:.4f} / unweighted "
            f"{set_report.loo_error.nnk_unweighted:.4f} / kNN "
            f"{set_report.loo_error.knn_unweighted:.4f}, pure patches "
            f"{set_report.homogeneity.pure_patch_fraction:.3f}, regime {set_report.regime}"
        )
    return line


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _graph(args: argparse.Namespace, client: Client) -> int:
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    client.save_graph(args.job, args.set, path, kind=args.kind)
    size = path.stat().st_size
    if args.json:
        print_json(
            {
                "job": args.job,
                "set": args.set,
                "kind": args.kind,
                "path": str(path),
                "size_bytes": size,
            }
        )
    else:
        print(f"wrote {path}: the {args.kind} graph of set {args.set} ({size:,} bytes)")
    return EXIT_OK


def _jobs(args: argparse.Namespace, client: Client) -> int:
    listed, next_cursor = _listing(args, client.jobs, client.iter_jobs)
    if args.json:
        _print_listing_json(listed, next_cursor)
        return EXIT_OK
    for job in listed:
        stage = (
            f"{job.progress.stage} {job.progress.fraction:.0%}"
            if job.status is JobStatus.running
            else ""
        )
        cached = "cached" if job.cached else ""
        print(
            f"{job.id}  {job.status.value:<9}  {job.created_at:%Y-%m-%d %H:%M:%S}  "
            f"{cached:<6}  {stage}".rstrip()
        )
    if next_cursor:
        print(f"more: nnkgeo jobs --cursor {next_cursor}", file=sys.stderr)
    return EXIT_OK


def _cancel(args: argparse.Namespace, client: Client) -> int:
    job = client.cancel(args.job)
    if args.json:
        print_json(job)
    elif job.status is JobStatus.canceled:
        print(f"{job.id}  canceled")
    else:
        print(f"{job.id}  {job.status.value}: cancel requested; it stops at its next checkpoint")
    return EXIT_OK
