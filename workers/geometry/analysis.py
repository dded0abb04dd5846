"""One analysis end to end: validate, search candidates, solve, assemble, measure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from api_schemas import AnalysisParams, Report, SetReport

# Bump when a change alters any number a report holds: the result cache keys on it.
ALGORITHM_VERSION = "1"

ProgressCallback = Callable[[str, float], None]
"""Called as ``progress(stage, fraction)``; may raise AnalysisCanceled to stop the run."""


@dataclass(frozen=True)
class EmbeddingSet:
    """One set of embeddings to analyse (a layer, or a model's output)."""

    name: str
    embeddings: np.ndarray
    labels: np.ndarray | None = None
    ids: np.ndarray | None = None
    extra: dict[str, float | int | str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class SetAnalysis:
    report: SetReport
    directed: sp.csr_matrix
    symmetric: sp.csr_matrix


@dataclass(frozen=True)
class Analysis:
    report: Report
    sets: dict[str, SetAnalysis]


def check_set_shapes(
    *,
    name: str,
    embeddings_shape: Sequence[int],
    embeddings_dtype: str,
    labels_shape: Sequence[int] | None,
    labels_dtype: str | None,
    ids_shape: Sequence[int] | None,
    params: AnalysisParams,
) -> None:
    raise NotImplementedError


def validate_set(embedding_set: EmbeddingSet, *, params: AnalysisParams) -> None:
    raise NotImplementedError


def analyze_set(
    embedding_set: EmbeddingSet,
    *,
    params: AnalysisParams,
    progress: ProgressCallback | None = None,
) -> SetAnalysis:
    raise NotImplementedError


def analyze(
    sets: Sequence[EmbeddingSet],
    *,
    params: AnalysisParams,
    job_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> Analysis:
    raise NotImplementedError
