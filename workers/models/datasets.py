"""Labelled datasets a job can name: the built-in digits, an upload, an image folder.

Every loader returns :class:`LabelledData`: float32 inputs (N x F, or N x C x H x W for
images), the labels as given, and ids that point back to the source (row index, or the
file's path relative to the folder). Nothing here imports torch, so the API process can
check a reference (:func:`resolve_data_path`) before it queues a job.

Every problem with a reference is an :class:`~jobstate.errors.InvalidInputError`
whose ``field`` names it (``"dataset.path"``, ``"dataset.inputs"``); a path outside the
allow-listed roots is a :class:`~jobstate.data_paths.PathNotAllowedError` (the
service answers 403).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from api_schemas.models import (
    BuiltinDataset,
    DatasetSpec,
    DatasetSplit,
    DirectoryDataset,
    UploadedDataset,
)
from arrayfiles import ArrayFileError, ArrayTooLargeError, load_array
from jobstate.data_paths import (
    DEFAULT_INPUTS_ARRAY,
    DEFAULT_LABELS_ARRAY,
    resolve_data_path,
)
from jobstate.errors import InvalidInputError

__all__ = [
    "DEFAULT_INPUTS_ARRAY",
    "DEFAULT_LABELS_ARRAY",
    "LabelledData",
    "TrainTestData",
    "load_dataset",
    "load_digits_data",
    "load_image_folder",
    "load_uploaded_data",
    "resolve_data_path",
    "split_dataset",
    "standardize_split",
]

IMAGE_ARRAY_SUFFIX = ".npy"
# Common image formats that would need Pillow, which the workers do not install: named
# in the refusal so that users know to convert rather than wonder why files vanished.
_UNDECODED_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"})
_MAX_FOLDER_FILES = 2_000_000

UploadLocator = Callable[[str], Path]
"""Maps an uploaded dataset id to the path of its bytes (the service's blob store)."""


@dataclass(frozen=True)
class LabelledData:
    """Inputs with one label and one id per point.

    Attributes
    ----------
    inputs : numpy.ndarray
        float32, C-contiguous, shape (N, F) or (N, C, H, W).
    labels : numpy.ndarray
        Shape (N,), integers or strings, as the source gives them.
    ids : numpy.ndarray
        Shape (N,): the row in the source, or a file path relative to the folder.
    """

    inputs: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    @property
    def n_points(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def classes(self) -> np.ndarray:
        """Distinct labels in sort order; a label's position is its class index."""
        return np.unique(self.labels)

    @property
    def label_codes(self) -> np.ndarray:
        """Each point's class index into :attr:`classes`, int64."""
        return np.unique(self.labels, return_inverse=True)[1].astype(np.int64)

    def subset(self, indices: np.ndarray) -> LabelledData:
        """The points at ``indices``, in that order."""
        return LabelledData(
            inputs=np.ascontiguousarray(self.inputs[indices]),
            labels=self.labels[indices],
            ids=self.ids[indices],
        )


@dataclass(frozen=True)
class TrainTestData:
    train: LabelledData
    test: LabelledData


def load_digits_data(*, layout: str = "images") -> LabelledData:
    """scikit-learn's bundled digits: 1797 images of 8 x 8 pixels, labels 0-9.

    Parameters
    ----------
    layout : {"images", "vectors"}
        ``"images"`` gives inputs of shape (1797, 1, 8, 8), ``"vectors"`` (1797, 64).

    Returns
    -------
    LabelledData
        Pixels scaled from 0..16 to [0, 1] as float32; ids are row indices.
    """
    from sklearn.datasets import load_digits

    if layout not in ("images", "vectors"):
        raise InvalidInputError(
            "dataset.layout", f"layout is 'images' or 'vectors', not {layout!r}"
        )
    digits = load_digits()
    pixels = (digits.images / 16.0).astype(np.float32)
    inputs = pixels[:, None, :, :] if layout == "images" else pixels.reshape(len(pixels), -1)
    return LabelledData(
        inputs=np.ascontiguousarray(inputs),
        labels=digits.target.astype(np.int64),
        ids=np.arange(len(pixels), dtype=np.int64),
    )


def _sniff_upload_format(path: Path, *, field: str) -> str:
    with path.open("rb") as stream:
        magic = stream.read(8)
    if magic.startswith(b"PK\x03\x04"):
        return "npz"
    if magic.startswith(b"\x93NUMPY"):
        raise InvalidInputError(
            field,
            "an .npy file holds one array; upload an npz or safetensors file holding both "
            "the inputs and the labels",
        )
    if magic.startswith(b"PAR1"):
        raise InvalidInputError(
            field, "a parquet file cannot hold image tensors; upload npz or safetensors"
        )
    return "safetensors"


def _checked_inputs(inputs: np.ndarray, *, field: str, name: str = "inputs") -> np.ndarray:
    if inputs.ndim not in (2, 4):
        raise InvalidInputError(
            field, f"inputs must be N x F or N x C x H x W, got shape {tuple(inputs.shape)}"
        )
    if inputs.dtype.kind not in "fiub":
        raise InvalidInputError(field, f"inputs must be numbers, got dtype {inputs.dtype}")
    if inputs.dtype.kind == "f" and not np.isfinite(inputs).all():
        raise InvalidInputError(field, f"array {name!r} holds NaN or Inf values")
    with np.errstate(over="ignore"):
        converted = np.ascontiguousarray(inputs, dtype=np.float32)
    if not np.isfinite(converted).all():
        raise InvalidInputError(
            field,
            f"array {name!r} holds values beyond float32's range (magnitude above 3.4e38), "
            "which become +-inf in float32, the precision models compute in; rescale it "
            "(e.g. divide it by its largest absolute value)",
        )
    return converted


def _checked_labels(labels: np.ndarray, *, n_points: int, field: str) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != n_points:
        raise InvalidInputError(
            field,
            f"labels must be a 1-D array with one entry per input ({n_points}), got shape "
            f"{tuple(labels.shape)}",
        )
    if labels.dtype.kind == "f":
        if not (np.isfinite(labels).all() and np.array_equal(labels, np.round(labels))):
            raise InvalidInputError(field, "labels must be integers or strings, not fractions")
        return labels.astype(np.int64)
    if labels.dtype.kind not in "iubU":
        raise InvalidInputError(field, f"labels must be integers or strings, got {labels.dtype}")
    return np.asarray(labels)


def load_uploaded_data(
    path: str | os.PathLike[str],
    *,
    inputs: str | None = None,
    labels: str | None = None,
    field: str = "dataset",
    max_array_bytes: int | None = None,
) -> LabelledData:
    """Inputs and labels from an uploaded npz or safetensors file.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its format is told from its first bytes (uploads have no suffix).
    inputs, labels : str, optional
        Array names; default ``"inputs"`` and ``"labels"``.
    field : str
        Dotted name of the reference, for error messages.
    max_array_bytes : int, optional
        The most bytes either array may take decompressed (the worker passes
        NNKGEO_MAX_ARRAY_BYTES); None for no limit.

    Returns
    -------
    LabelledData
        Inputs converted to float32 as they are (no scaling); ids are row indices.

    Raises
    ------
    InvalidInputError
        With ``field`` + ``".inputs"`` / ``".labels"`` for a missing array, a wrong
        shape or dtype, non-finite inputs or inputs that overflow float32, or an array
        past ``max_array_bytes`` (the message names the array and the limit).
    """
    path = Path(path)
    fmt = _sniff_upload_format(path, field=field)
    arrays = {}
    for role, name in (
        ("inputs", inputs or DEFAULT_INPUTS_ARRAY),
        ("labels", labels or DEFAULT_LABELS_ARRAY),
    ):
        try:
            arrays[role] = np.asarray(
                load_array(path, fmt=fmt, name=name, mmap=False, max_array_bytes=max_array_bytes)
            )
        except ArrayTooLargeError as error:
            raise InvalidInputError(
                f"{field}.{role}", f"{error.message} (NNKGEO_MAX_ARRAY_BYTES)"
            ) from error
        except ArrayFileError as error:
            raise InvalidInputError(f"{field}.{role}", error.message) from error
    checked_inputs = _checked_inputs(
        arrays["inputs"], field=f"{field}.inputs", name=inputs or DEFAULT_INPUTS_ARRAY
    )
    return LabelledData(
        inputs=checked_inputs,
        labels=_checked_labels(
            arrays["labels"], n_points=checked_inputs.shape[0], field=f"{field}.labels"
        ),
        ids=np.arange(checked_inputs.shape[0], dtype=np.int64),
    )


def load_image_folder(
    directory: str | os.PathLike[str],
    *,
    roots: Sequence[str | os.PathLike[str]],
    field: str = "dataset.path",
) -> LabelledData:
    """An image folder: one sub-directory per class, one ``.npy`` image per file.

    Parameters
    ----------
    directory : str or os.PathLike
        The folder; checked with :func:`resolve_data_path` first.
    roots : sequence of str or os.PathLike
        The allow-listed roots; every file read is checked against them too, so that a
        symbolic link inside the folder cannot reach outside.
    field : str
        Dotted name of the reference, for error messages.

    Returns
    -------
    LabelledData
        Classes are the sub-directory names (sorted); images are read with
        ``allow_pickle=False``, H x W images become 1 x H x W, and every image must have
        the same shape. Values are converted to float32 as they are. Ids are the files'
        paths relative to the folder.

    Notes
    -----
    PNG and JPEG files are refused rather than skipped: decoding them needs Pillow,
    which the workers do not install. Convert them to ``.npy`` (e.g. with
    ``numpy.save(path, numpy.asarray(PIL.Image.open(image)))``) or upload an npz.
    """
    folder = resolve_data_path(directory, roots=roots, field=field)
    try:
        return _read_image_folder(folder, directory=directory, roots=roots, field=field)
    except OSError as error:
        # Inside the roots, so the system's reason (no permission, ...) may be said.
        raise InvalidInputError(
            field, f"{os.fspath(directory)!r} cannot be read: {error.strerror or error}"
        ) from None


def _read_image_folder(
    folder: Path,
    *,
    directory: str | os.PathLike[str],
    roots: Sequence[str | os.PathLike[str]],
    field: str,
) -> LabelledData:
    if not folder.is_dir():
        raise InvalidInputError(field, f"{os.fspath(directory)!r} is not a directory")
    class_dirs = sorted(entry for entry in folder.iterdir() if entry.is_dir())
    if not class_dirs:
        raise InvalidInputError(field, "the folder has no class sub-directories")
    images: list[np.ndarray] = []
    labels: list[str] = []
    ids: list[str] = []
    for class_dir in class_dirs:
        for file in sorted(class_dir.iterdir()):
            if file.name.startswith(".") or file.is_dir():
                continue
            relative = f"{class_dir.name}/{file.name}"
            if file.suffix.lower() in _UNDECODED_IMAGE_SUFFIXES:
                raise InvalidInputError(
                    field,
                    f"{relative}: decoding {file.suffix} images needs Pillow, which this server "
                    "does not install; save each image as a .npy array (or upload an npz)",
                )
            if file.suffix.lower() != IMAGE_ARRAY_SUFFIX:
                raise InvalidInputError(
                    field, f"{relative}: only .npy images are read, one per file"
                )
            resolve_data_path(file, roots=roots, field=f"{field} ({relative})")
            if len(images) >= _MAX_FOLDER_FILES:
                raise InvalidInputError(field, f"more than {_MAX_FOLDER_FILES} images")
            images.append(_read_image_array(file, relative=relative, field=field))
            labels.append(class_dir.name)
            ids.append(relative)
    if not images:
        raise InvalidInputError(field, "the class sub-directories hold no .npy images")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise InvalidInputError(
            field, f"images must all have one shape; found {sorted(shapes)[:4]}"
        )
    return LabelledData(
        inputs=_checked_inputs(np.stack(images), field=field, name="images"),
        labels=np.asarray(labels),
        ids=np.asarray(ids),
    )


def _read_image_array(file: Path, *, relative: str, field: str) -> np.ndarray:
    try:
        image = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InvalidInputError(field, f"{relative}: not a readable .npy array ({error})") from None
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise InvalidInputError(
            field, f"{relative}: an image is H x W or C x H x W, got shape {image.shape}"
        )
    return image


def load_dataset(
    spec: DatasetSpec,
    *,
    locate_upload: UploadLocator | None = None,
    data_roots: Sequence[str | os.PathLike[str]] = (),
    field: str = "dataset",
    max_array_bytes: int | None = None,
) -> LabelledData:
    """The labelled data a :data:`~api_schemas.models.DatasetSpec` names.

    Parameters
    ----------
    spec : DatasetSpec
    locate_upload : callable, optional
        Maps an uploaded dataset id to its file; required for ``{"dataset": ID}``.
    data_roots : sequence of path
        The allow-listed directories, for ``{"path": ...}``.
    field : str
        Dotted name of the reference, for error messages.
    max_array_bytes : int, optional
        For an upload: the most bytes either array may take decompressed (see
        :func:`load_uploaded_data`); None for no limit.

    Returns
    -------
    LabelledData
        All of it; apply :func:`split_dataset` for the spec's split.
    """
    if isinstance(spec, BuiltinDataset):
        return load_digits_data(layout=spec.layout)
    if isinstance(spec, UploadedDataset):
        if locate_upload is None:
            raise InvalidInputError(field, "uploaded datasets are not available here")
        return load_uploaded_data(
            locate_upload(spec.dataset),
            inputs=spec.inputs,
            labels=spec.labels,
            field=field,
            max_array_bytes=max_array_bytes,
        )
    if isinstance(spec, DirectoryDataset):
        return load_image_folder(spec.path, roots=data_roots, field=f"{field}.path")
    raise InvalidInputError(field, f"unknown dataset reference {type(spec).__name__}")


def split_dataset(data: LabelledData, *, split: DatasetSplit) -> TrainTestData:
    """A stratified train/test split, a function of the labels and the seed only.

    Each class's points are permuted with ``numpy.random.default_rng(seed)`` and
    ``round(test_fraction * n_class)`` of them held out (at least one point of each
    class stays in training); both parts keep the source order.

    Parameters
    ----------
    data : LabelledData
    split : DatasetSplit

    Returns
    -------
    TrainTestData
    """
    rng = np.random.default_rng(split.seed)
    codes = data.label_codes
    test_mask = np.zeros(data.n_points, dtype=bool)
    for code in range(int(codes.max()) + 1):
        members = np.flatnonzero(codes == code)
        n_test = min(round(split.test_fraction * members.size), members.size - 1)
        test_mask[rng.permutation(members)[:n_test]] = True
    if not test_mask.any():
        raise InvalidInputError(
            "dataset.split.test_fraction",
            f"test_fraction {split.test_fraction} leaves no test point; raise it",
        )
    return TrainTestData(
        train=data.subset(np.flatnonzero(~test_mask)),
        test=data.subset(np.flatnonzero(test_mask)),
    )


def standardize_split(parts: TrainTestData) -> TrainTestData:
    """Both parts z-scored with the training part's statistics.

    Vectors (N x F) are standardised per feature, images (N x C x H x W) per channel
    (over the training points and pixels), so that a convolution still sees one scale
    per channel. The test part uses the training mean and standard deviation: held-out
    points must not inform the preprocessing the model is trained with.

    Parameters
    ----------
    parts : TrainTestData

    Returns
    -------
    TrainTestData
        float32 inputs ``(x - mean) / std``, statistics computed in float64 with the
        population standard deviation (ddof 0); a feature or channel that is constant
        on the training points (std 0, such as digits' border pixels) is only centred.
        Labels and ids are unchanged.
    """
    train_inputs = np.asarray(parts.train.inputs, dtype=np.float64)
    axes = (0,) if train_inputs.ndim == 2 else (0, *range(2, train_inputs.ndim))
    mean = train_inputs.mean(axis=axes, keepdims=True)
    std = train_inputs.std(axis=axes, keepdims=True)
    # A constant feature carries no information; dividing it by 0 would make NaNs.
    std[std == 0.0] = 1.0

    def scaled(data: LabelledData) -> LabelledData:
        inputs = (np.asarray(data.inputs, dtype=np.float64) - mean) / std
        return LabelledData(
            inputs=np.ascontiguousarray(inputs, dtype=np.float32), labels=data.labels, ids=data.ids
        )

    return TrainTestData(train=scaled(parts.train), test=scaled(parts.test))
