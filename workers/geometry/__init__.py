"""The pure numeric core of nnkgeo: NNK graphs and the geometric report.

Nothing in this package touches Redis, Celery, HTTP or files. Arrays in, arrays,
CSR graphs and pydantic report models out.
"""

from workers.geometry.analysis import (
    ALGORITHM_VERSION,
    Analysis,
    EmbeddingSet,
    ProgressCallback,
    SetAnalysis,
    analyze,
    analyze_set,
    check_set_shapes,
    validate_set,
)
from workers.geometry.errors import AnalysisCanceled, InvalidInputError, NNKGeoError

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
