"""Model and dataset references: jobs that name a model and data instead of embeddings.

An ``embed`` job names a dataset, a model and the layers to read; a ``study`` job names
a dataset and a family of models of growing size, trains each until it fits the
training data, and compares the geometry of their embeddings (Shekkizhar & Ortega,
GSP 2023). Every reference refuses unknown fields, and a reference that matches none of
its forms is refused with a message listing the forms, so that a typo is a 422 naming
the field rather than a silent default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from api_schemas.base import RequestModel

UploadId = Annotated[
    str, Field(min_length=1, max_length=128, description="Id of an uploaded dataset.")
]
MAX_STUDY_MODELS = 16
# Every model is trained once per seed: a study's cost is models x seeds trainings.
MAX_STUDY_SEEDS = 10
# Sets one study job may make (models x layers x seeds); 'all' layers count as one here,
# as before seeds: their number is known only once the model is built.
MAX_STUDY_SETS = 160
MAX_LAYERS = 64
# A path the workers open: well under Linux's PATH_MAX (4096 bytes), and each name within
# NAME_MAX (255 bytes), past which every system call fails with ENAMETOOLONG.
MAX_PATH_CHARS = 1024
MAX_PATH_NAME_BYTES = 255


class _Spec(RequestModel):
    model_config = ConfigDict(frozen=True)


def _reference_kind(keys: tuple[str, ...]):
    """A discriminator picking the union member by which of ``keys`` the input holds."""

    def kind(value: Any) -> str | None:
        # Not only dicts and specs reach here: `"model": false` must be a 422, not a crash.
        present = value if isinstance(value, dict) else getattr(value, "__dict__", {})
        for key in keys:
            if present.get(key) is not None:
                return key
        return None

    return kind


# --------------------------------------------------------------------------- datasets


class DatasetSplit(_Spec):
    """A stratified train/test split, the same for the same seed and labels."""

    test_fraction: float = Field(
        0.25, gt=0.0, lt=1.0, description="Share of each class held out as the test set."
    )
    seed: int = Field(0, ge=0, description="Seed of the split's permutation.")


class BuiltinDataset(_Spec):
    """A dataset shipped with the software: scikit-learn's digits (1797 8x8 images)."""

    builtin: Literal["digits"]
    layout: Literal["images", "vectors"] = Field(
        "images",
        description=(
            "'images': N x 1 x 8 x 8; 'vectors': N x 64. Pixels are scaled to [0, 1]. The "
            "built-in families accept either; an uploaded model gets what it was made for."
        ),
    )
    split: DatasetSplit | None = None


class UploadedDataset(_Spec):
    """An uploaded npz or safetensors file holding inputs and labels."""

    dataset: UploadId
    inputs: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Array of inputs, N x F or N x C x H x W; default 'inputs'.",
    )
    labels: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Array of N integer or string labels; default 'labels'.",
    )
    split: DatasetSplit | None = None


class DirectoryDataset(_Spec):
    """A directory on the workers' file system, inside a root the operator allow-lists.

    Image-folder layout: one sub-directory per class (its name is the label), one
    ``.npy`` array per image (H x W or C x H x W).
    """

    path: str = Field(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        description=(
            f"Absolute path, at most {MAX_PATH_CHARS} characters, each name in it at most "
            f"{MAX_PATH_NAME_BYTES} bytes (UTF-8)."
        ),
    )
    split: DatasetSplit | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("path must be absolute (start with '/')")
        if "\0" in path:
            raise ValueError("path must not contain a NUL character")
        for name in path.split("/"):
            size = len(name.encode("utf-8", "surrogatepass"))
            if size > MAX_PATH_NAME_BYTES:
                raise ValueError(
                    f"each name in the path may have at most {MAX_PATH_NAME_BYTES} bytes; "
                    f"{name[:32]!r}... has {size}"
                )
        return path


DatasetSpec = Annotated[
    Annotated[BuiltinDataset, Tag("builtin")]
    | Annotated[UploadedDataset, Tag("dataset")]
    | Annotated[DirectoryDataset, Tag("path")],
    Discriminator(
        _reference_kind(("builtin", "dataset", "path")),
        custom_error_type="dataset_reference",
        custom_error_message=(
            "a dataset reference is {'builtin': 'digits'}, {'dataset': ID, 'inputs'?, "
            "'labels'?} or {'path': '/absolute/dir'}, each with an optional 'split'"
        ),
    ),
]
"""One of the three ways to name a labelled dataset."""


# --------------------------------------------------------------------------- models


class UploadedFile(_Spec):
    """A file uploaded with ``POST /v1/datasets``, named by its dataset id."""

    dataset: UploadId


