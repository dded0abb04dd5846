"""Log an nnkgeo report into an MLflow run: headline metrics, tags, and the report as artifacts.

Install with ``pip install 'nnkgeo[mlflow]'`` (``mlflow-skinny`` with SQLAlchemy and
Alembic, so MLflow's default local store, ``sqlite:///mlflow.db``, works without a
server). An existing ``mlflow`` or ``mlflow-skinny`` install (2.10 or later) works too,
without the extra. MLflow is imported when :func:`log_report` is first called, never by
``import nnkgeo`` or by importing this module.

What is logged, for ``prefix="nnkgeo"`` and a set named ``layer4``:

- metrics ``nnkgeo.layer4.loo_error.{nnk_weighted,nnk_unweighted,knn_weighted,
  knn_unweighted,soft_nnk_weighted}``, ``nnkgeo.layer4.homogeneity.{nnk_mean,knn_mean,
  pure_patch_fraction}``, ``nnkgeo.layer4.nnk_degree.{mean,median}``,
  ``nnkgeo.layer4.reconstruction_error.{mean,median}``,
  ``nnkgeo.layer4.intrinsic_dimension.{twonn,mle}`` and
  ``nnkgeo.layer4.label_smoothness.cross_class_edge_fraction`` (those that the report
  has: without labels there are no LOO errors, homogeneity or label smoothness), each at
  ``step``;
- tags ``nnkgeo.layer4.regime``, ``nnkgeo.algorithm_version``, ``nnkgeo.job_id`` (when
  the report came from the service) and ``nnkgeo.params.<name>`` for each analysis
  parameter that is set;
- artifacts ``nnkgeo/report.json`` (and ``nnkgeo/report.html``), or
  ``nnkgeo/step_<step>/report.json`` when ``step`` is given, so a training loop keeps
  every report.

Set names are made safe for MLflow keys: every character other than ASCII letters,
digits, ``_ - .`` and space becomes ``_`` (``resnet/layer4:out`` is logged as
``resnet_layer4_out``, and the original name is kept in the tag
``nnkgeo.<safe name>.name``).
"""

from __future__ import annotations

import importlib
import json
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from api_schemas.report import Homogeneity, LooError, Report, SetReport

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["headline_metrics", "log_report"]

INSTALL_HINT = "pip install 'nnkgeo[mlflow]'"

# MLflow's own limits on one log_batch request.
_MAX_METRICS_PER_BATCH = 1000
_MAX_TAGS_PER_BATCH = 100
_MAX_TAG_VALUE = 8000

_DATABASE_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql"}

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]")
_UNSAFE_WITH_SLASH = re.compile(r"[^A-Za-z0-9_.\- /]")


