"""The page's last section: what each metric means, in a sentence or two.

docs/ALGORITHM.md defines every metric; this is the reader's short version.
"""

from __future__ import annotations

from htmlreport.text import escaped

__all__ = ["GUIDE", "guide_section"]

GUIDE: tuple[tuple[str, str], ...] = (
    (
        "NNK degree",
        "Number of NNK neighbours of each point, out of its k candidates: a proxy for the"
        " local intrinsic dimension.",
    ),
    (
        "LOO errors",
        "Leave-one-out label prediction from each point's neighbours (the point never its"
        " own candidate). NNK weighted uses the NNK weights; NNK unweighted a plain vote"
        " over the NNK neighbours; kNN weighted kernel weights over all k candidates; kNN"
        " majority a plain vote over all k. Soft NNK is the mean of 1 - p(true label).",
    ),
    (
        "Homogeneity",
        "Mean share of a point's NNK (or k) neighbours that carry its label. Pure patch"
        " fraction: share of points whose NNK neighbours all carry their label.",
    ),
    (
        "Cross-class edge fraction",
        "Weight of the symmetric graph's edges between different labels over all its"
        " weight (0 = perfectly smooth labels).",
    ),
    (
        "Reconstruction error",
        "How well each point is reconstructed from its NNK neighbours in the kernel space.",
    ),
    (
        "Intrinsic dimension",
        "Global estimates on the raw embeddings: TwoNN (Facco et al. 2017) and the"
        " Levina-Bickel MLE.",
    ),
    (
        "Regime",
        "homogeneous when both NNK LOO errors are at most 1 % (neighbourhoods are label-pure);"
        " weighted when only the weighted one is (only the NNK weights recover the labels);"
        " not interpolating otherwise (even NNK interpolation misses over 1 % of the labels).",
    ),
    (
        "Suspects",
        "Points whose NNK-weighted prediction disagrees with their label, ranked by"
        " 1 - p(label): candidates for label noise or ambiguous inputs.",
    ),
)


def guide_section() -> str:
    """The ``<section id="guide">`` element: each term of :data:`GUIDE` and its meaning."""
    items = "".join(f"<dt>{escaped(term)}</dt><dd>{escaped(text)}</dd>" for term, text in GUIDE)
    return (
        '<section id="guide"><h2>How to read this report</h2>'
        f'<dl class="guide">{items}</dl><p class="meta">The formulas behind each number:'
        " <code>docs/ALGORITHM.md</code> in the nnkgeo repository.</p></section>"
    )
