"""Pydantic models shared by the nnkgeo service, its workers and its clients.

This package imports nothing but pydantic and the standard library, so that a
client can depend on it without pulling in FastAPI, Celery, torch or numpy. Requests
refuse unknown fields, responses keep them (:mod:`api_schemas.base`); the Standard
Webhooks scheme the service signs its events with is part of the contract too
(:mod:`api_schemas.webhooks`).
"""

from api_schemas.datasets import ArrayInfo, DatasetList, DatasetOut, DatasetRef
from api_schemas.health import Health, Readiness
from api_schemas.jobs import (
    CompareSpec,
    DriftSetSpec,
    DriftSpec,
    EmbeddingSetSpec,
    JobCreate,
    JobLinks,
    JobList,
    JobOut,
    JobProgress,
    JobStatus,
)
from api_schemas.params import AnalysisParams, ReportedParams
from api_schemas.problems import Problem
from api_schemas.quantiles import QuantileStats
from api_schemas.report import (
    REPORT_SCHEMA_VERSION,
    ClassMetrics,
    Comparison,
    DegreeStats,
    GraphStats,
    Homogeneity,
    IntrinsicDimension,
    LabelSmoothness,
    LooError,
    Report,
    SetReport,
    Suspect,
    Timings,
)

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "AnalysisParams",
    "ArrayInfo",
    "ClassMetrics",
    "CompareSpec",
    "Comparison",
    "DatasetList",
    "DatasetOut",
    "DatasetRef",
    "DegreeStats",
    "DriftSetSpec",
    "DriftSpec",
    "EmbeddingSetSpec",
    "GraphStats",
    "Health",
    "Homogeneity",
    "IntrinsicDimension",
    "JobCreate",
    "JobLinks",
    "JobList",
    "JobOut",
    "JobProgress",
    "JobStatus",
    "LabelSmoothness",
    "LooError",
    "Problem",
    "QuantileStats",
    "Readiness",
    "Report",
    "ReportedParams",
    "SetReport",
    "Suspect",
    "Timings",
]
