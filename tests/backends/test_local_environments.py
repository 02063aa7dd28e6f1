"""Environment resolution: the running interpreter when it fits, a cached venv otherwise, substitutions visible."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controller.backends.local import LocalBackend
from controller.backends.local.environments import (
    build_venv,
    parse_requirement,
    resolve_environment,
    substitute,
)
from controller.structs.manifests import EnvironmentSpec, Kind
from controller.structs.states import ConditionType

from .conftest import Repo, apply_all

WALKTHROUGH_CONDA = {
    "name": "project_environment",
    "dependencies": ["python=3.6.2", {"pip": ["azureml-defaults>=1.0.45", "numpy", "tensorflow-gpu=1.12"]}],
    "channels": ["conda-forge"],
}


def test_conda_pins_are_read_the_way_conda_means_them() -> None:
    assert str(parse_requirement("tensorflow-gpu=1.12")) == "tensorflow-gpu==1.12.*"
    assert str(parse_requirement("conda-forge::numpy 1.26")) == "numpy==1.26.*"
    assert str(parse_requirement("numpy>=1.2")) == "numpy>=1.2"
    assert parse_requirement("--extra-index-url https://x") is None
    assert parse_requirement("# comment") is None


def test_the_walkthrough_environment_runs_on_the_current_interpreter_with_each_substitution_reported(
    tmp_path: Path,
) -> None:
    resolution = resolve_environment(EnvironmentSpec(conda=WALKTHROUGH_CONDA), tmp_path, tmp_path / "envs")
    assert resolution.python == sys.executable and resolution.venv is None
    assert resolution.tensorflow_compat == "v1"
    requested = {s.requested: s.provided for s in resolution.substitutions}
    assert set(requested) == {"python=3.6.2", "azureml-defaults>=1.0.45", "tensorflow-gpu=1.12"}
    assert requested["azureml-defaults>=1.0.45"] == "amlops scoring host"
    assert "v1 compatibility" in requested["tensorflow-gpu=1.12"]
    assert sorted(resolution.requirements) == ["numpy", "tensorflow"]
    assert not (tmp_path / "envs").exists()


def test_tensorflow_compat_in_the_spec_wins() -> None:
    _reqs, _subs, compat = substitute([], ["tensorflow-gpu=1.12"], forced_compat="none")
    assert compat == "none"
    _reqs, subs, compat = substitute([], ["tensorflow>=2"], forced_compat="v1")
    assert compat == "v1" and subs == []


def test_a_venv_is_built_once_per_requirements_and_sees_amlops_and_installed_packages(tmp_path: Path) -> None:
    messages: list[str] = []
    python = build_venv(["numpy"], tmp_path / "envs", lambda m, f: messages.append(m))
    assert python.parent.parent.parent == tmp_path / "envs"
    done = subprocess.run([str(python), "-c", "import numpy, controller.structs; import sys; print(sys.prefix)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(python.parent.parent)
    assert any("installing" in m for m in messages)
    messages.clear()
    assert build_venv(["numpy"], tmp_path / "envs", lambda m, f: messages.append(m)) == python
    assert messages == []  # cached: nothing rebuilt


@pytest.mark.parametrize("tf_compat", [None])
def test_an_applied_environment_reports_substitutions_as_a_condition(
    backend: LocalBackend, repo: Repo, tf_compat: str | None
) -> None:
    repo.write("environments/myenv.yml", "name: e\ndependencies:\n- python=3.6.2\n- pip:\n  - azureml-defaults>=1.0.45\n  - numpy\n")
    repo.write("environments/myenv.yaml", '{"apiVersion": "amlops.dev/v1", "kind": "Environment", "metadata": {"name": "myenv"},'
               ' "spec": {"condaFile": "myenv.yml"}}')
    repo.service(replicas=1, environment="myenv")
    apply_all(backend, repo)
    env = backend.read().get(Kind.ENVIRONMENT, "myenv")
    assert env is not None
    sub = env.condition(ConditionType.SUBSTITUTED)
    assert sub is not None and sub.status and "azureml-defaults" in sub.message and "python=3.6.2" in sub.message
    svc = backend.read().get(Kind.WEBSERVICE, "numpy-svc")
    assert svc is not None and svc.condition(ConditionType.SUBSTITUTED) is not None
