"""A set's 2-D map figure: the embeddings projected, coloured by label, suspects ringed.

The map itself (PCA of a seeded sample; a local report uses UMAP when ``umap`` is
installed) is an :class:`~htmlreport.embedding_map.EmbeddingMap`: given ready-made (the
service's worker stores one per set), or computed here from the embeddings when they are
given (``nnkgeo analyze --html``). Without either, the figure is a note saying why.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from api_schemas import SetReport
from htmlreport.charts import scatter_map
from htmlreport.embedding_map import EmbeddingMap, compute_embedding_map
from htmlreport.svg import ElementIds
from htmlreport.text import escaped

__all__ = ["CLASS_COLOURS", "NO_EMBEDDINGS_NOTE", "map_figure", "map_of_set"]

CLASS_COLOURS = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#79706e",
)
"""Label colours (Tableau 10); further labels get evenly spread hues."""


def _class_colour(position: int) -> str:
    """The colour of the label at ``position`` in the legend's order."""
    if position < len(CLASS_COLOURS):
        return CLASS_COLOURS[position]
    hue = (position * 137.508) % 360
    return f"hsl({hue:.0f},55%,50%)"


NO_EMBEDDINGS_NOTE = "Not available: the embeddings were not given when this page was rendered."
"""What a set's map figure says when the page was given neither its map nor its embeddings."""


def _map_of_embeddings(
    set_report: SetReport, embeddings: np.ndarray, labels: np.ndarray | None
) -> EmbeddingMap | str:
    """The map of a set computed here from its embeddings, or why it cannot be."""
    shape = getattr(embeddings, "shape", ())
    if len(shape) != 2 or shape[0] != set_report.n_points or shape[0] < 2:
        return (
            f"Not drawn: the embeddings given have shape {tuple(shape)}, the report"
            f" {set_report.n_points:,} points."
        )
    # A local report keeps using UMAP where the user installed it.
    return compute_embedding_map(
        embeddings, labels, suspects=[s.index for s in set_report.suspects], projection="auto"
    )


def map_figure(ids: ElementIds, set_report: SetReport, embedding_map: EmbeddingMap | str) -> str:
    """The map figure of one set, or a short note on why there is none.

    Parameters
    ----------
    ids : ElementIds
        The page's element ids; the map takes the next one.
    set_report : SetReport
        The set's report: its point count, classes (the legend's order) and suspects.
    embedding_map : EmbeddingMap or str
        The map to draw (from :func:`map_of_set`), or the note to show instead. A map
        naming points the report does not have is not drawn.

    Returns
    -------
    str
        A ``<figure>`` element.
    """
    n = set_report.n_points
    if isinstance(embedding_map, EmbeddingMap):
        rows = embedding_map.rows
        fits = (
            rows.ndim == 1
            and embedding_map.xy.shape == (rows.size, 2)
            and (embedding_map.labels is None or len(embedding_map.labels) == rows.size)
            and (rows.size == 0 or (int(rows.min()) >= 0 and int(rows.max()) < n))
        )
        if not fits:
            embedding_map = "Not drawn: the stored map names points the report does not have."
    if isinstance(embedding_map, str):
        return (
            '<figure><figcaption>2-D map of the embeddings</figcaption><p class="note">'
            f"{escaped(embedding_map)}</p></figure>"
        )
    rows, xy, method = embedding_map.rows, embedding_map.xy, embedding_map.method
    x_title, y_title, note = embedding_map.x_title, embedding_map.y_title, embedding_map.note
    suspects = {s.index: s for s in set_report.suspects if 0 <= s.index < n}
    if embedding_map.labels is not None:
        groups = list(embedding_map.labels)
        order = [str(c.label) for c in set_report.per_class]
        order += sorted(set(groups) - set(order))
    else:
        groups = ["point"] * rows.size
        order = ["point"]
    colours = {name: _class_colour(i) for i, name in enumerate(order)}
    if embedding_map.labels is None:
        colours["point"] = "#7f8c99"
    ringed = np.isin(rows, list(suspects))
    ring_titles = {}
    for row in np.flatnonzero(ringed):
        suspect = suspects[int(rows[row])]
        ident = f" (id {suspect.id})" if suspect.id is not None else ""
        ring_titles[int(row)] = (
            f"suspect #{suspect.index}{ident}: label {suspect.label}, predicted"
            f" {suspect.predicted}, score {suspect.score:.3f}"
        )
    sampled = (
        f"a seeded sample of {rows.size:,} of {n:,} points"
        if rows.size < n
        else (f"all {n:,} points")
    )
    desc = (
        f"{method} projection of {sampled} of set {set_report.name}, coloured by label;"
        f" {int(ringed.sum())} suspects ringed in black."
    )
    svg = scatter_map(
        ids,
        title=f"2-D map ({method}) of set {set_report.name}",
        desc=desc,
        xy=xy,
        groups=groups,
        colours=colours,
        ringed=ringed,
        ring_titles=ring_titles,
        x_title=x_title,
        y_title=y_title,
    )
    return (
        f"<figure><figcaption>2-D map of the embeddings ({escaped(method)})</figcaption>{svg}"
        f'<p class="note">{escaped(note)}; {escaped(sampled)}; suspects ringed (hover for details).'
        "</p></figure>"
    )


def map_of_set(
    set_report: SetReport,
    *,
    maps: Mapping[str, EmbeddingMap] | None,
    map_notes: Mapping[str, str] | None,
    embeddings: Mapping[str, np.ndarray] | None,
    labels: Mapping[str, np.ndarray] | None,
) -> EmbeddingMap | str:
    """What the set's map figure shows: its given map, else one computed from its given
    embeddings, else the note on why there is none.

    Parameters
    ----------
    set_report : SetReport
        The set's report.
    maps, map_notes, embeddings, labels : mapping of set name, optional
        As :func:`htmlreport.render_report_html` takes them.

    Returns
    -------
    EmbeddingMap or str
        The map, or the note (by default :data:`NO_EMBEDDINGS_NOTE`).
    """
    name = set_report.name
    if maps is not None and name in maps:
        return maps[name]
    if embeddings is not None and name in embeddings:
        return _map_of_embeddings(
            set_report, embeddings[name], None if labels is None else labels.get(name)
        )
    return (map_notes or {}).get(name, NO_EMBEDDINGS_NOTE)
