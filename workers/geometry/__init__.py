"""The pure numeric core of nnkgeo: NNK graphs and the geometric report.

Nothing in this package touches Redis, Celery, HTTP or files. Arrays in, arrays,
CSR graphs and pydantic report models out.

Importing it loads the engine (numpy, scipy, faiss; numba when the CPU solve first
runs; torch only for a GPU, the "authors" solver, or without numba): the API process
never does. The errors, shape checks, memory budget and ALGORITHM_VERSION that the API shares
with the engine live in `jobstate`, and are re-exported here for the engine's users.
"""

from __future__ import annotations

from jobstate.checks import check_set_shapes
from jobstate.errors import AnalysisCanceled, InvalidInputError, NNKGeoError
from jobstate.version import ALGORITHM_VERSION
from workers.geometry.analysis import (
    Analysis,
    EmbeddingSet,
    ProgressCallback,
    SetAnalysis,
    analyze,
    analyze_set,
    validate_set,
)

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
