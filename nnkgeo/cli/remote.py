"""The ``nnkgeo`` subcommands that talk to a running service, through :mod:`nnkgeo.client`.

``upload | submit | status | wait | report | graph | jobs | cancel | check``. Each takes
``--url`` and ``--api-key`` (default: ``NNKGEO_URL``, ``NNKGEO_API_KEY``) and prints
for people by default, or the API's JSON with ``--json`` (for scripts; progress bars
and messages go to stderr, so stdout stays parseable).

Exit status:

- 0: done (``check``: every threshold holds).
- 1: asked right, but it failed: the job failed or was canceled, ``wait`` timed out,
  the service answered 5xx or could not be reached, or (``check``) a threshold fails.
- 2: cannot be done as asked: bad options, an unreadable local file, a report without
  the metric asked for, or a 4xx answer (invalid input, unknown id, wrong API key).

Every error is one line on stderr: ``nnkgeo: error: ...``.

The commands are added to the ``nnkgeo`` parser by :func:`add_remote_commands`;
:func:`main` runs them alone (``python -m nnkgeo.cli.remote``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from api_schemas import DatasetOut, JobOut, JobStatus, Report, SetReport
from nnkgeo.cli.param_flags import add_analysis_flags, given_analysis_params
from nnkgeo.client import Client, UploadFormat
from nnkgeo.errors import (
    JobError,
    JobTimeoutError,
    NNKGeoClientError,
    NNKGeoHTTPError,
    ServiceUnreachableError,
    UsageError,
)

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "add_remote_commands", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

LOO_METRICS = (
    "nnk_weighted",
    "nnk_unweighted",
    "knn_weighted",
    "knn_unweighted",
    "soft_nnk_weighted",
)


class _Refused(Exception):
    """A request the command cannot carry out as given: one line, exit status 2."""


# --------------------------------------------------------------------------- the parser


def add_remote_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the service commands to the ``nnkgeo`` parser's subparsers.

    Parameters
    ----------
    subparsers
        What ``parser.add_subparsers()`` returned. Each command sets ``handler``, a
        function of the parsed arguments returning the exit status.
    """
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", help="service URL (default: $NNKGEO_URL)")
    connection.add_argument("--api-key", help="API key (default: $NNKGEO_API_KEY)")
    connection.add_argument(
        "--json", action="store_true", help="print the API's JSON on stdout, for scripts"
    )
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    waiting.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    upload = subparsers.add_parser(
        "upload",
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
        "--format", choices=list(get_args(UploadFormat)), help="default: the suffix"
    )
    upload.add_argument("-q", "--quiet", action="store_true", help="print only the dataset id")
    upload.set_defaults(handler=_with_client(_upload))

    submit = subparsers.add_parser(
        "submit",
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
    submit.add_argument("--params-json", metavar="JSON|@FILE", help="params as JSON, or @file.json")
    add_analysis_flags(submit, with_defaults=False)
    submit.add_argument("--idempotency-key", help="the same key and body return the first job")
    submit.add_argument("--wait", action="store_true", help="wait for the job to finish")
    submit.add_argument("-q", "--quiet", action="store_true", help="print only the job id")
    submit.set_defaults(handler=_with_client(_submit))

    status = subparsers.add_parser(
        "status", parents=[connection], help="a job's status and progress"
    )
    status.add_argument("job", metavar="JOB")
    status.set_defaults(handler=_with_client(_status))

    wait = subparsers.add_parser(
        "wait",
        parents=[connection, waiting],
        help="wait for a job to finish",
        description="Exit 0 once it succeeded, 1 when it failed, was canceled or --timeout passed.",
    )
    wait.add_argument("job", metavar="JOB")
    wait.set_defaults(handler=_with_client(_wait))

    report = subparsers.add_parser(
        "report",
        parents=[connection],
        help="fetch a job's report",
        description="Print a summary of each set (--json: the report), and write files.",
    )
    report.add_argument("job", metavar="JOB")
    report.add_argument("--out", help="write the JSON report here")
    report.add_argument("--html", help="write the HTML report here")
    report.set_defaults(handler=_with_client(_report))

    graph = subparsers.add_parser(
        "graph",
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
    graph.set_defaults(handler=_with_client(_graph))

    jobs = subparsers.add_parser("jobs", parents=[connection], help="list your jobs, newest first")
    jobs.add_argument("--limit", type=int, default=20, help="jobs per page (1-100, default 20)")
    jobs.add_argument("--cursor", help="the next_cursor of the previous page")
    jobs.add_argument("--all", action="store_true", help="every page")
    jobs.set_defaults(handler=_with_client(_jobs))

    cancel = subparsers.add_parser("cancel", parents=[connection], help="cancel a job")
    cancel.add_argument("job", metavar="JOB")
    cancel.set_defaults(handler=_with_client(_cancel))

    check = subparsers.add_parser(
        "check",
        parents=[connection],
        help="exit 1 when a report misses a threshold (CI gates)",
        description=(
            "Check each set of a report against thresholds; print which set and metric "
            "fail, and exit 1 if any does (0 if all hold, 2 if a metric is missing)."
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
        "--set", dest="set_names", action="append", help="check only this set (repeatable)"
    )
    check.set_defaults(handler=_guarded(_check))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one service command, as ``nnkgeo`` would; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="nnkgeo", description="Talk to an nnkgeo service: upload, submit, wait, report."
    )
    add_remote_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


# --------------------------------------------------------------------------- error handling

_Handler = Callable[[argparse.Namespace], int]


def _guarded(command: _Handler) -> _Handler:
    """Run a command, turning every expected error into one line and an exit status."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyboardInterrupt as interrupt:
            _error(str(interrupt) or "interrupted")
            return EXIT_INTERRUPTED
        except FileNotFoundError as error:
            _error(f"no such file: {error.filename}")
            return EXIT_USAGE
        except (_Refused, UsageError, OSError) as error:
            _error(str(error))
            return EXIT_USAGE
        except (JobError, JobTimeoutError, ServiceUnreachableError) as error:
            _error(str(error))
            return EXIT_FAILED
        except NNKGeoHTTPError as error:
            _error(str(error))
            return EXIT_USAGE if error.status < 500 else EXIT_FAILED
        except NNKGeoClientError as error:
            _error(str(error))
            return EXIT_FAILED

    return handler


def _with_client(command: Callable[[argparse.Namespace, Client], int]) -> _Handler:
    def run(args: argparse.Namespace) -> int:
        with _client(args) as client:
            return command(args, client)

    return _guarded(run)


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.api_key)


def _error(message: str) -> None:
    print(f"nnkgeo: error: {' '.join(message.split())}", file=sys.stderr)


def _print_json(value: BaseModel | dict[str, Any] | list[Any]) -> None:
    if isinstance(value, BaseModel):
        print(value.model_dump_json(indent=2))
    else:
        print(json.dumps(value, indent=2, default=str))


# --------------------------------------------------------------------------- commands


def _upload(args: argparse.Namespace, client: Client) -> int:
    dataset = client.upload(Path(args.file), format=args.format)
    if args.json:
        _print_json(dataset)
    elif args.quiet:
        print(dataset.id)
    else:
        print(_describe_dataset(dataset))
    return EXIT_OK


def _describe_dataset(dataset: DatasetOut) -> str:
    arrays = ", ".join(
        f"{array.name}: {array.dtype} [{', '.join(map(str, array.shape))}]"
        for array in dataset.arrays
    )
    return f"{dataset.id}  {dataset.format}  {dataset.size_bytes:,} bytes  {arrays}"


def _submit(args: argparse.Namespace, client: Client) -> int:
    sets = [_parse_set(text) for text in args.sets]
    job = client.submit(sets, _params(args), idempotency_key=args.idempotency_key)
    if args.wait:
        job = _wait_for(args, client, job.id)
    if args.json:
        _print_json(job)
    elif args.quiet:
        print(job.id)
    else:
        print(_describe_job(job))
    return EXIT_OK


def _parse_set(text: str) -> dict[str, Any]:
    name, separator, inputs = text.partition("=")
    if not separator or not name or not inputs:
        raise _Refused(f"--set {text!r}: expected NAME=EMB[:LABELS[:IDS]]")
    parts = inputs.split(":")
    if len(parts) > 3 or not parts[0]:
        raise _Refused(f"--set {text!r}: expected NAME=EMB[:LABELS[:IDS]]")
    spec: dict[str, Any] = {"name": name}
    for role, part in zip(("embeddings", "labels", "ids"), parts, strict=False):
        if part:
            dataset, _, array = part.partition("/")
            spec[role] = {"dataset": dataset, **({"array": array} if array else {})}
    return spec


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.params_json:
        text = args.params_json
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        try:
            params = json.loads(text)
        except json.JSONDecodeError as error:
            raise _Refused(f"--params-json is not JSON: {error}") from None
        if not isinstance(params, dict):
            raise _Refused("--params-json must be a JSON object, e.g. '{\"k\": 30}'")
    return params | given_analysis_params(args)


def _wait_for(args: argparse.Namespace, client: Client, job_id: str) -> JobOut:
    try:
        return client.wait(job_id, timeout=args.timeout, progress=not args.no_progress)
    except (JobError, JobTimeoutError) as error:
        if args.json:
            _print_json(error.job)
        raise
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"stopped waiting; job {job_id} goes on (nnkgeo cancel {job_id} stops it)"
        ) from None


def _status(args: argparse.Namespace, client: Client) -> int:
    job = client.job(args.job)
    if args.json:
        _print_json(job)
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
        line += f"\n  error: {job.error.title}: {job.error.detail or ''}"
        for field_error in job.error.errors or []:
            line += f"\n  {field_error.field}: {field_error.message}"
    return line


def _wait(args: argparse.Namespace, client: Client) -> int:
    job = _wait_for(args, client, args.job)
    if args.json:
        _print_json(job)
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
        _print_json(report)
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
        _print_json(
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
    if args.all:
        listed, next_cursor = list(client.iter_jobs(page_size=100)), None
    else:
        page = client.jobs(limit=args.limit, cursor=args.cursor)
        listed, next_cursor = page.items, page.next_cursor
    if args.json:
        _print_json(
            {
                "items": [job.model_dump(mode="json") for job in listed],
                "next_cursor": next_cursor,
            }
        )
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
        _print_json(job)
    elif job.status is JobStatus.canceled:
        print(f"{job.id}  canceled")
    else:
        print(f"{job.id}  {job.status.value}: cancel requested; it stops at its next checkpoint")
    return EXIT_OK


# --------------------------------------------------------------------------- check


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
        raise _Refused(
            f"the report has no set {', '.join(map(repr, unknown))} "
            f"(its sets: {', '.join(available)})"
        )
    verdicts = [
        _verdict(set_report, threshold)
        for set_report in report.sets
        if set_report.name in chosen
        for threshold in thresholds
    ]
    failed = [verdict for verdict in verdicts if not verdict.passed]
    if args.json:
        _print_json({"passed": not failed, "checks": [asdict(verdict) for verdict in verdicts]})
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
    if not thresholds:
        raise _Refused("no threshold given: use --max-loo-error, --min-pure-patch, --max or --min")
    return thresholds


def _parse_bound(text: str, *, option: str, upper: bool) -> _Threshold:
    metric, separator, bound = text.partition("=")
    try:
        value = float(bound)
    except ValueError:
        value = math.nan
    if not separator or not metric or math.isnan(value):
        raise _Refused(f"{option} {text!r}: expected METRIC=NUMBER, e.g. nnk_degree.mean=12")
    return _Threshold(metric, value, upper=upper)


def _report_to_check(args: argparse.Namespace) -> Report:
    if (args.report is None) == (args.job is None):
        raise _Refused("give either a REPORT file or --job ID")
    if args.job is not None:
        with _client(args) as client:
            return client.report(args.job)
    path = Path(args.report)
    try:
        return Report.model_validate_json(path.read_bytes())
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "report"
        raise _Refused(f"{path} is not an nnkgeo report ({where}: {first['msg']})") from None


def _verdict(set_report: SetReport, threshold: _Threshold) -> _Verdict:
    value: Any = set_report
    for part in threshold.metric.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if value is None:
            hint = " (the set has no labels)" if part in ("loo_error", "homogeneity") else ""
            raise _Refused(f"set {set_report.name!r} has no metric {threshold.metric}{hint}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Refused(f"{threshold.metric} is not a number in set {set_report.name!r}")
    return _Verdict(
        set=set_report.name,
        metric=threshold.metric,
        value=float(value),
        operator="<=" if threshold.upper else ">=",
        threshold=threshold.bound,
        passed=threshold.holds(float(value)),
    )


if __name__ == "__main__":
    raise SystemExit(main())
