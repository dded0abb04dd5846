"""The model-size study of Shekkizhar & Ortega (GSP 2023), as embedding sets.

For each model of a family, smallest first, and each training seed: build it from the
seed, train it until its stopping rule holds (every training point right, or a target
loss; see :mod:`workers.models.training`) or ``max_epochs`` pass, then embed the
*training* set at the selected layers. The paper relates generalisation to the geometry
of the data a model has fitted, so the training points are the ones analysed as the set;
the held-out split is embedded too and travels with the set
(:class:`StudyEmbeddingSet`), to be analysed as queries against the training graph
(:mod:`workers.models.study_report`) and to give the test accuracy.

Inputs are z-scored with the training split's statistics unless ``train.standardize``
is false. The sets come out in size order, then seed order, each model's layers in depth
order, with the model's facts in ``extra`` (parameter count, seed, epochs, final loss,
accuracies, whether it fitted), so that ``workers.geometry.analyze`` on them gives a
report whose ``comparison`` runs over the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
from workers.models.datasets import LabelledData, split_dataset, standardize_split
from workers.models.embed import drop_zero_rows, embedding_set
from workers.models.extraction import extract_embeddings, resolve_device
from workers.models.families import build_family_model, parameter_count
from workers.models.loading import eager_model
from workers.models.training import deterministic_torch, train_until_fit

__all__ = [
    "TRAINING_PROGRESS_SHARE",
    "StudyEmbeddingSet",
    "StudyModel",
    "run_study",
    "scaled_progress",
    "study_models",
]

# Share of a model's slot in the progress bar spent training; embedding is fast.
_TRAIN_SHARE = 0.9

TRAINING_PROGRESS_SHARE = 0.8
"""Share of a whole study's progress bar that :func:`run_study` spans (training and
embedding dominate); the analysis of its sets takes the rest. The service's worker splits
a study job's progress the same way (``workers.progress.MODEL_PROGRESS_SHARE``)."""


def scaled_progress(
    progress: ProgressCallback | None, start: float, share: float
) -> ProgressCallback | None:
    """A callback that maps one phase's fractions 0..1 onto ``start .. start + share``.

    Each phase of a study (training, then the analysis) reports its own 0..1; mapped
    onto consecutive spans of one bar, the bar never runs backwards between phases.

    Examples
    --------
    >>> seen = []
    >>> analysis = scaled_progress(lambda stage, f: seen.append(f), 0.8, 0.2)
    >>> analysis("knn", 0.0); analysis("metrics", 1.0)
    >>> seen
    [0.8, 1.0]
    """
    if progress is None:
        return None

    def report(stage: str, fraction: float) -> None:
        progress(stage, start + share * fraction)

    return report


@dataclass(frozen=True)
class StudyModel:
    """One model of a study: its name, its family spec and the swept size."""

    name: str
    spec: MLPModel | CNNModel
    width: float | int
    facts: dict[str, float | int | str | None]


