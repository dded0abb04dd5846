"""The pure numeric core of nnkgeo: NNK graphs and the geometric report.

Nothing in this package touches Redis, Celery, HTTP or files. Arrays in, arrays,
CSR graphs and pydantic report models out.

The analysis entry points are imported lazily: the API process needs only the
errors and the shape checks, and must not pay for importing torch and faiss.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from workers.geometry.errors import AnalysisCanceled, InvalidInputError, NNKGeoError
from workers.geometry.validation import check_set_shapes
from workers.geometry.version import ALGORITHM_VERSION

if TYPE_CHECKING:
    from workers.geometry.analysis import (
        Analysis,
        EmbeddingSet,
        ProgressCallback,
        SetAnalysis,
        analyze,
        analyze_set,
        validate_set,
    )

_LAZY = {
    "Analysis",
    "EmbeddingSet",
    "ProgressCallback",
    "SetAnalysis",
    "analyze",
    "analyze_set",
    "validate_set",
}

__all__ = [
    "ALGORITHM_VERSION",
    "Analysis",
    "AnalysisCanceled",
    "EmbeddingSet",
    "InvalidInputError",
    "NNKGeoError",
    "ProgressCallback",
    "SetAnalysis",
    "analyze",
    "analyze_set",
    "check_set_shapes",
    "validate_set",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(import_module("workers.geometry.analysis"), name)
    raise AttributeError(f"module 'workers.geometry' has no attribute {name!r}")
