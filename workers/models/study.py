"""The model-size study of Shekkizhar & Ortega (GSP 2023), as embedding sets.

For each model of a family, smallest first: build it from a fixed seed, train it until
it classifies every training point correctly (or ``max_epochs`` pass), then embed the
*training* set at the selected layers. The paper relates generalisation to the geometry
of the data a model has fitted, so the training points are the ones analysed; the
held-out split only gives the test accuracy reported beside the geometry.

The sets come out in size order, each model's layers in depth order, with the model's
facts in ``extra`` (parameter count, epochs, accuracies, whether it fitted), so that
``workers.geometry.analyze`` on them gives a report whose ``comparison`` runs over the
models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from api_schemas import AnalysisParams
from api_schemas.models import (
    CNNModel,
    CNNWidths,
    DatasetSplit,
    MLPModel,
    StudySpec,
)
from jobstate.errors import InvalidInputError
from workers.geometry.analysis import EmbeddingSet, ProgressCallback
from workers.models.datasets import LabelledData, split_dataset
from workers.models.embed import embedding_set
from workers.models.extraction import extract_embeddings, resolve_device
from workers.models.families import build_family_model, parameter_count
from workers.models.loading import eager_model
from workers.models.training import deterministic_torch, train_until_fit

__all__ = ["StudyModel", "run_study", "study_models"]

# Share of a model's slot in the progress bar spent training; embedding is fast.
_TRAIN_SHARE = 0.9


@dataclass(frozen=True)
class StudyModel:
    """One model of a study: its name, its family spec and the swept size."""

    name: str
    spec: MLPModel | CNNModel
    width: float | int
    facts: dict[str, float | int | str | None]


def study_models(spec: StudySpec) -> list[StudyModel]:
    """The study's models, smallest first (the sizes sorted increasing)."""
    if isinstance(spec.model, CNNWidths):
        return [
            StudyModel(
                name=f"cnn-x{multiplier:g}",
                spec=CNNModel(family="cnn", width_multiplier=multiplier),
                width=multiplier,
                facts={"width": multiplier},
            )
            for multiplier in sorted(spec.model.width_multipliers)
        ]
    return [
        StudyModel(
            name=f"mlp-d{spec.model.depth}-w{width}",
            spec=MLPModel(family="mlp", depth=spec.model.depth, width=width),
            width=width,
            facts={"width": width, "depth": spec.model.depth},
        )
        for width in sorted(spec.model.widths)
    ]


def _class_indices(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return np.searchsorted(classes, labels).astype(np.int64)


def run_study(
    spec: StudySpec,
    *,
    dataset: LabelledData,
    params: AnalysisParams | None = None,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> list[EmbeddingSet]:
    """Train the study's models and embed their training sets.

    Parameters
    ----------
    spec : StudySpec
        The family and sizes, the training configuration, the layers.
    dataset : LabelledData
        The whole dataset (from :func:`workers.models.datasets.load_dataset`); it is
        split per ``spec.dataset.split``, or the default split (25 % test, seed 0).
    params : AnalysisParams, optional
        The analysis to come; under the cosine kernel (and when None) points embedded as
        exactly zero are dropped and counted in ``extra["dropped_zero_rows"]``.
    device : {"cpu", "cuda", "auto"}
        Where to train and embed. Numbers are reproducible on one machine and device.
    progress : callable, optional
        ``progress(stage, fraction)`` with stages ``"train:<model>"`` and
        ``"embed:<model>"`` and the fraction of the whole study; may raise
        :class:`~jobstate.errors.AnalysisCanceled` to stop.

    Returns
    -------
    list of EmbeddingSet
        Models in size order, each model's layers in depth order. A set is named after
        its model (``"mlp-d2-w32"``, ``"cnn-x0.5"``), with ``.<layer>`` appended when
        several layers are read. ``extra`` holds ``parameters``, ``epochs``,
        ``train_accuracy``, ``test_accuracy``, ``fitted`` (1 or 0), ``width`` (the
        width, or the CNN's multiplier), ``depth`` (MLP), ``layer``, ``module`` and
        ``dropped_zero_rows``.

    Raises
    ------
    InvalidInputError
        For a dataset the family cannot take (a CNN on vectors), fewer than two
        classes, or an unknown layer name.
    """
    parts = split_dataset(dataset, split=spec.dataset.split or DatasetSplit())
    classes = dataset.classes
    if classes.size < 2:
        raise InvalidInputError("study.dataset", "a study needs labels of at least two classes")
    train_codes = _class_indices(parts.train.labels, classes)
    test_codes = _class_indices(parts.test.labels, classes)
    device = resolve_device(device)
    models = study_models(spec)
    sets: list[EmbeddingSet] = []
    for position, study_model in enumerate(models):

        def report(stage: str, fraction: float, position: int = position) -> None:
            if progress is not None:
                offset, share = (
                    (0.0, _TRAIN_SHARE) if stage == "train" else (_TRAIN_SHARE, 1 - _TRAIN_SHARE)
                )
                progress(
                    f"{stage}:{models[position].name}",
                    (position + offset + share * fraction) / len(models),
                )

        with deterministic_torch(spec.train.seed):
            module = build_family_model(
                study_model.spec,
                input_shape=parts.train.inputs.shape[1:],
                n_classes=int(classes.size),
                field="study.model",
            )
            training = train_until_fit(
                module,
                parts.train.inputs,
                train_codes,
                config=spec.train,
                test_inputs=parts.test.inputs,
                test_labels=test_codes,
                device=device,
                progress=lambda fraction, report=report: report("train", fraction),
            )
            extracted = extract_embeddings(
                eager_model(module),
                parts.train.inputs,
                layers=spec.layers,
                pooling=spec.pooling,
                batch_size=spec.batch_size,
                device=device,
                progress=lambda fraction, report=report: report("embed", fraction),
                field="study.layers",
            )
        model_facts: dict[str, float | int | str | None] = {
            "parameters": parameter_count(module),
            "epochs": training.epochs,
            "train_accuracy": training.train_accuracy,
            "test_accuracy": training.test_accuracy,
            "fitted": int(training.fitted),
            **study_model.facts,
        }
        for tap, embeddings in extracted:
            name = study_model.name if len(extracted) == 1 else f"{study_model.name}.{tap.name}"
            sets.append(
                embedding_set(
                    name,
                    embeddings,
                    parts.train,
                    params=params,
                    extra={**model_facts, "layer": tap.name, "module": tap.module},
                )
            )
    return sets
