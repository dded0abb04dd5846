"""The 2-D map of a set's embeddings that the report page draws: computed once, kept small.

The map is computed where the embeddings are: by the worker at the end of a job, which
stores it as a blob living as long as the job's graphs, or by ``nnkgeo analyze --html``
on the user's machine. :mod:`htmlreport` only draws it, so the API that serves
the page never reads a set's embeddings.

What is kept is exactly what the page draws: a seeded sample of at most
:data:`MAP_MAX_POINTS` points (the suspects always in), their 2-D coordinates, their
labels as the page prints them, and how they were projected (:mod:`htmlreport.projection`).
Only numpy is needed.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

from api_schemas.report import REPORT_MAP_MAX_POINTS
from htmlreport.projection import project_to_2d

__all__ = [
    "MAP_FILE_MAX_BYTES",
    "MAP_MAX_POINTS",
    "EmbeddingMap",
    "compute_embedding_map",
    "read_embedding_map",
    "sample_rows",
    "write_embedding_map",
]

MAP_MAX_POINTS = REPORT_MAP_MAX_POINTS

MAP_SEED = 0
"""Seed of the sample and of the randomized PCA: the same inputs give the same map."""

MAP_FILE_MAX_BYTES = 16 * 1024 * 1024
"""The most a map file may hold, decompressed, for :func:`read_embedding_map` to read it.

