"""Embedding sets from a model and a dataset: one set per layer, in depth order."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from api_schemas import AnalysisParams
from api_schemas.models import DatasetSplit, EmbedSpec
from workers.geometry.analysis import EmbeddingSet, ProgressCallback
from workers.models.datasets import LabelledData, split_dataset
from workers.models.extraction import LayerTap, extract_embeddings
from workers.models.loading import LoadedModel
from workers.models.sandbox.runner import SandboxedModel

__all__ = ["drop_zero_rows", "embed_sets", "embedding_set"]


def drop_zero_rows(
    embeddings: np.ndarray, labels: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Remove points whose embedding is exactly zero, and count them.

    A ReLU layer maps some points to the zero vector (every unit inactive), which has no
    direction: the cosine kernel is undefined on it and the analysis refuses it. Such
    points are dropped from the set; ``extra["dropped_zero_rows"]`` says how many, and
    the remaining points keep their ids.
    """
    keep = embeddings.any(axis=1)
    dropped = int((~keep).sum())
    if not dropped:
        return embeddings, labels, ids, 0
    return embeddings[keep], labels[keep], ids[keep], dropped


def embedding_set(
    name: str,
    embeddings: np.ndarray,
    data: LabelledData,
    *,
    params: AnalysisParams | None,
    extra: dict[str, float | int | str | None],
) -> EmbeddingSet:
    """An :class:`EmbeddingSet` of ``data``'s points, without zero rows under cosine."""
    labels, ids = data.labels, data.ids
    facts = dict(extra)
    if params is None or params.kernel == "cosine":
        embeddings, labels, ids, dropped = drop_zero_rows(embeddings, labels, ids)
        facts["dropped_zero_rows"] = dropped
    return EmbeddingSet(name=name, embeddings=embeddings, labels=labels, ids=ids, extra=facts)


def _layer_facts(tap: LayerTap) -> dict[str, float | int | str | None]:
    return {"layer": tap.name, "module": tap.module, "read": tap.where}


def embed_sets(
    spec: EmbedSpec,
    *,
    model: LoadedModel | SandboxedModel,
    dataset: LabelledData,
    params: AnalysisParams | None = None,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> list[EmbeddingSet]:
    """Embed a dataset with a model: one :class:`EmbeddingSet` per layer, in depth order.

    Parameters
    ----------
    spec : EmbedSpec
        The layers, pooling, batch size and subset (``dataset`` and ``model`` in it
        have already been resolved into the next two arguments).
    model : LoadedModel or SandboxedModel
        From :func:`workers.models.loading.load_model`; a sandboxed model is run in its
        confined child process.
    dataset : LabelledData
        From :func:`workers.models.datasets.load_dataset`, whole: ``spec.subset``
        picks the part to embed.
    params : AnalysisParams, optional
        The analysis to come; under the cosine kernel (and when None) points embedded
        as exactly zero are dropped (see :func:`drop_zero_rows`).
    device : {"cpu", "cuda", "auto"}
        Where the forward passes run.
    progress : callable, optional
        ``progress("embed", fraction)``; may raise to cancel.

    Returns
    -------
    list of EmbeddingSet
        Named after the layers (``"penultimate"`` for that selection), with the
        dataset's labels and ids and ``extra`` = {"layer", "module", "read",
        "dropped_zero_rows"}.
    """
    if spec.subset == "all":
        points = dataset
    else:
        parts = split_dataset(dataset, split=spec.dataset.split or DatasetSplit())
        points = parts.train if spec.subset == "train" else parts.test
    report: Callable[[float], None] | None = (
        None if progress is None else lambda fraction: progress("embed", fraction)
    )
    layers = spec.layers
    extract = (
        model.extract if isinstance(model, SandboxedModel) else partial(extract_embeddings, model)
    )
    extracted = extract(
        points.inputs,
        layers=layers,
        pooling=spec.pooling,
        batch_size=spec.batch_size,
        device=device,
        progress=report,
        field="embed.layers",
    )
    return [
        embedding_set(tap.name, embeddings, points, params=params, extra=_layer_facts(tap))
        for tap, embeddings in extracted
    ]