@dataclass(frozen=True)
class StudyEmbeddingSet(EmbeddingSet):
    """A study's set (its model's training points), with the held-out split beside it.

    Attributes
    ----------
    model : str
        The study model's name (``"mlp-d2-w32"``), without seed or layer.
    layer : str
        The layer read.
    seed : int
        The training seed.
    fitted : bool
        Whether the model met its stopping rule within ``max_epochs``.
    held_out_embeddings : ndarray of shape (n_held_out, dim)
        The held-out points embedded by the same model at the same layer (zero rows
        dropped under the cosine kernel, as for the training points).
    held_out_labels : ndarray of shape (n_held_out,)
    """

    model: str = ""
    layer: str = ""
    seed: int = 0
    fitted: bool = False
    held_out_embeddings: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    held_out_labels: np.ndarray = field(default_factory=lambda: np.empty(0))


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
) -> list[StudyEmbeddingSet]:
    """Train the study's models, once per seed, and embed their training and held-out sets.

    Parameters
    ----------
    spec : StudySpec
        The family and sizes, the training configuration (seeds, stopping rule,
        standardisation), the layers.
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
    list of StudyEmbeddingSet
        Models in size order, then seeds in the order given, then each model's layers
        in depth order. A set is named after its model (``"mlp-d2-w32"``,
        ``"cnn-x0.5"``), with ``.seed<s>`` appended when the study has several seeds and
        ``.<layer>`` when several layers are read. ``extra`` holds ``parameters``,
        ``seed``, ``epochs``, ``final_loss``, ``train_accuracy``, ``test_accuracy``,
        ``fitted`` (1 or 0), ``width`` (the width, or the CNN's multiplier), ``depth``
        (MLP), ``layer``, ``module`` and ``dropped_zero_rows``.

    Raises
    ------
    InvalidInputError
        For a dataset the family cannot take (a CNN on vectors), fewer than two
        classes, or an unknown layer name.
    """
    parts = split_dataset(dataset, split=spec.dataset.split or DatasetSplit())
    if spec.train.standardize:
        parts = standardize_split(parts)
    classes = dataset.classes
    if classes.size < 2:
        raise InvalidInputError("study.dataset", "a study needs labels of at least two classes")
    train_codes = _class_indices(parts.train.labels, classes)
    test_codes = _class_indices(parts.test.labels, classes)
    # One forward pass over both splits: the held-out points are embedded by the very
    # model (and layer) whose training points make the graph they are queried against.
    both_inputs = np.concatenate([parts.train.inputs, parts.test.inputs])
    n_train = parts.train.n_points
    device = resolve_device(device)
    models = study_models(spec)
    seeds = spec.train.seed_values
    runs = [(model, seed) for model in models for seed in seeds]
    sets: list[StudyEmbeddingSet] = []
    for position, (study_model, seed) in enumerate(runs):

        def report(stage: str, fraction: float, position: int = position) -> None:
            if progress is not None:
                offset, share = (
                    (0.0, _TRAIN_SHARE) if stage == "train" else (_TRAIN_SHARE, 1 - _TRAIN_SHARE)
                )
                progress(
                    f"{stage}:{runs[position][0].name}",
                    (position + offset + share * fraction) / len(runs),
                )

        with deterministic_torch(seed):
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
                seed=seed,
                test_inputs=parts.test.inputs,
                test_labels=test_codes,
                device=device,
                progress=lambda fraction, report=report: report("train", fraction),
            )
            extracted = extract_embeddings(
                eager_model(module),
                both_inputs,
                layers=spec.layers,
                pooling=spec.pooling,
                batch_size=spec.batch_size,
                device=device,
                progress=lambda fraction, report=report: report("embed", fraction),
                field="study.layers",
            )
        model_facts: dict[str, float | int | str | None] = {
            "parameters": parameter_count(module),
            "seed": seed,
            "epochs": training.epochs,
            "final_loss": training.final_loss,
            "train_accuracy": training.train_accuracy,
            "test_accuracy": training.test_accuracy,
            "fitted": int(training.fitted),
            **study_model.facts,
        }
        name = study_model.name if len(seeds) == 1 else f"{study_model.name}.seed{seed}"
        for tap, embeddings in extracted:
            train_set = embedding_set(
                name if len(extracted) == 1 else f"{name}.{tap.name}",
                embeddings[:n_train],
                parts.train,
                params=params,
                extra={**model_facts, "layer": tap.name, "module": tap.module},
            )
            held_out, held_out_labels = embeddings[n_train:], parts.test.labels
            if params is None or params.kernel == "cosine":
                held_out, held_out_labels, _, _ = drop_zero_rows(
                    held_out, held_out_labels, parts.test.ids
                )
            sets.append(
                StudyEmbeddingSet(
                    name=train_set.name,
                    embeddings=train_set.embeddings,
                    labels=train_set.labels,
                    ids=train_set.ids,
                    extra=train_set.extra,
                    model=study_model.name,
                    layer=tap.name,
                    seed=seed,
                    fitted=training.fitted,
                    held_out_embeddings=np.ascontiguousarray(held_out),
                    held_out_labels=held_out_labels,
                )
            )
    return sets
