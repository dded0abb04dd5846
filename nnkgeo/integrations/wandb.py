"""Log an nnkgeo report into a Weights & Biases run: headline metrics, comparison plots, suspects.

Install with ``pip install 'nnkgeo[wandb]'`` (or any ``wandb`` 0.17 or later). W&B is
imported when :func:`log_report` is first called, never by ``import nnkgeo`` or by
importing this module.

What one call logs, in one ``run.log`` step, for sets ``pixels`` and ``layer4``:

- the headline metrics of each set under ``<set>/<metric>``: ``pixels/loo_error.nnk_weighted``,
  ``pixels/homogeneity.pure_patch_fraction``, ``pixels/nnk_degree.mean``,
  ``pixels/intrinsic_dimension.twonn``... (the numbers the MLflow integration logs; those
  the report has: without labels there are no LOO errors or homogeneity), and each set's
  regime in the run summary as ``<set>/regime``;
- the comparison across sets, when the report has two sets or more: one line plot per
  headline metric, ``comparison/<metric>`` (``wandb.plot.line`` of the metric over the
  sets in the report's order; its table, ``comparison/<metric>_table``, has the columns
  ``set_index``, ``set`` and the metric);
- the suspects of every set as one ``wandb.Table`` under ``suspects``, with the columns
  ``set``, ``index``, ``id``, ``label``, ``predicted`` and ``score``;
- the run config ``nnkgeo`` = ``{algorithm_version, job_id, params}``.

With ``prefix="val"`` every key starts with ``val/``. A set named ``comparison`` or
``suspects``, or two sets whose names differ only in characters W&B keys cannot hold
(``/``), are logged under a distinct name (``comparison_2``); the original names stay in
the tables' ``set`` column.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api_schemas.report import Report

# The same headline numbers, parsing and name uniqueness as the MLflow integration, so the
# two trackers show one report alike.
from nnkgeo.integrations.mlflow import _as_report, _set_metrics, _unique

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["SUSPECT_COLUMNS", "log_report"]

INSTALL_HINT = "pip install 'nnkgeo[wandb]'"
SUSPECT_COLUMNS = ("set", "index", "id", "label", "predicted", "score")
_RESERVED = ("comparison", "suspects")


def log_report(
    report: Report | Mapping[str, Any] | str | Path,
    run: Any = None,
    *,
    prefix: str = "",
    step: int | None = None,
) -> Any:
    """Log a report's headline metrics, comparison plots and suspects into a W&B run.

    Parameters
    ----------
    report
        The :class:`~api_schemas.report.Report`, its JSON as a dict, its JSON text, or the
        path of a ``report.json`` file.
    run
        The ``wandb`` run to log into. ``None``: the active run (``wandb.run``), or, when
        none is active, a new one from ``wandb.init()`` (configured by ``WANDB_PROJECT``,
        ``WANDB_MODE`` and the other W&B variables), left running so that later calls log
        into it; end it with ``run.finish()``.
    prefix
        A section every key goes under (``"val"`` logs ``val/pixels/nnk_degree.mean``);
        ``""`` logs ``pixels/nnk_degree.mean``.
    step
        The W&B step of the metrics (an epoch, say; W&B needs it to increase from call to
        call). ``None``: the run's next step.

    Returns
    -------
    wandb.sdk.wandb_run.Run
        The run logged into.

    Raises
    ------
    ImportError
        wandb is not installed (the message says ``pip install 'nnkgeo[wandb]'``).
    FileNotFoundError, pydantic.ValidationError
        The report cannot be read, or is not a report.
    """
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise TypeError(f"step must be an int or None, not {type(step).__name__}")
    parsed = _as_report(report)
    wandb = _import_wandb()
    if run is None:
        run = wandb.run if wandb.run is not None else wandb.init()
    head = "/".join(part for part in prefix.strip("/").split("/") if part)

    def key(*parts: str) -> str:
        return "/".join((head, *parts) if head else parts)

    payload: dict[str, Any] = {}
    used: set[str] = set(_RESERVED)
    safe_names: list[str] = []
    regimes: dict[str, str] = {}
    for set_report in parsed.sets:
        # "/" would nest a set's section inside another's.
        safe = _unique(set_report.name.replace("/", "_") or "_", used)
        safe_names.append(safe)
        for metric, value in _set_metrics(set_report).items():
            payload[key(safe, metric)] = value
        if set_report.regime is not None:
            regimes[key(safe, "regime")] = set_report.regime

    if parsed.comparison is not None:
        for metric, values in _comparison_series(parsed).items():
            table = wandb.Table(
                columns=["set_index", "set", metric],
                data=[[i, name, value] for i, (name, value) in enumerate(values)],
                allow_mixed_types=True,
            )
            payload[key("comparison", metric)] = wandb.plot.line(
                table, "set_index", metric, title=f"{metric} across sets"
            )

    payload[key("suspects")] = wandb.Table(
        columns=list(SUSPECT_COLUMNS),
        data=[
            [set_report.name, s.index, s.id, s.label, s.predicted, s.score]
            for set_report in parsed.sets
            for s in set_report.suspects
        ],
        # Labels are ints in one report and strings in another; ids may be missing.
        allow_mixed_types=True,
    )

    run.config.update(
        {
            key("nnkgeo"): {
                "algorithm_version": parsed.algorithm_version,
                "job_id": parsed.job_id,
                "params": parsed.params.model_dump(mode="json", exclude_none=True),
            }
        },
        # A training loop logs one report per epoch into the same run.
        allow_val_change=True,
    )
    run.log(payload, step=step)
    for name, regime in regimes.items():
        run.summary[name] = regime
    return run


def _comparison_series(report: Report) -> dict[str, list[tuple[str, float | None]]]:
    """Each headline metric's value per set, in the report's order (None where missing)."""
    assert report.comparison is not None
    headline: dict[str, None] = {}
    for set_report in report.sets:
        headline.update(dict.fromkeys(_set_metrics(set_report)))
    series: dict[str, list[tuple[str, float | None]]] = {}
    for metric, values in report.comparison.series.items():
        if metric not in headline:
            continue
        series[metric] = [
            (name, float(value) if isinstance(value, int | float) else None)
            for name, value in zip(report.comparison.sets, values, strict=True)
        ]
    return series


def _import_wandb() -> ModuleType:
    try:
        return importlib.import_module("wandb")
    except ImportError as error:
        raise ImportError(
            f"nnkgeo.integrations.wandb needs Weights & Biases, which could not be imported "
            f"({error}). Install it with: {INSTALL_HINT}"
        ) from error