class MLPModel(_Spec):
    """The built-in MLP: ``depth`` hidden layers of ``width`` ReLU units, then a linear head."""

    family: Literal["mlp"]
    depth: int = Field(2, ge=1, le=32, description="Number of hidden layers.")
    width: int = Field(64, ge=1, le=16_384, description="Units per hidden layer.")
    weights: UploadedFile | None = Field(
        None, description="A safetensors state dict for exactly this architecture."
    )


class CNNModel(_Spec):
    """The built-in small CNN: three 3x3 conv blocks (16, 32, 64 channels x multiplier)."""

    family: Literal["cnn"]
    width_multiplier: float = Field(1.0, gt=0.0, le=64.0, description="Scales every channel.")
    weights: UploadedFile | None = Field(
        None, description="A safetensors state dict for exactly this architecture."
    )


class TorchScriptModel(_Spec):
    """An uploaded TorchScript archive (``torch.jit.save``)."""

    torchscript: UploadedFile


class ExportedModel(_Spec):
    """An uploaded ``torch.export`` program (``torch.export.save``, ``.pt2``)."""

    exported: UploadedFile


class OnnxModel(_Spec):
    """An uploaded ONNX model (``format=onnx``), run by onnxruntime in the sandbox.

    Its layers are ONNX value names; ``"penultimate"`` is the input of the last Gemm or
    MatMul node, ``"all"`` the outputs of its activation and global-pooling nodes.
    """

    onnx: UploadedFile


FamilyModel = Annotated[MLPModel | CNNModel, Field(discriminator="family")]
"""A built-in family, picked by ``family``."""

ModelSpec = Annotated[
    Annotated[FamilyModel, Tag("family")]
    | Annotated[TorchScriptModel, Tag("torchscript")]
    | Annotated[ExportedModel, Tag("exported")]
    | Annotated[OnnxModel, Tag("onnx")],
    Discriminator(
        _reference_kind(("family", "torchscript", "exported", "onnx")),
        custom_error_type="model_reference",
        custom_error_message=(
            "a model reference is {'family': 'mlp', 'depth', 'width'}, {'family': 'cnn', "
            "'width_multiplier'} (each with optional 'weights': {'dataset': ID}), "
            "{'torchscript': {'dataset': ID}}, {'exported': {'dataset': ID}} or "
            "{'onnx': {'dataset': ID}}"
        ),
    ),
]
"""One of the ways to name a model: a built-in family, TorchScript, torch.export or ONNX."""


# --------------------------------------------------------------------------- layers


LayerSelection = (
    Literal["all", "penultimate"]
    | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]],
        Field(min_length=1, max_length=MAX_LAYERS),
    ]
)
"""Module names (dotted, as ``named_modules`` lists them), or:

- ``"all"``: the output of every direct child of the model, in forward order;
- ``"penultimate"``: the input of the model's last ``Linear`` module.
"""

Pooling = Literal["avg", "flatten", "max"]
"""How a convolutional map (N x C x ...) becomes a vector: global average, flatten, max."""


def _check_layer_selection(layers: Any) -> Any:
    """One clear message for a bad selection, instead of one per union member."""
    if isinstance(layers, str) and layers not in ("all", "penultimate"):
        raise ValueError(
            f"layers is 'all', 'penultimate' or a list of module names, not {layers!r}; "
            "to select one module, give a list of one name"
        )
    # Only a list of strings can repeat a name; anything else in it (null, a number) is
    # left to the type check, which names the item.
    if isinstance(layers, list) and all(isinstance(name, str) for name in layers):
        repeated = sorted({name for name in layers if layers.count(name) > 1})
        if repeated:
            raise ValueError(f"layer names must be unique; repeated: {', '.join(repeated)}")
    return layers


# --------------------------------------------------------------------------- jobs


class EmbedSpec(_Spec):
    """Embed a dataset with a model, one embedding set per selected layer."""

    dataset: DatasetSpec
    model: ModelSpec
    layers: LayerSelection = "penultimate"
    pooling: Pooling = "avg"
    subset: Literal["all", "train", "test"] = Field(
        "all",
        description=(
            "Which points to embed; 'train' and 'test' use the dataset's split (the "
            "default split when it gives none)."
        ),
    )
    batch_size: int = Field(256, ge=1, le=65_536, description="Points per forward pass.")

    _layers = field_validator("layers", mode="before")(_check_layer_selection)


