"""The content-addressed model registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.backends.local.registries import register_model, resolve_model
from controller.backends.local.stores import LocalStore
from controller.structs.errors import PermanentError


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "state" / "state.db")


def test_same_content_is_the_same_version_and_changed_content_a_new_one(tmp_path: Path, store: LocalStore) -> None:
    src = tmp_path / "tf-dnn-mnist"
    (src / "model").mkdir(parents=True)
    (src / "model" / "w.bin").write_bytes(b"\x00\x01")
    models = tmp_path / "state" / "models"

    v1 = register_model(store, models, "mnist", src, {"a": "1"})
    again = register_model(store, models, "mnist", src, {"a": "1"})
    assert (v1.version, again.version, again.sha256) == (1, 1, v1.sha256)

    (src / "model" / "w.bin").write_bytes(b"\x00\x02")
    v2 = register_model(store, models, "mnist", src)
    assert v2.version == 2 and v2.sha256 != v1.sha256
    # A folder's contents are placed under the version folder, as Azure ML lays them out.
    assert (Path(v1.path) / "model" / "w.bin").read_bytes() == b"\x00\x01"
    assert (Path(v2.path) / "model" / "w.bin").read_bytes() == b"\x00\x02"

    (src / "model" / "w.bin").write_bytes(b"\x00\x01")
    assert register_model(store, models, "mnist", src).version == 1  # reverting returns the old version
    assert resolve_model(store, "mnist", None).version == 2
    assert resolve_model(store, "mnist", 1).path == v1.path


def test_registering_a_single_file_keeps_its_name(tmp_path: Path, store: LocalStore) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(b"onnx")
    mv = register_model(store, tmp_path / "models", "onnx", f)
    assert (Path(mv.path) / "model.onnx").read_bytes() == b"onnx"


def test_unknown_models_and_versions_are_permanent_errors(tmp_path: Path, store: LocalStore) -> None:
    with pytest.raises(PermanentError, match="not registered"):
        resolve_model(store, "nope", None)
    f = tmp_path / "m.bin"
    f.write_bytes(b"x")
    register_model(store, tmp_path / "models", "m", f)
    with pytest.raises(PermanentError, match="no version 7"):
        resolve_model(store, "m", 7)


def test_registering_content_already_registered_copies_nothing(tmp_path: Path, store: LocalStore) -> None:
    src = tmp_path / "scaler"
    src.mkdir()
    (src / "scale.txt").write_text("2")
    v1 = register_model(store, tmp_path / "state" / "models", "scaler", src, {"a": "1"})
    # A models folder that cannot be written proves the second registration never copies.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")

    again = register_model(store, blocked, "scaler", src, {"a": "2"})

    assert (again.version, again.path, again.tags) == (v1.version, v1.path, {"a": "2"})
    assert resolve_model(store, "scaler", 1).tags == {"a": "2"}
