"""Report assembly: a job's report, and the comparison across sets, from the set reports."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from api_schemas import AnalysisParams, Comparison, Report, SetReport
from jobstate.version import ALGORITHM_VERSION
from workers.geometry.compare import consecutive_overlap

# The scalar metrics a comparison follows across sets, as dotted paths into SetReport.
COMPARED_METRICS: tuple[str, ...] = (
    "n_points",
    "dim",
    "n_classes",
    "graph.n_edges_directed",
    "graph.n_edges_symmetric",
    "graph.duplicate_pairs",
    "graph.isolated",
    "nnk_degree.mean",
    "nnk_degree.median",
    "nnk_degree.p10",
    "nnk_degree.p90",
    "nnk_degree.max",
    "loo_error.nnk_weighted",
    "loo_error.nnk_unweighted",
    "loo_error.knn_weighted",
    "loo_error.knn_unweighted",
    "loo_error.soft_nnk_weighted",
    "homogeneity.nnk_mean",
    "homogeneity.knn_mean",
    "homogeneity.pure_patch_fraction",
    "reconstruction_error.mean",
    "reconstruction_error.median",
    "intrinsic_dimension.twonn",
    "intrinsic_dimension.mle",
    "label_smoothness.cross_class_edge_fraction",
    "regime",
    "out_of_sample.error.nnk_weighted",
    "out_of_sample.error.nnk_unweighted",
    "out_of_sample.error.knn_weighted",
    "out_of_sample.error.knn_unweighted",
    "neural_collapse.nc1",
    "baselines.linear_probe.error",
)


def _lookup(report: SetReport, path: str) -> float | int | str | None:
    value: object = report
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value  # type: ignore[return-value]


def _same_points(
    set_reports: Sequence[SetReport], point_ids: Sequence[np.ndarray | None] | None
) -> bool:
    """Every set has as many points, and the same ids where consecutive sets have ids.

    A model job drops a layer's zero rows (``extra.dropped_zero_rows``): its sets can
    hold different points, told apart by their ids.
    """
    if len({report.n_points for report in set_reports}) != 1:
        return False
    ids = list(point_ids or ())
    return all(
        first is None or second is None or np.array_equal(first, second)
        for first, second in itertools.pairwise(ids)
    )


def comparison(
    set_reports: Sequence[SetReport],
    graphs: Sequence[sp.spmatrix] | None = None,
    point_ids: Sequence[np.ndarray | None] | None = None,
) -> Comparison:
    """Each compared metric as a series over the sets, in the order given.

    Facts a set carries in ``extra`` (a study's parameter count, train accuracy) are
    series too, under ``extra.<name>``. With the sets' directed graphs, and when the sets
    hold the same points (as many, with the same ``point_ids`` where given: layers,
    checkpoints), the mean Jaccard overlap of each set's NNK neighbourhoods with the next
    set's is ``overlap_consecutive``.
    """
    series: dict[str, list[float | int | str | None]] = {
        path: [_lookup(report, path) for report in set_reports] for path in COMPARED_METRICS
    }
    extra_names = sorted({name for report in set_reports for name in report.extra})
    for name in extra_names:
        series[f"extra.{name}"] = [report.extra.get(name) for report in set_reports]
    overlap = (
        [float(value) for value in consecutive_overlap(graphs)]
        if graphs is not None and len(graphs) > 1 and _same_points(set_reports, point_ids)
        else None
    )
    return Comparison(
        sets=[report.name for report in set_reports],
        series=series,
        overlap_consecutive=overlap,
    )


def assemble_report(
    set_reports: Sequence[SetReport],
    *,
    params: AnalysisParams,
    job_id: str | None = None,
    graphs: Sequence[sp.spmatrix] | None = None,
    point_ids: Sequence[np.ndarray | None] | None = None,
) -> Report:
    """The report of a job from its sets' reports, compared when there are several.

    Every path that makes a report ends here: :func:`workers.geometry.analysis.analyze`,
    and the assembly of a sharded job, which measures its sets from joined blocks.

    Parameters
    ----------
    set_reports : sequence of SetReport
        One per set, in the job's order (the comparison's order).
    params : AnalysisParams
        The parameters every set was analysed with.
    job_id : str, optional
        The job the report belongs to.
    graphs : sequence of sparse matrices, optional
        The sets' directed NNK graphs W, in the same order, for
        ``comparison.overlap_consecutive``.
    point_ids : sequence of (ndarray or None), optional
        The sets' point ids, in the same order: sets whose ids differ hold different
        points, and get no ``overlap_consecutive``.

    Returns
    -------
    Report
        Stamped with :data:`~jobstate.version.ALGORITHM_VERSION`.
    """
    return Report(
        job_id=job_id,
        algorithm_version=ALGORITHM_VERSION,
        params=params,
        sets=list(set_reports),
        comparison=comparison(set_reports, graphs, point_ids) if len(set_reports) > 1 else None,
    )