class TrainConfig(_Spec):
    """How each model of a study is trained: Adam on cross-entropy, until it fits.

    ``until="fit"`` stops at the first epoch (not before ``min_epochs``) after which every
    training point is classified correctly; ``until="loss"`` at the first whose training
    cross-entropy is at most ``target_loss``. A model that does not get there within
    ``max_epochs`` is *unfitted*: it is reported, flagged, and left out of the study's
    intervals and verdicts.
    """

    max_epochs: int = Field(500, ge=1, le=100_000)
    min_epochs: int = Field(
        0,
        ge=0,
        le=100_000,
        description=(
            "Train at least this many epochs even once the stopping rule holds, so that "
            "models of every size get a comparable amount of training."
        ),
    )
    until: Literal["fit", "loss"] = Field(
        "fit",
        description=(
            "'fit': stop when the training accuracy is 1.0; 'loss': stop when the training "
            "cross-entropy (mean over the training set, in eval mode) is at most target_loss."
        ),
    )
    target_loss: float | None = Field(
        None, gt=0.0, description="The training loss to reach; required when until is 'loss'."
    )
    seed: int = Field(0, ge=0, description="Seeds the initial weights and the batch order.")
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_STUDY_SEEDS,
        description=(
            f"Several training seeds (at most {MAX_STUDY_SEEDS}, distinct): every model is "
            "trained once per seed, and the study reports means and t-intervals over them. "
            "Takes precedence over seed."
        ),
    )
    standardize: bool = Field(
        True,
        description=(
            "z-score the inputs with the training split's mean and standard deviation (per "
            "feature for vectors, per channel for images; constant ones are only centred) "
            "before training, embedding and testing."
        ),
    )
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate.")
    batch_size: int = Field(
        64, ge=1, le=1_000_000, description="Minibatch size; at least N means full batch."
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.min_epochs > self.max_epochs:
            raise ValueError(
                f"min_epochs ({self.min_epochs}) must not exceed max_epochs ({self.max_epochs})"
            )
        if self.until == "loss" and self.target_loss is None:
            raise ValueError("until='loss' needs target_loss")
        if self.until == "fit" and self.target_loss is not None:
            raise ValueError("target_loss applies only with until='loss'")
        return self

    @property
    def seed_values(self) -> list[int]:
        """The training seeds, in the order given: ``seeds``, or ``[seed]``."""
        return list(self.seeds) if self.seeds is not None else [self.seed]


class MLPWidths(_Spec):
    """MLPs of one depth and growing width."""

    family: Literal["mlp"]
    depth: int = Field(2, ge=1, le=32)
    widths: list[Annotated[int, Field(ge=1, le=16_384)]] = Field(
        min_length=1, max_length=MAX_STUDY_MODELS
    )

    @field_validator("widths")
    @classmethod
    def _distinct(cls, widths: list[int]) -> list[int]:
        if len(set(widths)) != len(widths):
            raise ValueError("widths must be distinct")
        return widths


class CNNWidths(_Spec):
    """Small CNNs of growing width multiplier."""

    family: Literal["cnn"]
    width_multipliers: list[Annotated[float, Field(gt=0.0, le=64.0)]] = Field(
        min_length=1, max_length=MAX_STUDY_MODELS
    )

    @field_validator("width_multipliers")
    @classmethod
    def _distinct(cls, multipliers: list[float]) -> list[float]:
        if len(set(multipliers)) != len(multipliers):
            raise ValueError("width_multipliers must be distinct")
        return multipliers


StudyModels = Annotated[MLPWidths | CNNWidths, Field(discriminator="family")]


class StudySpec(_Spec):
    """Models of growing size, each trained until it fits, compared by their geometry.

    The models are trained and reported in size order (smallest first), whatever the
    order of ``widths``. Each model is embedded on its training set: the geometry the
    paper relates to generalisation is that of the data the model has fitted. The
    held-out split (the default split when the dataset gives none) gives the test
    accuracy, and is embedded too: its points are analysed as queries against the
    training graph (the report's ``study`` section). With several ``train.seeds`` every
    model is trained once per seed, and the report's ``study`` section gives t-intervals
    over the fitted seeds and a verdict per claim (:mod:`api_schemas.study`).
    """

    kind: Literal["width"] = "width"
    dataset: DatasetSpec
    model: StudyModels
    train: TrainConfig = Field(default_factory=TrainConfig)
    layers: LayerSelection = "penultimate"
    pooling: Pooling = "avg"
    batch_size: int = Field(256, ge=1, le=65_536, description="Points per forward pass.")

    _layers = field_validator("layers", mode="before")(_check_layer_selection)

    @model_validator(mode="after")
    def _sets_fit_in_one_job(self) -> StudySpec:
        n_models = len(
            self.model.widths if isinstance(self.model, MLPWidths) else self.model.width_multipliers
        )
        n_layers = len(self.layers) if isinstance(self.layers, list) else 1
        n_seeds = len(self.train.seed_values)
        if n_models * n_layers * n_seeds > MAX_STUDY_SETS:
            raise ValueError(
                f"{n_models} models x {n_layers} layers x {n_seeds} seeds is more than "
                f"{MAX_STUDY_SETS} sets"
            )
        return self
