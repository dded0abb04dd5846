"""Model and dataset references: extraction against hooks written here, and refusals.

Every extraction test runs the model a second time with forward hooks registered in
the test itself, on the original eager model, and asks for the same numbers.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter, ValidationError
from safetensors.torch import save_file
from torch import nn

from api_schemas.models import (
    DatasetSpec,
    DatasetSplit,
    EmbedSpec,
    ModelSpec,
    StudySpec,
)
from jobstate.errors import InvalidInputError
from workers.models import (
    PathNotAllowedError,
    embed_sets,
    load_dataset,
    load_digits_data,
    load_image_folder,
    load_model,
    load_uploaded_data,
    resolve_data_path,
    split_dataset,
)
from workers.models.extraction import extract_embeddings, pool_features
from workers.models.families import MLP, SmallCNN, cnn_channels, parameter_count
from workers.models.loading import check_pt2_archive, eager_model, load_torchscript

torch.set_num_threads(min(2, torch.get_num_threads()))
pytestmark = pytest.mark.filterwarnings("ignore:.*torch\\.jit.*:DeprecationWarning")

ATOL = 1e-5
N_POINTS = 200


@pytest.fixture(scope="module")
def digits_images() -> np.ndarray:
    return load_digits_data(layout="images").inputs[:N_POINTS]


def _seeded(module_factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return module_factory().eval()


def _hooked_outputs(
    model: nn.Module, inputs: np.ndarray, names: list[str]
) -> dict[str, np.ndarray]:
    """Outputs of the named modules in one eager forward pass, by hooks."""
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, output, name=name: captured.__setitem__(name, output)
        )
        for name in names
    ]
    with torch.no_grad():
        model(torch.from_numpy(inputs))
    for handle in handles:
        handle.remove()
    return {name: value.numpy() for name, value in captured.items()}


def _hooked_input(model: nn.Module, inputs: np.ndarray, name: str) -> np.ndarray:
    captured = {}
    handle = dict(model.named_modules())[name].register_forward_hook(
        lambda _m, args, _o: captured.__setitem__("input", args[0])
    )
    with torch.no_grad():
        model(torch.from_numpy(inputs))
    handle.remove()
    return captured["input"].numpy()


def _locator(files: dict[str, Path]):
    return lambda dataset_id: files[dataset_id]


def _extract(model, inputs, layers, **options) -> dict[str, np.ndarray]:
    return {
        tap.name: values
        for tap, values in extract_embeddings(model, inputs, layers=layers, **options)
    }


# --------------------------------------------------------------------------- extraction


def test_builtin_mlp_all_layers_equal_hooked_forward_pass(digits_images):
    mlp = _seeded(lambda: MLP(64, 10, depth=3, width=24))
    extracted = _extract(eager_model(mlp), digits_images, "all", batch_size=64)
    assert list(extracted) == ["hidden1", "hidden2", "hidden3", "output"]
    expected = _hooked_outputs(mlp, digits_images, list(extracted))
    for name, values in extracted.items():
        np.testing.assert_allclose(values, expected[name], atol=ATOL)


def test_penultimate_is_the_input_of_the_last_linear_layer(digits_images):
    mlp = _seeded(lambda: MLP(64, 10, depth=2, width=16))
    extracted = _extract(eager_model(mlp), digits_images, "penultimate", batch_size=50)
    np.testing.assert_allclose(
        extracted["penultimate"], _hooked_input(mlp, digits_images, "output"), atol=ATOL
    )
    np.testing.assert_allclose(
        extracted["penultimate"],
        _hooked_outputs(mlp, digits_images, ["hidden2"])["hidden2"],
        atol=ATOL,
    )


@pytest.mark.parametrize(
    ("pooling", "reduce"),
    [
        ("avg", lambda maps: maps.mean(axis=(2, 3))),
        ("max", lambda maps: maps.max(axis=(2, 3))),
        ("flatten", lambda maps: maps.reshape(len(maps), -1)),
    ],
)
def test_builtin_cnn_maps_are_pooled_as_asked(digits_images, pooling, reduce):
    cnn = _seeded(lambda: SmallCNN(1, 10, width_multiplier=0.5))
    extracted = _extract(
        eager_model(cnn), digits_images, ["block2", "block3"], pooling=pooling, batch_size=128
    )
    maps = _hooked_outputs(cnn, digits_images, ["block2", "block3"])
    for name in ("block2", "block3"):
        np.testing.assert_allclose(extracted[name], reduce(maps[name]), atol=ATOL)
    assert extracted["block2"].shape[1] == (
        cnn_channels(0.5)[1] * (16 if pooling == "flatten" else 1)
    )


def test_cnn_all_layers_are_the_blocks_pool_and_logits_in_depth_order(digits_images):
    cnn = _seeded(lambda: SmallCNN(1, 10, width_multiplier=0.25))
    extracted = _extract(eager_model(cnn), digits_images, "all")
    assert list(extracted) == ["block1", "block2", "block3", "pool", "output"]
    hooked = _hooked_outputs(cnn, digits_images, ["pool", "output"])
    np.testing.assert_allclose(extracted["pool"], hooked["pool"], atol=ATOL)
    np.testing.assert_allclose(extracted["output"], hooked["output"], atol=ATOL)


def test_layers_come_back_in_depth_order_whatever_the_order_asked(digits_images):
    mlp = _seeded(lambda: MLP(64, 10, depth=2, width=8))
    taps = extract_embeddings(eager_model(mlp), digits_images, layers=["output", "hidden1.0"])
    assert [tap.name for tap, _ in taps] == ["hidden1.0", "output"]


def test_torchscript_file_embeddings_equal_hooked_eager_model(digits_images, tmp_path):
    cnn = _seeded(lambda: SmallCNN(1, 10, width_multiplier=0.5))
    path = tmp_path / "cnn.torchscript"
    torch.jit.save(torch.jit.script(cnn), str(path))
    spec = TypeAdapter(ModelSpec).validate_python({"torchscript": {"dataset": "ts"}})
    model = load_model(
        spec, locate_upload=_locator({"ts": path}), input_shape=(1, 8, 8), n_classes=10
    )
    assert model.kind == "torchscript"
    extracted = _extract(model, digits_images, "all", batch_size=64)
    assert list(extracted) == ["block1", "block2", "block3", "pool", "output"]
    maps = _hooked_outputs(cnn, digits_images, list(extracted))
    for name, values in extracted.items():
        np.testing.assert_allclose(
            values, pool_features(torch.from_numpy(maps[name]), pooling="avg"), atol=ATOL
        )
    penultimate = _extract(model, digits_images, "penultimate")["penultimate"]
    np.testing.assert_allclose(penultimate, _hooked_input(cnn, digits_images, "output"), atol=ATOL)


def test_exported_program_embeddings_equal_hooked_eager_model(digits_images, tmp_path):
    mlp = _seeded(lambda: MLP(64, 10, depth=2, width=16))
    example = torch.from_numpy(digits_images[:4])
    program = torch.export.export(mlp, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "mlp.pt2"
    torch.export.save(program, str(path))
    spec = TypeAdapter(ModelSpec).validate_python({"exported": {"dataset": "ep"}})
    model = load_model(
        spec, locate_upload=_locator({"ep": path}), input_shape=(1, 8, 8), n_classes=10
    )
    extracted = _extract(model, digits_images, ["hidden2.0", "hidden1", "output"], batch_size=70)
    assert list(extracted) == ["hidden1", "hidden2.0", "output"]
    expected = _hooked_outputs(mlp, digits_images, list(extracted))
    for name, values in extracted.items():
        np.testing.assert_allclose(values, expected[name], atol=ATOL)
    penultimate = _extract(model, digits_images, "penultimate")["penultimate"]
    np.testing.assert_allclose(penultimate, _hooked_input(mlp, digits_images, "output"), atol=ATOL)


def test_family_with_safetensors_weights_embeds_like_the_saved_model(digits_images, tmp_path):
    trained = _seeded(lambda: MLP(64, 10, depth=2, width=32), seed=7)
    path = tmp_path / "weights.safetensors"
    save_file(trained.state_dict(), str(path))
    spec = EmbedSpec.model_validate(
        {
            "dataset": {"builtin": "digits"},
            "model": {"family": "mlp", "depth": 2, "width": 32, "weights": {"dataset": "w"}},
            "layers": "all",
        }
    )
    data = load_dataset(spec.dataset)
    model = load_model(
        spec.model,
        locate_upload=_locator({"w": path}),
        input_shape=data.inputs.shape[1:],
        n_classes=data.classes.size,
    )
    sets = embed_sets(spec, model=model, dataset=data)
    assert [s.name for s in sets] == ["hidden1", "hidden2", "output"]
    expected = _hooked_outputs(trained, data.inputs, ["hidden1", "hidden2", "output"])
    for embedding_set in sets:
        assert embedding_set.extra["dropped_zero_rows"] == 0 or embedding_set.name != "output"
        kept = np.isin(data.ids, embedding_set.ids)
        np.testing.assert_allclose(
            embedding_set.embeddings, expected[embedding_set.name][kept], atol=ATOL
        )
        np.testing.assert_array_equal(embedding_set.labels, data.labels[kept])


def test_embed_drops_points_embedded_as_zero_and_counts_them(digits_images):
    mlp = _seeded(lambda: MLP(64, 10, depth=1, width=2), seed=3)
    data = load_digits_data()
    spec = EmbedSpec.model_validate(
        {"dataset": {"builtin": "digits"}, "model": {"family": "mlp"}, "layers": ["hidden1"]}
    )
    (embedding_set,) = embed_sets(spec, model=eager_model(mlp), dataset=data)
    relu = _hooked_outputs(mlp, data.inputs, ["hidden1"])["hidden1"]
    zero = ~relu.any(axis=1)
    assert zero.any(), "a 2-unit ReLU layer should silence some digits"
    assert embedding_set.extra["dropped_zero_rows"] == int(zero.sum())
    np.testing.assert_array_equal(embedding_set.ids, data.ids[~zero])


# --------------------------------------------------------------------------- refusals


def test_unknown_layer_name_is_refused_with_the_available_names(digits_images):
    mlp = _seeded(lambda: MLP(64, 10, depth=2, width=8))
    with pytest.raises(InvalidInputError) as refused:
        extract_embeddings(
            eager_model(mlp), digits_images, layers=["hidden9"], field="embed.layers"
        )
    assert refused.value.field == "embed.layers"
    assert "'hidden9'" in refused.value.message and "hidden2.0" in refused.value.message


def test_torchscript_layers_are_its_direct_children(digits_images, tmp_path):
    path = tmp_path / "m.torchscript"
    torch.jit.save(torch.jit.script(_seeded(lambda: MLP(64, 10, depth=2, width=8))), str(path))
    model = load_model(
        TypeAdapter(ModelSpec).validate_python({"torchscript": {"dataset": "m"}}),
        locate_upload=_locator({"m": path}),
        input_shape=(64,),
        n_classes=10,
    )
    with pytest.raises(InvalidInputError, match="direct children"):
        extract_embeddings(model, digits_images, layers=["hidden1.0"])


def test_garbage_torchscript_file_is_refused(tmp_path):
    path = tmp_path / "garbage"
    path.write_bytes(os.urandom(512))
    with pytest.raises(InvalidInputError) as refused:
        load_torchscript(path, field="embed.model.torchscript")
    assert refused.value.field == "embed.model.torchscript"
    assert "TorchScript" in refused.value.message


def test_a_pickled_state_dict_is_not_a_torchscript_model(tmp_path):
    path = tmp_path / "state.pt"
    torch.save(MLP(64, 10, depth=1, width=4).state_dict(), path)
    with pytest.raises(InvalidInputError, match="TorchScript"):
        load_torchscript(path)


def _exported_archive(tmp_path: Path) -> Path:
    mlp = _seeded(lambda: MLP(64, 10, depth=1, width=4))
    path = tmp_path / "ok.pt2"
    torch.export.save(torch.export.export(mlp, (torch.rand(2, 64),)), str(path))
    return path


def _rewritten(source: Path, target: Path, rewrite) -> Path:
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            out.writestr(info, rewrite(info.filename, archive.read(info.filename)))
    return target


def test_exported_archive_with_pickled_weights_is_refused_before_torch_reads_it(tmp_path):
    def pickle_flag(name: str, data: bytes) -> bytes:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            for payload in config["config"].values():
                payload["use_pickle"] = True
            return json.dumps(config).encode()
        return data

    path = _rewritten(_exported_archive(tmp_path), tmp_path / "pickled.pt2", pickle_flag)
    with pytest.raises(InvalidInputError, match="pickled"):
        check_pt2_archive(path)


def test_exported_archive_with_compiled_code_is_refused(tmp_path):
    source = _exported_archive(tmp_path)
    target = tmp_path / "aoti.pt2"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        root = archive.namelist()[0].split("/")[0]
        for info in archive.infolist():
            out.writestr(info, archive.read(info.filename))
        out.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(InvalidInputError, match="entries other than"):
        check_pt2_archive(target)


def test_exported_graph_calling_a_non_operator_is_refused(tmp_path):
    def call_getpid(name: str, data: bytes) -> bytes:
        if name.endswith("models/model.json"):
            return data.replace(b'"torch.ops.aten.relu.default"', b'"torch.os.getpid"', 1)
        return data

    path = _rewritten(_exported_archive(tmp_path), tmp_path / "getpid.pt2", call_getpid)
    spec = TypeAdapter(ModelSpec).validate_python({"exported": {"dataset": "x"}})
    with pytest.raises(InvalidInputError) as refused:
        load_model(spec, locate_upload=_locator({"x": path}), input_shape=(64,), n_classes=10)
    assert refused.value.field == "model.exported"


def test_garbage_exported_file_is_refused(tmp_path):
    path = tmp_path / "garbage.pt2"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(InvalidInputError, match=r"torch\.export"):
        check_pt2_archive(path, field="model.exported")


def test_weights_that_do_not_fit_are_refused_naming_the_mismatch(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_file(MLP(64, 10, depth=2, width=32).state_dict(), str(path))
    spec = TypeAdapter(ModelSpec).validate_python(
        {"family": "mlp", "depth": 2, "width": 16, "weights": {"dataset": "w"}}
    )
    with pytest.raises(InvalidInputError) as refused:
        load_model(spec, locate_upload=_locator({"w": path}), input_shape=(64,), n_classes=10)
    assert refused.value.field == "model.weights"
    assert "hidden1.0.weight: file (32, 64), model (16, 64)" in refused.value.message


def test_weights_of_another_depth_are_refused_naming_the_keys(tmp_path):
    path = tmp_path / "deep.safetensors"
    save_file(MLP(64, 10, depth=3, width=16).state_dict(), str(path))
    spec = TypeAdapter(ModelSpec).validate_python(
        {"family": "mlp", "depth": 2, "width": 16, "weights": {"dataset": "w"}}
    )
    with pytest.raises(InvalidInputError, match=r"unexpected hidden3\.0\.bias"):
        load_model(spec, locate_upload=_locator({"w": path}), input_shape=(64,), n_classes=10)


def test_weights_file_that_is_not_safetensors_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(MLP(64, 10, depth=1, width=4).state_dict(), path)
    spec = TypeAdapter(ModelSpec).validate_python(
        {"family": "mlp", "depth": 1, "width": 4, "weights": {"dataset": "w"}}
    )
    with pytest.raises(InvalidInputError, match="safetensors"):
        load_model(spec, locate_upload=_locator({"w": path}), input_shape=(64,), n_classes=10)


def test_family_without_weights_is_refused_for_embedding():
    spec = TypeAdapter(ModelSpec).validate_python({"family": "cnn"})
    with pytest.raises(InvalidInputError) as refused:
        load_model(spec, locate_upload=_locator({}), input_shape=(1, 8, 8), n_classes=10)
    assert refused.value.field == "model.weights"


def test_cnn_on_vectors_is_refused():
    spec = TypeAdapter(ModelSpec).validate_python({"family": "cnn", "weights": {"dataset": "w"}})
    with pytest.raises(InvalidInputError, match="image inputs"):
        load_model(spec, locate_upload=_locator({}), input_shape=(64,), n_classes=10)


@pytest.mark.parametrize(
    ("reference", "field"),
    [
        ({"family": "transformer", "width": 8}, "family"),
        ({"family": "mlp", "widht": 8}, "widht"),
        ({"keras": {"dataset": "x"}}, None),
        ({"torchscript": {"id": "x"}}, "id"),
    ],
)
def test_unknown_model_references_are_refused_naming_the_field(reference, field):
    with pytest.raises(ValidationError) as refused:
        TypeAdapter(ModelSpec).validate_python(reference)
    errors = refused.value.errors()
    if field is None:
        assert errors[0]["type"] == "model_reference"
        assert "torchscript" in errors[0]["msg"]
    else:
        assert any(field in map(str, error["loc"]) for error in errors)


def test_unknown_dataset_reference_is_refused_listing_the_forms():
    with pytest.raises(ValidationError) as refused:
        TypeAdapter(DatasetSpec).validate_python({"url": "http://example.com/x.npz"})
    assert refused.value.errors()[0]["type"] == "dataset_reference"
    with pytest.raises(ValidationError, match="must be absolute"):
        TypeAdapter(DatasetSpec).validate_python({"path": "data/digits"})


def test_bad_layer_selection_is_refused_with_one_message():
    with pytest.raises(ValidationError) as refused:
        StudySpec.model_validate(
            {
                "dataset": {"builtin": "digits"},
                "model": {"family": "mlp", "widths": [8]},
                "layers": "last",
            }
        )
    (error,) = refused.value.errors()
    assert error["loc"] == ("layers",) and "'penultimate'" in error["msg"]


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (["fc1", "fc2", "fc1"], "repeated: fc1"),
        # Found by the schemathesis run: a list of nulls was a 500, not a 422.
        ([None, None], "valid string"),
        (["fc1", 3, "fc1"], "valid string"),
    ],
)
def test_bad_layer_names_are_a_validation_error_not_a_crash(layers, message):
    with pytest.raises(ValidationError) as refused:
        StudySpec.model_validate(
            {
                "dataset": {"builtin": "digits"},
                "model": {"family": "mlp", "widths": [8]},
                "layers": layers,
            }
        )
    messages = [error["msg"] for error in refused.value.errors()]
    assert any(message in text for text in messages), messages


# --------------------------------------------------------------------------- datasets


def test_digits_are_scaled_to_unit_interval_in_both_layouts():
    images = load_digits_data(layout="images")
    vectors = load_digits_data(layout="vectors")
    assert images.inputs.shape == (1797, 1, 8, 8) and vectors.inputs.shape == (1797, 64)
    assert images.inputs.dtype == np.float32 and images.inputs.max() == 1.0
    np.testing.assert_array_equal(images.inputs.reshape(1797, 64), vectors.inputs)
    np.testing.assert_array_equal(images.classes, np.arange(10))


def test_split_is_stratified_and_depends_only_on_the_seed():
    data = load_digits_data()
    first = split_dataset(data, split=DatasetSplit(test_fraction=0.25, seed=3))
    again = split_dataset(data, split=DatasetSplit(test_fraction=0.25, seed=3))
    other = split_dataset(data, split=DatasetSplit(test_fraction=0.25, seed=4))
    np.testing.assert_array_equal(first.test.ids, again.test.ids)
    assert not np.array_equal(first.test.ids, other.test.ids)
    assert np.intersect1d(first.train.ids, first.test.ids).size == 0
    assert first.train.n_points + first.test.n_points == data.n_points
    per_class = np.bincount(first.test.labels) / np.bincount(data.labels)
    np.testing.assert_allclose(per_class, 0.25, atol=0.01)


def test_uploaded_npz_is_read_by_array_names(tmp_path):
    path = tmp_path / "upload"
    inputs = np.random.default_rng(0).random((30, 3, 4, 4))
    np.savez(path.with_suffix(".npz"), x=inputs, y=np.repeat(["cat", "dog", "eel"], 10))
    path.with_suffix(".npz").rename(path)
    data = load_uploaded_data(path, inputs="x", labels="y")
    assert data.inputs.dtype == np.float32 and data.inputs.shape == (30, 3, 4, 4)
    assert list(data.classes) == ["cat", "dog", "eel"]
    with pytest.raises(InvalidInputError) as refused:
        load_uploaded_data(path, field="study.dataset")
    assert refused.value.field == "study.dataset.inputs"


def test_uploaded_safetensors_with_wrong_label_count_is_refused(tmp_path):
    path = tmp_path / "upload"
    save_file({"inputs": torch.rand(10, 64), "labels": torch.arange(9)}, str(path))
    with pytest.raises(InvalidInputError) as refused:
        load_uploaded_data(path)
    assert refused.value.field == "dataset.labels" and "(10)" in refused.value.message


@pytest.fixture()
def data_root(tmp_path) -> Path:
    root = tmp_path / "allowed"
    for label in ("three", "seven"):
        (root / "digits" / label).mkdir(parents=True)
        for index in range(3):
            np.save(root / "digits" / label / f"{index}.npy", np.full((8, 8), index, np.uint8))
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.npy").write_bytes(b"not for you")
    return root


def test_image_folder_reads_one_class_per_sub_directory(data_root):
    data = load_image_folder(data_root / "digits", roots=[data_root])
    assert data.inputs.shape == (6, 1, 8, 8)
    assert list(data.labels) == ["seven"] * 3 + ["three"] * 3
    assert data.ids[0] == "seven/0.npy"


def test_path_inside_a_root_resolves(data_root):
    assert (
        resolve_data_path(str(data_root / "digits"), roots=[data_root])
        == (data_root / "digits").resolve()
    )


@pytest.mark.parametrize(
    "escape",
    [
        lambda root: str(root / ".." / "secret"),
        lambda root: "/etc",
        lambda root: str(root) + "-sibling",
    ],
    ids=["dot-dot", "elsewhere", "prefix-sibling"],
)
def test_path_outside_the_roots_is_refused(data_root, escape):
    with pytest.raises(PathNotAllowedError) as refused:
        resolve_data_path(escape(data_root), roots=[data_root])
    assert refused.value.field == "dataset.path"


def test_symbolic_link_out_of_a_root_is_refused(data_root, tmp_path):
    (data_root / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(PathNotAllowedError):
        resolve_data_path(str(data_root / "link"), roots=[data_root])


def test_symbolic_link_inside_an_image_folder_cannot_reach_out(data_root, tmp_path):
    (data_root / "digits" / "three" / "9.npy").symlink_to(tmp_path / "secret" / "key.npy")
    with pytest.raises(PathNotAllowedError):
        load_image_folder(data_root / "digits", roots=[data_root])


def test_no_configured_root_refuses_every_path(data_root):
    with pytest.raises(PathNotAllowedError, match="NNKGEO_DATA_ROOTS"):
        resolve_data_path(str(data_root), roots=[])


def test_png_images_are_refused_with_a_way_out(data_root):
    (data_root / "digits" / "three" / "4.png").write_bytes(b"\x89PNG")
    with pytest.raises(InvalidInputError, match="Pillow"):
        load_image_folder(data_root / "digits", roots=[data_root])


def test_directory_reference_goes_through_the_roots(data_root):
    spec = TypeAdapter(DatasetSpec).validate_python({"path": str(data_root / ".." / "secret")})
    with pytest.raises(PathNotAllowedError):
        load_dataset(spec, data_roots=[data_root])
    inside = TypeAdapter(DatasetSpec).validate_python({"path": str(data_root / "digits")})
    assert load_dataset(inside, data_roots=[data_root]).n_points == 6


def test_parameter_counts_follow_the_architecture():
    assert parameter_count(MLP(64, 10, depth=2, width=8)) == 64 * 8 + 8 + 8 * 8 + 8 + 8 * 10 + 10
    first, second, third = cnn_channels(1.0)
    assert (first, second, third) == (16, 32, 64)
    expected = (9 * 1 * 16 + 16) + (9 * 16 * 32 + 32) + (9 * 32 * 64 + 64) + (64 * 10 + 10)
    assert parameter_count(SmallCNN(1, 10, width_multiplier=1.0)) == expected
