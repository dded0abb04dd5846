"""How the page names and colours the metrics that several of its sections show."""

from __future__ import annotations

from htmlreport.text import escaped, fmt

__all__ = [
    "FACT_NAMES",
    "FLAG_FACTS",
    "LOO_LINE_STYLES",
    "LOO_SERIES",
    "REGIME_TEXT",
    "UNCHARTED_FACTS",
    "fact_name",
    "fact_value",
    "regime_badge",
]

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

FACT_NAMES = {
    "parameters": "parameters",
    "seed": "training seed",
    "epochs": "epochs trained",
    "final_loss": "final loss",
    "train_accuracy": "training accuracy",
    "test_accuracy": "test accuracy",
    "fitted": "fitted",
    "width": "width",
    "depth": "hidden layers",
    "layer": "layer",
    "module": "module",
    "dropped_zero_rows": "rows dropped (all zero)",
}
"""How the page names the facts a set carries in ``extra`` (a study's or embed job's)."""

FLAG_FACTS = frozenset({"fitted"})
"""Facts that are a 0/1 flag: shown as yes or no, in a table, never as a line."""

UNCHARTED_FACTS = FLAG_FACTS | {"seed", "width", "depth"}
"""Facts the comparison never draws as a line: flags, the seed (a label, not a
quantity) and the architecture's own sizes (the sets are already in size order)."""


def fact_name(name: str) -> str:
    """A fact's name as the page shows it: in words, never in snake_case."""
    return FACT_NAMES.get(name, name.replace("_", " "))


def fact_value(name: str, value: float | int | str | None) -> str:
    """A fact's value as the page shows it: flags as yes or no, numbers formatted."""
    if name in FLAG_FACTS and isinstance(value, int | float) and value in (0, 1):
        return "yes" if value else "no"
    return fmt(value)


def regime_badge(regime: str) -> str:
    """A regime as a coloured badge: its name as the report spells it, its meaning on
    hover."""
    return (
        f'<span class="badge regime-{escaped(regime)}" title="{escaped(REGIME_TEXT[regime])}">'
        f"{escaped(regime)}</span>"
    )
