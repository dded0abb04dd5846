"""How the page names and colours the metrics that several of its sections show."""

from __future__ import annotations

__all__ = ["LOO_LINE_STYLES", "LOO_SERIES", "REGIME_TEXT"]

LOO_SERIES: tuple[tuple[str, str, str], ...] = (
    ("nnk_weighted", "NNK weighted", "#2f6ea8"),
    ("nnk_unweighted", "NNK unweighted", "#8fbce6"),
    ("knn_weighted", "kNN weighted", "#e07b24"),
    ("knn_unweighted", "kNN majority", "#f6c28b"),
)
"""The four LOO errors: field, legend name, colour (NNK blues, kNN oranges)."""

LOO_LINE_STYLES = (("#2f6ea8", ""), ("#6a9fd4", "6 3"), ("#e07b24", ""), ("#eba061", "6 3"))
"""The LOO errors as lines: NNK blue, kNN orange; weighted solid, unweighted dashed."""

REGIME_TEXT = {
    "homogeneous": "homogeneous: NNK and its unweighted variant both interpolate the labels",
    "weighted": "weighted: NNK interpolates only with its weights",
    "not_interpolating": "not interpolating: NNK LOO error above 1 %",
}
"""What each regime means, as a set's card says it; a regime named here gets a badge."""
