"""The embedding sets of an embed or study job, computed by `workers.models`.

The job record names each upload by id and sha256 (resolved at submission), so the
uploads are read from the blob store by content, never through a dataset record that
may have been deleted since. torch is imported on the first job, not by the API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from api_schemas import AnalysisParams
from jobstate.data_paths import PathNotAllowedError
from jobstate.records import JobSpec
from workers.geometry import Analysis, EmbeddingSet, InvalidInputError
from workers.geometry.analysis import ProgressCallback
from workers.models.sandbox.runner import SandboxPolicy

__all__ = ["add_study_section", "build_model_job_sets"]


def _prefixed(error: InvalidInputError, prefix: str) -> InvalidInputError:
    """The error with its field under ``prefix`` (``model`` -> ``embed.model``)."""
    if error.field == prefix or error.field.startswith(f"{prefix}."):
        return error
    kind = PathNotAllowedError if isinstance(error, PathNotAllowedError) else InvalidInputError
    return kind(f"{prefix}.{error.field}", error.message)


def build_model_job_sets(
    spec: JobSpec,
    *,
    locate_blob: Callable[[str], Path],
    data_roots: Sequence[Path],
    sandbox: SandboxPolicy,
    max_array_bytes: int,
    progress: ProgressCallback | None = None,
) -> list[EmbeddingSet]:
    """Load the data, then embed it with the model (embed) or train and embed (study).

    Parameters
    ----------
    spec : JobSpec
        Of kind ``"embed"`` or ``"study"``.
    locate_blob : callable
        Maps an upload's sha256 to the path of its bytes.
    data_roots : sequence of Path
        The allow-listed directories (``NNKGEO_DATA_ROOTS``).
    sandbox : SandboxPolicy
        How an uploaded model (TorchScript, torch.export, ONNX) is run: never in this
        process, always in a confined child under these limits.
    max_array_bytes : int
        Largest decompressed array an uploaded dataset may hold (NNKGEO_MAX_ARRAY_BYTES).
    progress : callable, optional
        ``progress(stage, fraction)``: ``"load"``, then ``"embed"`` (embed) or
        ``"train:<model>"`` and ``"embed:<model>"`` (study); may raise to cancel.

    Raises
    ------
    InvalidInputError
        With the field under ``embed.`` or ``study.`` (``embed.model.torchscript``,
        ``study.layers``); a :class:`PathNotAllowedError` for a directory outside the roots.
    """
    from workers.models import embed_sets, load_dataset, load_model, run_study

    sha256_of = {upload.dataset: upload.sha256 for upload in spec.uploads}
    prefix = spec.kind

    def locate_upload(upload_id: str) -> Path:
        path = locate_blob(sha256_of[upload_id]) if upload_id in sha256_of else None
        if path is None or not path.is_file():
            raise InvalidInputError(
                prefix, f"upload {upload_id} was deleted before the job ran; upload it again"
            )
        return path

    if progress is not None:
        progress("load", 0.0)
    try:
        if spec.kind == "embed":
            assert spec.embed is not None
            dataset = load_dataset(
                spec.embed.dataset,
                locate_upload=locate_upload,
                data_roots=data_roots,
                field="embed.dataset",
                max_array_bytes=max_array_bytes,
            )
            model = load_model(
                spec.embed.model,
                locate_upload=locate_upload,
                input_shape=dataset.inputs.shape[1:],
                n_classes=int(dataset.classes.size),
                field="embed.model",
                sandbox=sandbox,
            )
            return embed_sets(
                spec.embed,
                model=model,
                dataset=dataset,
                params=spec.params,
                device=spec.params.device,
                progress=progress,
            )
        assert spec.study is not None
        dataset = load_dataset(
            spec.study.dataset,
            locate_upload=locate_upload,
            data_roots=data_roots,
            field="study.dataset",
            max_array_bytes=max_array_bytes,
        )
        return run_study(
            spec.study,
            dataset=dataset,
            params=spec.params,
            device=spec.params.device,
            progress=progress,
        )
    except InvalidInputError as error:
        raise _prefixed(error, prefix) from error


def add_study_section(
    analysis: Analysis, sets: Sequence[EmbeddingSet], *, params: AnalysisParams
) -> Analysis:
    """A study job's analysis with its report's ``study`` section; any other unchanged.

    The held-out split of each study set is solved as queries against its training
    graph (``sets[].out_of_sample``), and the models are summarised over their fitted
    seeds with a verdict per claim (:mod:`workers.models.study_report`).
    """
    from workers.models.study_report import add_study_section as with_study

    return with_study(analysis, sets, params=params)
