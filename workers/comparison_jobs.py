"""The last step of compare and drift jobs, on both paths (one task, or sharded).

A compare or drift job runs as a sets job (its sets analysed, in one task or in row
blocks); once the analysis is assembled, this adds the report's ``compare`` or ``drift``
section (:mod:`workers.geometry.comparison_report`). A drift job's current points are
read here, and solved against the reference in this task.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobstate.records import JobRecord
from workers.geometry import Analysis, EmbeddingSet
from workers.geometry.comparison_report import add_comparison_sections
from workers.geometry.drift_statistics import DEFAULT_THRESHOLD
from workers.inputs import load_set
from workers.runtime import WorkerRuntime


def add_job_sections(
    runtime: WorkerRuntime, job: JobRecord, analysis: Analysis, *, sets: Sequence[EmbeddingSet]
) -> Analysis:
    """The job's analysis with its compare or drift section; other jobs' unchanged."""
    spec = job.spec
    if not spec.compare and spec.drift is None:
        return analysis
    current = None
    if spec.drift is not None:
        current = load_set(
            runtime.blobs, spec.drift.current, max_array_bytes=runtime.settings.array_limit_bytes
        )
    return add_comparison_sections(
        analysis,
        sets,
        params=spec.params,
        compare_sets=spec.compare,
        current=current,
        threshold=spec.drift.threshold if spec.drift is not None else DEFAULT_THRESHOLD,
        n_threads=runtime.threads,
    )