A map of :data:`MAP_MAX_POINTS` points takes about 100 kB; long label strings add
their length (four bytes a character) once per distinct label.
"""

_FORMAT_VERSION = 1


@dataclass(frozen=True)
class EmbeddingMap:
    """A set's 2-D map, as the report page draws it.

    Attributes
    ----------
    rows : ndarray of shape (m,), int64
        The point indices drawn, strictly increasing.
    xy : ndarray of shape (m, 2), float64
        The 2-D coordinates of those points.
    labels : tuple of str, optional
        The label of each drawn point as the page prints it; None when the set has none.
    method : str
        "PCA" or "UMAP".
    x_title, y_title : str
        The axis titles.
    note : str
        How the points were projected, for the figure's note.
    """

    rows: np.ndarray
    xy: np.ndarray
    labels: tuple[str, ...] | None
    method: str
    x_title: str
    y_title: str
    note: str


def sample_rows(
    n: int, keep: Sequence[int], limit: int = MAP_MAX_POINTS, seed: int = MAP_SEED
) -> np.ndarray:
    """The point indices to draw: all of them up to ``limit``, else a seeded sample.

    Parameters
    ----------
    n : int
        Number of points in the set.
    keep : sequence of int
        Points always drawn (the suspects); indices outside ``[0, n)`` are ignored.
    limit : int
        At most this many indices (unless ``keep`` alone holds more).
    seed : int
        Seed of the sample.

    Returns
    -------
    ndarray of shape (m,), int64
        Sorted, distinct point indices.
    """
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    keep_set = np.unique(np.asarray([i for i in keep if 0 <= i < n], dtype=np.int64))
    rng = np.random.default_rng(seed)
    rest = np.setdiff1d(np.arange(n), keep_set, assume_unique=True)
    extra = rng.choice(rest, size=max(limit - keep_set.size, 0), replace=False)
    return np.sort(np.concatenate([keep_set, extra])).astype(np.int64)


def compute_embedding_map(
    embeddings: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    suspects: Sequence[int] = (),
    max_points: int = MAP_MAX_POINTS,
    seed: int = MAP_SEED,
    projection: Literal["pca", "auto"] = "pca",
) -> EmbeddingMap:
    """A set's 2-D map of a seeded sample: PCA (the service's, with a fixed seed), or
    with ``projection="auto"`` UMAP when ``umap`` is importable (a local report).

    Parameters
    ----------
    embeddings : ndarray of shape (n, d)
        The set's embeddings, n >= 2. A memory-mapped array is fine: only the sampled
        rows are read.
    labels : ndarray of shape (n,), optional
        The set's labels; ignored when their length is not n.
    suspects : sequence of int
        Point indices always drawn (the report's suspects).
    max_points : int
        At most this many points are drawn (unless there are more suspects).
    seed : int
        Seed of the sample and of the projection.
    projection : {"pca", "auto"}
        PCA, or UMAP when it is installed.

    Returns
    -------
    EmbeddingMap

    Raises
    ------
    ValueError
        When ``embeddings`` is not 2-D or has fewer than 2 rows.
    """
    shape = getattr(embeddings, "shape", ())
    if len(shape) != 2 or shape[0] < 2:
        raise ValueError(f"embeddings must be 2-D with at least 2 rows, not of shape {shape}")
    n = int(shape[0])
    rows = sample_rows(n, suspects, max_points, seed)
    # Fancy indexing reads only the sampled rows of a memory-mapped array; the sample is
    # small, so float64 costs little and keeps PCA of float16 inputs accurate.
    sample = np.asarray(embeddings[rows], dtype=np.float64)
    sample = np.where(np.isfinite(sample), sample, 0.0)
    xy, method, x_title, y_title, note = project_to_2d(sample, seed=seed, projection=projection)
    drawn_labels = None
    if labels is not None and len(labels) == n:
        drawn_labels = tuple(str(label) for label in np.asarray(labels[rows]).tolist())
    return EmbeddingMap(
        rows=rows,
        xy=xy,
        labels=drawn_labels,
        method=method,
        x_title=x_title,
        y_title=y_title,
        note=note,
    )


def write_embedding_map(file: BinaryIO, embedding_map: EmbeddingMap) -> None:
    """Write a map as an ``.npz`` file that :func:`read_embedding_map` reads.

    Labels are kept once per distinct value (with a code per point): a set's few labels
    repeated over thousands of points would otherwise dominate the file.
    """
    arrays: dict[str, np.ndarray] = {
        "format_version": np.asarray(_FORMAT_VERSION, dtype=np.int64),
        "rows": np.asarray(embedding_map.rows, dtype=np.int64),
        "xy": np.asarray(embedding_map.xy, dtype=np.float64),
        "method": np.asarray(embedding_map.method, dtype=np.str_),
        "x_title": np.asarray(embedding_map.x_title, dtype=np.str_),
        "y_title": np.asarray(embedding_map.y_title, dtype=np.str_),
        "note": np.asarray(embedding_map.note, dtype=np.str_),
    }
    if embedding_map.labels is not None:
        names = sorted(set(embedding_map.labels))
        code_of = {name: code for code, name in enumerate(names)}
        arrays["label_names"] = np.asarray(names, dtype=np.str_).reshape(len(names))
        arrays["label_codes"] = np.asarray(
            [code_of[label] for label in embedding_map.labels], dtype=np.int64
        )
    np.savez_compressed(file, **arrays)  # type: ignore[arg-type]


def read_embedding_map(file: BinaryIO) -> EmbeddingMap:
    """Read a map written by :func:`write_embedding_map`, checking its structure.

    Parameters
    ----------
    file : binary file
        Open for reading and seekable, at the start of the map. Its arrays are read
        whole, and only when they hold at most :data:`MAP_FILE_MAX_BYTES` together.

    Returns
    -------
    EmbeddingMap

    Raises
    ------
    ValueError
        When the file is not such a map (not an ``.npz``, too large, another format
        version, arrays of the wrong shape or dtype, or pickled objects).
    """
    try:
        with zipfile.ZipFile(file) as archive:
            # A small compressed file can inflate to any size: bound what np.load reads.
            inflated = sum(member.file_size for member in archive.infolist())
        if inflated > MAP_FILE_MAX_BYTES:
            raise ValueError(f"holds {inflated} bytes, more than {MAP_FILE_MAX_BYTES}")
        file.seek(0)
        with np.load(file, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"not a map file: {error}") from None

    def text(name: str) -> str:
        value = arrays.get(name)
        if value is None or value.shape != () or value.dtype.kind != "U":
            raise ValueError(f"map file: {name!r} is not a string")
        return str(value)

    version = arrays.get("format_version")
    if version is None or version.shape != () or int(version) != _FORMAT_VERSION:
        raise ValueError(f"map file: format version {version}, expected {_FORMAT_VERSION}")
    rows, xy = arrays.get("rows"), arrays.get("xy")
    if rows is None or rows.ndim != 1 or rows.dtype != np.int64:
        raise ValueError("map file: 'rows' is not a 1-D int64 array")
    if rows.size and (rows[0] < 0 or np.any(np.diff(rows) <= 0)):
        raise ValueError("map file: 'rows' are not increasing point indices")
    if xy is None or xy.shape != (rows.size, 2) or xy.dtype != np.float64:
        raise ValueError("map file: 'xy' is not a float64 array of one (x, y) per row")
    labels = None
    if "label_names" in arrays or "label_codes" in arrays:
        names, codes = arrays.get("label_names"), arrays.get("label_codes")
        if names is None or names.ndim != 1 or names.dtype.kind != "U":
            raise ValueError("map file: 'label_names' is not a 1-D string array")
        if codes is None or codes.shape != rows.shape or codes.dtype != np.int64:
            raise ValueError("map file: 'label_codes' is not one int64 per row")
        if codes.size and (codes.min() < 0 or codes.max() >= names.size):
            raise ValueError("map file: 'label_codes' name no label")
        name_list = names.tolist()
        labels = tuple(name_list[code] for code in codes.tolist())
    return EmbeddingMap(
        rows=rows,
        xy=xy,
        labels=labels,
        method=text("method"),
        x_title=text("x_title"),
        y_title=text("y_title"),
        note=text("note"),
    )
