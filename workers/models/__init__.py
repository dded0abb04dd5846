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
Importing this package loads nothing heavy: each name is imported from its module
when first used (PEP 562), so a CPU worker that runs no model job never loads torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobstate.data_paths import PathNotAllowedError

if TYPE_CHECKING:
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

_MODULE_OF: dict[str, str] = {
    "LabelledData": "datasets",
    "TrainTestData": "datasets",
    "load_dataset": "datasets",
    "load_digits_data": "datasets",
    "load_image_folder": "datasets",
    "load_uploaded_data": "datasets",
    "resolve_data_path": "datasets",
    "split_dataset": "datasets",
    "embed_sets": "embed",
    "LayerTap": "extraction",
    "extract_embeddings": "extraction",
    "build_family_model": "families",
    "parameter_count": "families",
    "LoadedModel": "loading",
    "load_model": "loading",
    "run_study": "study",
    "study_models": "study",
    "TrainingResult": "training",
    "train_until_fit": "training",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
