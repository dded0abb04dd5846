"""The summary of a per-point quantity, one model for every report section that has one."""

from __future__ import annotations

from api_schemas.base import ResponseModel


class QuantileStats(ResponseModel):
    mean: float
    median: float
    p10: float
    p90: float
    max: float
