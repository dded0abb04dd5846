"""Model and dataset references: embeddings computed by the worker, and the size study.

The pure core behind ``embed`` and ``study`` jobs: no Redis, Celery or HTTP. The
service resolves uploaded ids to files and the allow-listed roots from its settings,
then calls, for an ``embed`` job::

    data = load_dataset(spec.dataset, locate_upload=locate, data_roots=roots)
    model = load_model(spec.model, locate_upload=locate,
                       input_shape=data.inputs.shape[1:], n_classes=data.classes.size)
    sets = embed_sets(spec, model=model, dataset=data, params=params, device=device)

and for a ``study`` job::

    data = load_dataset(spec.dataset, locate_upload=locate, data_roots=roots)
    sets = run_study(spec, dataset=data, params=params, device=device)

and hands ``sets`` to :func:`workers.geometry.analyze`. The dataset side
(:func:`resolve_data_path`, :class:`PathNotAllowedError`) imports no torch, so the API
process can refuse a path before it queues a job; they live in `jobstate.data_paths`.
Importing this package loads torch.
"""

from __future__ import annotations

from jobstate.data_paths import PathNotAllowedError
from workers.models.datasets import (
    LabelledData,
    TrainTestData,
    load_dataset,
    load_digits_data,
    load_image_folder,
    load_uploaded_data,
    resolve_data_path,
    split_dataset,
)
from workers.models.embed import embed_sets
from workers.models.extraction import LayerTap, extract_embeddings
from workers.models.families import build_family_model, parameter_count
from workers.models.loading import LoadedModel, load_model
from workers.models.study import run_study, study_models
from workers.models.training import TrainingResult, train_until_fit

__all__ = [
    "LabelledData",
    "LayerTap",
    "LoadedModel",
    "PathNotAllowedError",
    "TrainTestData",
    "TrainingResult",
    "build_family_model",
    "embed_sets",
    "extract_embeddings",
    "load_dataset",
    "load_digits_data",
    "load_image_folder",
    "load_model",
    "load_uploaded_data",
    "parameter_count",
    "resolve_data_path",
    "run_study",
    "split_dataset",
    "study_models",
    "train_until_fit",
]
