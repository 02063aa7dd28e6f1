"""Hostile input gets a clear, located error: never a traceback, a hang or a file outside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.sources.loading import MAX_DEPTH, MAX_FILE_BYTES, load_desired_state, parse_documents
from controller.structs.errors import ValidationFailed


def only_error(root: Path) -> str:
    with pytest.raises(ValidationFailed) as caught:
        load_desired_state(root)
    assert len(caught.value.errors) == 1, caught.value.errors
    return str(caught.value.errors[0])


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]")
    (tmp_path / "bomb.yaml").write_text("apiVersion: amlops.dev/v1\nkind: Model\n" + "\n".join(lines) + "\n")
    assert "document expands to more than 200000 nodes (alias bomb?)" in only_error(tmp_path)


def test_deep_flow_nesting_is_refused(tmp_path: Path) -> None:
    (tmp_path / "deep.yaml").write_text("kind: Model\nspec: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert only_error(tmp_path) == f"deep.yaml:2: nesting deeper than {MAX_DEPTH} levels"


def test_deep_block_nesting_is_refused(tmp_path: Path) -> None:
    text = "kind: Model\nspec:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(60)) + "  " * 61 + "v\n"
    (tmp_path / "deep.yaml").write_text(text)
    assert f"nesting deeper than {MAX_DEPTH} levels" in only_error(tmp_path)


def test_huge_files_are_refused_without_parsing(tmp_path: Path) -> None:
    (tmp_path / "huge.yaml").write_bytes(b"# " + b"x" * (MAX_FILE_BYTES + 1))
    assert only_error(tmp_path) == f"huge.yaml: file is {MAX_FILE_BYTES + 3} bytes; manifests are limited to {MAX_FILE_BYTES}"


def test_binary_and_non_utf8_files(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\x00\x01\x02kind")
    assert only_error(tmp_path) == "bin.yaml: binary file, not YAML text"
    (tmp_path / "bin.yaml").unlink()
    (tmp_path / "latin.yaml").write_bytes(b"kind: Model\nmetadata: {name: caf\xe9}\n")
    assert only_error(tmp_path) == "latin.yaml:2: not valid UTF-8 (byte 0xe9 at offset 32)"


def test_symlinks_leaving_the_repo_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text("apiVersion: amlops.dev/v1\nkind: Model\nmetadata: {name: m}\nspec: {path: x}\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    os.symlink(outside, repo / "link.yaml")
    assert only_error(repo) == "link.yaml: symbolic link points outside the repository; refused"


def test_model_path_through_a_symlink_out_of_the_repo(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    os.symlink(tmp_path, repo / "escape")
    (repo / "m.yaml").write_text("apiVersion: amlops.dev/v1\nkind: Model\nmetadata: {name: m}\nspec: {path: escape}\n")
    assert only_error(repo) == "m.yaml:4: Model m: spec.path: escape resolves outside the repository (symbolic link?)"


def test_duplicate_keys_are_an_error_not_a_silent_overwrite(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text("kind: Model\nkind: Workspace\n")
    assert only_error(tmp_path) == "d.yaml:2: duplicate key 'kind'"


def test_yaml_files_that_are_not_manifests_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "conda.yml").write_text("name: env\ndependencies: [numpy]\n")
    assert len(load_desired_state(tmp_path)) == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    _, errors = parse_documents("fuzz.yaml", raw)
    assert all(e.file == "fuzz.yaml" for e in errors)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(yaml_values)
def test_any_document_shape_validates_to_errors_or_resources(value: object) -> None:
    import yaml

    text = yaml.safe_dump({"apiVersion": "amlops.dev/v1", "kind": "Webservice", "metadata": {"name": "svc"}, "spec": value})
    documents, errors = parse_documents("f.yaml", text.encode())
    assert not errors
    from controller.sources.validating import build_desired_state

    _, problems = build_desired_state(Path("/nonexistent"), documents, "r")
    assert problems  # a Webservice needs a cluster that is not declared here
    assert all(p.file == "f.yaml" and p.line >= 1 for p in problems)


def test_an_unchanged_tree_is_read_from_disk_once(tmp_path: Path) -> None:
    from controller.sources.loading import DocumentCache, read_documents

    for i in range(5):
        (tmp_path / f"m{i}.yaml").write_text(f"apiVersion: amlops.dev/v1\nkind: Model\nmetadata: {{name: m{i}}}\nspec: {{path: .}}\n")
    cache = DocumentCache()
    first, _ = read_documents(tmp_path, tmp_path, cache)
    assert cache.reads == 5
    second, _ = read_documents(tmp_path, tmp_path, cache)
    assert cache.reads == 5 and [d.data for d in second] == [d.data for d in first]
    (tmp_path / "m3.yaml").write_text("apiVersion: amlops.dev/v1\nkind: Model\nmetadata: {name: changed}\nspec: {path: .}\n")
    third, _ = read_documents(tmp_path, tmp_path, cache)
    assert cache.reads == 6
    assert {d.data["metadata"]["name"] for d in third} == {"m0", "m1", "m2", "changed", "m4"}


def test_a_reused_state_is_reloaded_when_a_referenced_file_changes(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.npy").write_bytes(b"one")
    (tmp_path / "m.yaml").write_text("apiVersion: amlops.dev/v1\nkind: Model\nmetadata: {name: m}\nspec: {path: model}\n")
    first = load_desired_state(tmp_path, revision="rev-a", reuse=True)
    assert load_desired_state(tmp_path, revision="rev-a", reuse=True) is first
    (tmp_path / "model" / "w.npy").write_bytes(b"two, longer")
    second = load_desired_state(tmp_path, revision="rev-a", reuse=True)
    assert second is not first and second.resources != first.resources
    assert load_desired_state(tmp_path, revision="rev-a") is not second  # no reuse unless asked
