"""The report as one self-contained HTML page, its plots drawn as inline SVG.

:func:`render_report_html` turns a :class:`api_schemas.Report` into a single HTML file
that loads nothing from anywhere: no script, no font, no image, no stylesheet link. The
page carries its own Content-Security-Policy (:data:`CONTENT_SECURITY_POLICY`), so a
saved copy stays offline too. Every user-provided string (set names, labels, ids,
warnings, extra facts) is escaped.

What the page shows (docs/ALGORITHM.md defines every metric):

- the headline numbers of every set side by side, and the four leave-one-out errors of
  every set as grouped bars;
- for several sets, the comparison as line charts over the sets in the order given;
- per set: the NNK degree histogram, homogeneity and LOO errors per class, a 2-D map of
  the embeddings coloured by label with the suspects ringed, and the suspects table.

Only numpy and the report models are needed, so the API process can render pages
without the analysis stack, and without reading any embeddings: each set's map is an
:class:`EmbeddingMap` computed where the embeddings are (:mod:`htmlreport.embedding_map`).

The modules, bottom up:

- :mod:`~htmlreport.text`: escaping, number formatting, shortening;
- :mod:`~htmlreport.svg`: ids, ticks, scales, legend, axes of an SVG chart;
- :mod:`~htmlreport.charts`: bar charts, line charts, the scatter map;
- :mod:`~htmlreport.projection`: the seeded randomized PCA (or UMAP) of the map;
- :mod:`~htmlreport.embedding_map`: the map of a set, computed, written and read;
- :mod:`~htmlreport.sections`: one module per section of the page;
- :mod:`~htmlreport.page`: the document, its stylesheet and its policy.
"""

from __future__ import annotations

from htmlreport.embedding_map import MAP_MAX_POINTS, EmbeddingMap
from htmlreport.page import CONTENT_SECURITY_POLICY, render_report_html
from htmlreport.sections.map_figure import NO_EMBEDDINGS_NOTE

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "MAP_MAX_POINTS",
    "NO_EMBEDDINGS_NOTE",
    "EmbeddingMap",
    "render_report_html",
]
