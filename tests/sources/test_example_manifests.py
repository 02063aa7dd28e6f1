"""The worked example in manifests/ is valid, and the JSON Schemas in schemas/ match the models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def amlops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_example_manifests_validate() -> None:
    result = amlops("validate", "manifests/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5 resources valid"


def test_validate_exits_1_and_prints_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: amlops.dev/v1\nkind: Model\nmetadata: {name: m}\nspec: {path: nowhere}\n---\n"
        "apiVersion: amlops.dev/v1\nkind: Model\nmetadata: {name: n}\nspec: {path: ., tag: {}}\n"
    )
    result = amlops("validate", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "bad.yaml:4: Model m: spec.path: nowhere does not exist",
        "bad.yaml:9: Model n: spec.tag: unknown field; did you mean 'tags'?",
    ]


def test_schemas_are_up_to_date() -> None:
    result = amlops("schemas", "export", "--check")
    assert result.returncode == 0, result.stderr


def test_example_manifests_carry_the_schema_modeline() -> None:
    for path in (REPO / "manifests").rglob("*.yaml"):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        schema = (path.parent / first.split("$schema=", 1)[1]).resolve()
        assert schema.is_file(), (path, schema)


def test_the_readme_manifest_reference_is_current() -> None:
    from controller.structs.schemas import reference_markdown

    readme = (REPO / "README.md").read_text()
    start = readme.index("-->\n", readme.index("<!-- reference:start")) + 4
    end = readme.index("<!-- reference:end -->")
    assert readme[start:end] == reference_markdown()
