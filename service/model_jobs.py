"""Submission of embed and study jobs: every check that needs no torch, before queueing.

An ``embed`` or ``study`` job names a dataset and a model rather than embeddings. What
the API can know without loading a model is checked here, and refused with a 422 naming
the field (403 for a directory outside ``NNKGEO_DATA_ROOTS``):

- every upload it names exists for the tenant and has the right format (a dataset: npz
  or safetensors; weights: safetensors; a model: onnx, torchscript or pt2);
- an uploaded dataset holds its inputs (N x F or N x C x H x W, numbers) and its labels
  (one per input), by the names the request gives or ``inputs`` / ``labels``;
- a directory lies inside the allow-listed roots (its files are read by the worker);
- a built-in family fits the data's layout (a CNN needs images) and, to embed with,
  has weights; layer names given for a built-in family are among its modules.

What only the model can tell (whether an uploaded model loads, whether weights fit,
layer names of an uploaded model) fails the job at run time with the same kind of 422.

The job record keeps the spec as given and the sha256 of every upload it names
(:class:`~jobstate.records.UploadInput`), so the worker reads exactly these bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from api_schemas import JobCreate
from api_schemas.models import (
    BuiltinDataset,
    CNNModel,
    CNNWidths,
    DirectoryDataset,
    EmbedSpec,
    ExportedModel,
    LayerSelection,
    MLPModel,
    MLPWidths,
    OnnxModel,
    StudySpec,
    TorchScriptModel,
    UploadedDataset,
)
from api_schemas.problems import FieldError
from jobstate.data_paths import (
    DEFAULT_INPUTS_ARRAY,
    DEFAULT_LABELS_ARRAY,
    PathNotAllowedError,
    resolve_data_path,
)
from jobstate.errors import InvalidInputError
from jobstate.model_footprint import check_family_fits
from jobstate.records import DatasetRecord, JobSpec, UploadInput
from jobstate.store import Store
from service.errors import invalid_input, path_not_allowed

__all__ = ["family_layer_names", "resolve_model_job"]

# scikit-learn's digits: 1797 points of 8 x 8 pixels.
_DIGITS_POINT_SHAPE = {"images": (1, 8, 8), "vectors": (64,)}
_DATASET_FORMATS = ("npz", "safetensors")
_LISTED_NAMES = 40
# Classes a study's classifier is sized for at submission, when the labels are not read
# yet: its output layer is a small share of any model that could exceed a budget.
_MAX_CLASSES_GUESS = 1000


def family_layer_names(model: MLPModel | CNNModel | MLPWidths | CNNWidths) -> list[str]:
    """The module names of a built-in family, as ``named_modules`` lists them.

    Mirrors the layout of `workers.models.families` (which imports torch); a test keeps
    the two in step.
    """
    if isinstance(model, MLPModel | MLPWidths):
        hidden = [
            name
            for index in range(1, model.depth + 1)
            for name in (f"hidden{index}", f"hidden{index}.0", f"hidden{index}.1")
        ]
        return [*hidden, "output"]
    return [
        *("block1", "block1.0", "block1.1"),
        *("block2", "block2.0", "block2.1", "block2.2"),
        *("block3", "block3.0", "block3.1"),
        *("pool", "pool.0", "pool.1"),
        "output",
    ]


class _ModelJobResolver:
    """Collects every problem of one request, then the uploads it reads."""

    def __init__(
        self,
        *,
        store: Store,
        tenant: str,
        data_roots: Sequence[Path],
        memory_budget_bytes: int | None = None,
    ) -> None:
        self._store = store
        self._tenant = tenant
        self._data_roots = data_roots
        self._memory_budget_bytes = memory_budget_bytes
        self.errors: list[FieldError] = []
        self.uploads: dict[str, UploadInput] = {}

    def _fail(self, field: str, message: str) -> None:
        self.errors.append(FieldError(field=field, message=message))

    def upload(
        self, upload_id: str, *, field: str, formats: Sequence[str], what: str
    ) -> DatasetRecord | None:
        """The tenant's upload ``upload_id`` in one of ``formats``, noted as read; or None."""
        record = self._store.get_dataset(self._tenant, upload_id)
        if record is None:
            self._fail(field, f"no upload {upload_id}; upload it with POST /v1/datasets")
            return None
        if record.format not in formats:
            self._fail(
                field,
                f"upload {upload_id} is a {record.format} file; {what} is uploaded with "
                f"format={' or format='.join(formats)}",
            )
            return None
        self.uploads[record.id] = UploadInput(
            dataset=record.id, sha256=record.sha256, format=record.format
        )
        return record

    def dataset(
        self, spec: BuiltinDataset | UploadedDataset | DirectoryDataset, *, field: str
    ) -> tuple[int, ...] | None:
        """Check a dataset reference; the shape of one point when it is known here."""
        if isinstance(spec, BuiltinDataset):
            return _DIGITS_POINT_SHAPE[spec.layout]
        if isinstance(spec, DirectoryDataset):
            try:
                resolve_data_path(spec.path, roots=self._data_roots, field=f"{field}.path")
            except PathNotAllowedError as error:
                raise path_not_allowed(error) from None
            except InvalidInputError as error:
                self._fail(error.field, error.message)
            except (ValueError, OSError, RuntimeError):
                # A NUL byte, a name too long, a loop of links: no directory to read.
                self._fail(f"{field}.path", "not a valid path on this server")
            return None
        record = self.upload(
            spec.dataset,
            field=f"{field}.dataset",
            formats=_DATASET_FORMATS,
            what="a dataset of inputs and labels",
        )
        if record is None:
            return None
        return self._uploaded_arrays(record, spec, field=field)

    def _uploaded_arrays(
        self, record: DatasetRecord, spec: UploadedDataset, *, field: str
    ) -> tuple[int, ...] | None:
        names = ", ".join(array.name for array in record.arrays)
        inputs_name = spec.inputs or DEFAULT_INPUTS_ARRAY
        labels_name = spec.labels or DEFAULT_LABELS_ARRAY
        inputs = record.array_named(inputs_name)
        labels = record.array_named(labels_name)
        for role, name, array in (("inputs", inputs_name, inputs), ("labels", labels_name, labels)):
            if array is None:
                self._fail(
                    f"{field}.{role}",
                    f"dataset {record.id} has no array {name!r}; it holds {names}",
                )
        if inputs is None:
            return None
        if len(inputs.shape) not in (2, 4) or inputs.dtype.startswith("<U"):
            self._fail(
                f"{field}.inputs",
                f"inputs must be numbers, N x F or N x C x H x W; {inputs.name!r} is "
                f"{inputs.dtype} of shape {tuple(inputs.shape)}",
            )
            return None
        if labels is not None and labels.shape != inputs.shape[:1]:
            self._fail(
                f"{field}.labels",
                f"labels must be a 1-D array with one entry per input ({inputs.shape[0]}), "
                f"got shape {tuple(labels.shape)}",
            )
        return tuple(inputs.shape[1:])

    def family(
        self,
        model: MLPModel | CNNModel | MLPWidths | CNNWidths,
        point_shape: tuple[int, ...] | None,
        *,
        field: str,
    ) -> None:
        """A CNN needs images; the check `build_family_model` makes, made earlier."""
        if point_shape is None or not isinstance(model, CNNModel | CNNWidths):
            return
        if len(point_shape) != 3 or min(point_shape[1:]) < 2:
            self._fail(
                f"{field}.family",
                "the cnn family needs image inputs N x C x H x W with H and W at least "
                f"2, got points of shape {point_shape}",
            )

    def layers(
        self,
        layers: LayerSelection,
        model: MLPModel | CNNModel | MLPWidths | CNNWidths,
        *,
        field: str,
    ) -> None:
        if not isinstance(layers, list):
            return
        available = family_layer_names(model)
        listed = ", ".join(available[:_LISTED_NAMES])
        unlisted = len(available) - _LISTED_NAMES
        more = f" (and {unlisted} more)" if unlisted > 0 else ""
        for name in layers:
            if name not in available:
                self._fail(
                    field, f"no layer named {name!r}; the model's layers are: {listed}{more}"
                )

    def embed(self, spec: EmbedSpec) -> None:
        point_shape = self.dataset(spec.dataset, field="embed.dataset")
        model = spec.model
        if isinstance(model, MLPModel | CNNModel):
            self.family(model, point_shape, field="embed.model")
            self.layers(spec.layers, model, field="embed.layers")
            if model.weights is None:
                self._fail(
                    "embed.model.weights",
                    f"a {model.family} to embed with needs trained weights (a safetensors "
                    "upload); to train models, submit a study",
                )
            else:
                self.upload(
                    model.weights.dataset,
                    field="embed.model.weights.dataset",
                    formats=("safetensors",),
                    what="a state dict",
                )
        elif isinstance(model, TorchScriptModel):
            self.upload(
                model.torchscript.dataset,
                field="embed.model.torchscript.dataset",
                formats=("torchscript",),
                what="a TorchScript model",
            )
        elif isinstance(model, ExportedModel):
            self.upload(
                model.exported.dataset,
                field="embed.model.exported.dataset",
                formats=("pt2",),
                what="a torch.export program",
            )
        elif isinstance(model, OnnxModel):
            self.upload(
                model.onnx.dataset,
                field="embed.model.onnx.dataset",
                formats=("onnx",),
                what="an ONNX model",
            )

    def study(self, spec: StudySpec) -> None:
        point_shape = self.dataset(spec.dataset, field="study.dataset")
        self.family(spec.model, point_shape, field="study.model")
        self.layers(spec.layers, spec.model, field="study.layers")
        if point_shape is not None and self._memory_budget_bytes is not None:
            self.trainable(spec, point_shape)

    def trainable(self, spec: StudySpec, point_shape: tuple[int, ...]) -> None:
        """Each model of the study can be trained within the job memory budget."""
        assert self._memory_budget_bytes is not None
        model = spec.model
        if isinstance(model, MLPWidths):
            sizes = [
                ("widths", index, MLPModel(family="mlp", depth=model.depth, width=width))
                for index, width in enumerate(model.widths)
            ]
        elif len(point_shape) == 3:  # else `family` has refused a cnn on vectors already
            sizes = [
                ("width_multipliers", index, CNNModel(family="cnn", width_multiplier=m))
                for index, m in enumerate(model.width_multipliers)
            ]
        else:
            return
        for name, index, single in sizes:
            try:
                check_family_fits(
                    single,
                    input_shape=point_shape,
                    n_classes=_MAX_CLASSES_GUESS,
                    batch_size=spec.train.batch_size,
                    budget_bytes=self._memory_budget_bytes,
                    field=f"study.model.{name}[{index}]",
                )
            except InvalidInputError as error:
                self._fail(error.field, error.message)


def resolve_model_job(
    request: JobCreate,
    *,
    store: Store,
    tenant: str,
    data_roots: Sequence[Path],
    memory_budget_bytes: int | None = None,
) -> JobSpec:
    """The record of an embed or study job, once every check above has passed.

    Raises
    ------
    ProblemError
        422 listing every problem found, or 403 for a directory outside the roots.
    """
    resolver = _ModelJobResolver(
        store=store,
        tenant=tenant,
        data_roots=data_roots,
        memory_budget_bytes=memory_budget_bytes,
    )
    if request.embed is not None:
        resolver.embed(request.embed)
    elif request.study is not None:
        resolver.study(request.study)
    if resolver.errors:
        raise invalid_input(resolver.errors)
    return JobSpec(
        kind="embed" if request.embed is not None else "study",
        embed=request.embed,
        study=request.study,
        uploads=sorted(resolver.uploads.values(), key=lambda upload: upload.dataset),
        params=request.params,
    )