def log_report(
    report: Report | Mapping[str, Any] | str | Path,
    *,
    html: str | Path | bool | None = None,
    prefix: str = "nnkgeo",
    step: int | None = None,
    run_id: str | None = None,
) -> None:
    """Log a report's headline metrics, tags and JSON (and HTML page) into an MLflow run.

    Parameters
    ----------
    report
        The :class:`~api_schemas.report.Report`, its JSON as a dict, its JSON text, or the
        path of a ``report.json`` file (a ``str`` that starts with ``{`` is JSON text).
    html
        The HTML page to log beside the JSON as ``report.html``: a path to the page, the
        page itself (a ``str`` that starts with ``<``), or ``True`` to render it from the
        report with :func:`htmlreport.render_report_html` (without the 2-D
        embedding map, which needs the embeddings). ``None`` or ``False``: JSON only.
    prefix
        The first part of every metric and tag name, and the artifact folder.
        ``""`` logs ``layer4.loo_error.nnk_weighted`` and the artifacts at the root.
    step
        The step of every metric (an epoch, say): call once per evaluation in a training
        loop and MLflow plots each metric over the steps. With a step the artifacts go to
        ``<prefix>/step_<step>/``, so no report overwrites another.
    run_id
        Log into this run (active, or finished: it is not reopened or ended). Without it,
        into the active run (``mlflow.start_run()``); with no run active, a run is started,
        in the current experiment, and left active, as ``mlflow.log_metric`` does, so that
        later calls log into the same run; end it with ``mlflow.end_run()``.

    The tracking store is MLflow's: ``mlflow.set_tracking_uri`` or ``MLFLOW_TRACKING_URI``
    (by default ``sqlite:///mlflow.db`` in the working directory).

    Raises
    ------
    ImportError
        MLflow is not installed (the message says ``pip install 'nnkgeo[mlflow]'``).
    FileNotFoundError, pydantic.ValidationError
        The report (or the HTML file) cannot be read, or is not a report.
    """
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise TypeError(f"step must be an int or None, not {type(step).__name__}")
    parsed = _as_report(report)
    page = _html_bytes(html, parsed)
    metrics, tags = headline_metrics(parsed, prefix=prefix)

    mlflow = _import_mlflow()
    _check_store_client(mlflow.get_tracking_uri())
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    if run_id is None:
        active = mlflow.active_run() or mlflow.start_run()
        run_id = active.info.run_id
    client = MlflowClient()

    timestamp = int(time.time() * 1000)
    metric_entities = [Metric(key, value, timestamp, step or 0) for key, value in metrics.items()]
    tag_entities = [RunTag(key, value[:_MAX_TAG_VALUE]) for key, value in tags.items()]
    for start in range(0, len(metric_entities), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metric_entities[start : start + _MAX_METRICS_PER_BATCH])
    for start in range(0, len(tag_entities), _MAX_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=tag_entities[start : start + _MAX_TAGS_PER_BATCH])

    folder = _safe_prefix(prefix)
    if step is not None:
        folder = f"{folder}/step_{step}" if folder else f"step_{step}"
    with tempfile.TemporaryDirectory(prefix="nnkgeo-mlflow-") as staging:
        staged = Path(staging)
        (staged / "report.json").write_text(parsed.model_dump_json(indent=2), encoding="utf-8")
        if page is not None:
            (staged / "report.html").write_bytes(page)
        client.log_artifacts(run_id, staging, artifact_path=folder or None)


def headline_metrics(
    report: Report | Mapping[str, Any] | str | Path, *, prefix: str = "nnkgeo"
) -> tuple[dict[str, float], dict[str, str]]:
    """The metrics and tags :func:`log_report` logs, as two dicts of MLflow-safe names.

    Needs no MLflow: use it to send the same numbers to another tracker.
    """
    parsed = _as_report(report)
    head = _safe_prefix(prefix)
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {"algorithm_version": parsed.algorithm_version}
    if parsed.job_id is not None:
        tags["job_id"] = parsed.job_id
    for name, value in parsed.params.model_dump().items():
        if value is not None:
            tags[f"params.{name}"] = json.dumps(value) if not isinstance(value, str) else value

    used: set[str] = set()
    for set_report in parsed.sets:
        safe = _unique(_UNSAFE.sub("_", set_report.name) or "_", used)
        for key, value in _set_metrics(set_report).items():
            metrics[f"{safe}.{key}"] = value
        if set_report.regime is not None:
            tags[f"{safe}.regime"] = set_report.regime
        if safe != set_report.name:
            tags[f"{safe}.name"] = set_report.name
    return (
        {_join(head, key): value for key, value in metrics.items()},
        {_join(head, key): value for key, value in tags.items()},
    )


def _set_metrics(set_report: SetReport) -> dict[str, float]:
    values: dict[str, float | None] = {}
    if set_report.loo_error is not None:
        for field in LooError.model_fields:
            value = getattr(set_report.loo_error, field)
            # The errors, not their [low, high] intervals (a metric is one number).
            if isinstance(value, int | float):
                values[f"loo_error.{field}"] = value
    if set_report.homogeneity is not None:
        for field in Homogeneity.model_fields:
            values[f"homogeneity.{field}"] = getattr(set_report.homogeneity, field)
    values["nnk_degree.mean"] = set_report.nnk_degree.mean
    values["nnk_degree.median"] = set_report.nnk_degree.median
    values["reconstruction_error.mean"] = set_report.reconstruction_error.mean
    values["reconstruction_error.median"] = set_report.reconstruction_error.median
    values["intrinsic_dimension.twonn"] = set_report.intrinsic_dimension.twonn
    values["intrinsic_dimension.mle"] = set_report.intrinsic_dimension.mle
    if set_report.label_smoothness is not None:
        values["label_smoothness.cross_class_edge_fraction"] = (
            set_report.label_smoothness.cross_class_edge_fraction
        )
    if set_report.neural_collapse is not None:
        values["neural_collapse.nc1"] = set_report.neural_collapse.nc1
    if set_report.out_of_sample is not None and set_report.out_of_sample.error is not None:
        for field, value in set_report.out_of_sample.error.model_dump().items():
            values[f"out_of_sample.error.{field}"] = value
    return {key: float(value) for key, value in values.items() if value is not None}


def _as_report(report: Report | Mapping[str, Any] | str | Path) -> Report:
    if isinstance(report, Report):
        return report
    if isinstance(report, Mapping):
        return Report.model_validate(dict(report))
    if isinstance(report, str) and report.lstrip().startswith("{"):
        return Report.model_validate_json(report)
    if isinstance(report, str | Path):
        return Report.model_validate_json(Path(report).read_text(encoding="utf-8"))
    raise TypeError(
        "report must be a Report, a dict, JSON text or the path of a report.json, "
        f"not {type(report).__name__}"
    )


def _html_bytes(html: str | Path | bool | None, report: Report) -> bytes | None:
    if html is None or html is False:
        return None
    if html is True:
        try:
            from htmlreport import render_report_html
        except ImportError as error:
            raise ImportError(
                f"html=True needs htmlreport, which could not be imported ({error}); "
                "pass the HTML page's path or text instead"
            ) from error
        return render_report_html(report).encode("utf-8")
    if isinstance(html, str) and html.lstrip().startswith("<"):
        return html.encode("utf-8")
    if isinstance(html, str | Path):
        return Path(html).read_bytes()
    raise TypeError(f"html must be a path, the page's text, True or None, not {type(html)}")


def _import_mlflow() -> ModuleType:
    try:
        return importlib.import_module("mlflow")
    except ImportError as error:
        raise ImportError(
            f"nnkgeo.integrations.mlflow needs MLflow, which could not be imported "
            f"({error}). Install it with: {INSTALL_HINT}"
        ) from error


def _check_store_client(tracking_uri: str) -> None:
    """A database store (MLflow's default is ``sqlite:///mlflow.db``) needs SQLAlchemy.

    ``mlflow-skinny`` alone lacks it and then fails with an unhelpful "unsupported URI".
    """
    scheme = urlparse(tracking_uri).scheme.split("+")[0]
    if scheme not in _DATABASE_SCHEMES:
        return
    try:
        importlib.import_module("sqlalchemy")
        importlib.import_module("alembic")
    except ImportError as error:
        raise ImportError(
            f"the MLflow tracking store {tracking_uri} needs SQLAlchemy and Alembic, which "
            f"could not be imported ({error}). Install them with: {INSTALL_HINT}, or point "
            "MLFLOW_TRACKING_URI at a tracking server (http://...)"
        ) from error


def _safe_prefix(prefix: str) -> str:
    """The prefix with unsafe characters replaced; slashes kept, as path segments."""
    segments = _UNSAFE_WITH_SLASH.sub("_", prefix).split("/")
    return "/".join("_" if part == ".." else part for part in segments if part not in ("", "."))


def _unique(name: str, used: set[str]) -> str:
    candidate, number = name, 2
    while candidate in used:
        candidate, number = f"{name}_{number}", number + 1
    used.add(candidate)
    return candidate


def _join(head: str, key: str) -> str:
    return f"{head}.{key}" if head else key
