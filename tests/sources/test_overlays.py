"""Overlays: one base, one folder per environment (a kustomization.yaml subset), rendered with every
field still located at the file and line that set it: the base's manifest, the patch, or the kustomization."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from controller.sources.loading import load_desired_state
from controller.sources.overlays import render_overlay
from controller.structs.errors import ValidationFailed
from controller.structs.manifests import Kind, WebserviceManifest, WorkspaceManifest

AUTHOR = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
          "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}

BASE = {
    "base/workspace.yaml": """\
        apiVersion: amlops.dev/v1
        kind: Workspace
        metadata:
          name: ws
        spec:
          backend: local
        """,
    "base/cluster.yaml": """\
        apiVersion: amlops.dev/v1
        kind: AksCluster
        metadata:
          name: gpu
        spec:
          vmSize: Standard_NC6
          agentCount: 2
        """,
    "base/env.yaml": """\
        apiVersion: amlops.dev/v1
        kind: Environment
        metadata:
          name: tf
        spec:
          pip: [numpy]
        """,
    "base/models/scaler.yaml": """\
        apiVersion: amlops.dev/v1
        kind: Model
        metadata:
          name: scaler
        spec:
          path: scaler
        """,
    "base/models/scaler/scale.npy": "not really numpy",
    "base/src/score.py": "def init():\n    pass\n",
    "base/services/svc.yaml": """\
        apiVersion: amlops.dev/v1
        kind: Webservice
        metadata:
          name: digits
        spec:
          cluster: gpu
          environment: tf
          models:
            - scaler:1
            - name: scaler
          sourceDirectory: ../src
          entryScript: score.py
          replicas: 1
          resources: {cpu: 0.5, memoryGb: 1, gpu: 1}
        """,
    "base/kustomization.yaml": """\
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        resources:
          - workspace.yaml
          - cluster.yaml
          - env.yaml
          - models
          - services/svc.yaml
        """,
    "staging/kustomization.yaml": """\
        resources:
          - ../base
        namePrefix: staging-
        commonLabels:
          env: staging
        patches:
          - target: {kind: Workspace, name: ws}
            patch: |-
              spec:
                workspaceName: ml-staging
        """,
    "prod/kustomization.yaml": """\
        resources:
          - ../base
        namePrefix: prod-
        nameSuffix: -eu
        commonLabels:
          env: prod
          team: vision
        patches:
          - path: scale.yaml
          - target:
              kind: AksCluster
              name: gpu
            patch: |-
              - op: replace
                path: /spec/vmSize
                value: Standard_NC24
              - op: add
                path: /spec/agentCount
                value: 4
          - target: {kind: Workspace}
            patch: '{"spec": {"workspaceName": "ml-prod"}}'
        """,
    "prod/scale.yaml": """\
        apiVersion: amlops.dev/v1
        kind: Webservice
        metadata:
          name: digits
        spec:
          replicas: 3
          resources: {cpu: 1, memoryGb: 2, gpu: 1}
        """,
}


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = write(tmp_path / "repo", BASE)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base, staging, prod")
    return root


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, env={**os.environ, **AUTHOR}, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def amlops(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def errors_of(root: Path, path: str) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        load_desired_state(root, path)
    return [str(e) for e in caught.value.errors]


def test_each_environment_renders_the_base_with_its_own_names_sizes_and_workspace(repo: Path) -> None:
    prod = load_desired_state(repo, "prod")
    names = sorted(str(rid) for rid in prod.resources)
    assert names == ["AksCluster/prod-gpu-eu", "Environment/prod-tf-eu", "Model/prod-scaler-eu",
                     "Webservice/prod-digits-eu", "Workspace/prod-ws-eu"]
    service = prod.get(Kind.WEBSERVICE, "prod-digits-eu")
    assert service is not None and isinstance(service.manifest, WebserviceManifest)
    spec = service.manifest.spec
    # References follow the renamed resources, whatever form they were written in.
    assert (spec.cluster, spec.environment) == ("prod-gpu-eu", "prod-tf-eu")
    assert [str(m) for m in spec.models] == ["prod-scaler-eu:1", "prod-scaler-eu"]
    assert spec.replicas == 3 and spec.resources.cpu == 1
    assert service.manifest.metadata.labels == {"env": "prod", "team": "vision"}
    # Paths still resolve against the base's folders.
    assert service.files == {"sourceDirectory": "base/src", "entryScript": "base/src/score.py"}
    assert prod.get(Kind.MODEL, "prod-scaler-eu").files == {"path": "base/models/scaler"}  # type: ignore[union-attr]
    cluster = prod.get(Kind.AKS_CLUSTER, "prod-gpu-eu")
    assert cluster is not None and cluster.manifest.spec.vmSize == "Standard_NC24"  # type: ignore[union-attr]
    assert cluster.manifest.spec.agentCount == 4  # type: ignore[union-attr]
    workspace = prod.get(Kind.WORKSPACE, "prod-ws-eu")
    assert isinstance(workspace.manifest, WorkspaceManifest)  # type: ignore[union-attr]
    assert workspace.manifest.spec.workspaceName == "ml-prod"  # type: ignore[union-attr]

    staging = load_desired_state(repo, "staging")
    assert sorted(rid.name for rid in staging.resources) == ["staging-digits", "staging-gpu", "staging-scaler",
                                                              "staging-tf", "staging-ws"]
    svc = staging.get(Kind.WEBSERVICE, "staging-digits")
    assert svc is not None and svc.manifest.spec.replicas == 1  # type: ignore[union-attr]
    assert staging.get(Kind.WORKSPACE, "staging-ws").manifest.spec.workspaceName == "ml-staging"  # type: ignore[union-attr]
    # The same base files are deployed in both environments.
    assert svc.content_digests["sourceDirectory"] == service.content_digests["sourceDirectory"]  # type: ignore[union-attr]


def test_a_mistake_in_the_base_is_reported_at_the_base_file_and_line(repo: Path) -> None:
    svc = repo / "base/services/svc.yaml"
    svc.write_text(svc.read_text().replace("replicas: 1", "replicas: 1\n  scoringTimeoutMs: -5"))
    errors = errors_of(repo, "staging")
    assert errors == ["base/services/svc.yaml:14: Webservice staging-digits: spec.scoringTimeoutMs: must be > 0 (got -5)"]


def test_a_mistake_in_a_patch_file_is_reported_at_the_patch(repo: Path) -> None:
    (repo / "prod/scale.yaml").write_text((repo / "prod/scale.yaml").read_text().replace("replicas: 3", "replicas: many"))
    assert errors_of(repo, "prod") == [
        "prod/scale.yaml:6: Webservice prod-digits-eu: spec.replicas: must be a whole number (got 'many')"]


def test_a_mistake_in_an_inline_patch_is_reported_at_its_line_in_the_kustomization(repo: Path) -> None:
    k = repo / "prod/kustomization.yaml"
    k.write_text(k.read_text().replace("value: 4", "value: four"))
    assert "prod/kustomization.yaml:19: AksCluster prod-gpu-eu: spec.agentCount: must be a whole number (got 'four')" in (
        errors_of(repo, "prod"))


def test_a_name_too_long_after_the_prefix_points_at_the_prefix(repo: Path) -> None:
    k = repo / "prod/kustomization.yaml"
    k.write_text(k.read_text().replace("namePrefix: prod-", "namePrefix: production-westeurope-blue-"))
    errors = errors_of(repo, "prod")
    assert len(errors) == 1
    assert errors[0].startswith("prod/kustomization.yaml:3: Webservice production-westeurope-blue-digits-eu: metadata.name:")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("path: /spec/vmSize", "path: /spec/vmsize/x",
         "prod/kustomization.yaml:15: cannot patch AksCluster gpu: 'vmsize' does not exist"),
        ("name: gpu\n", "name: cpu\n",
         "prod/kustomization.yaml:10: the patch matches no resource (kind AksCluster, name cpu); resources here: "
         "AksCluster/gpu, Environment/tf, Model/scaler, Webservice/digits, Workspace/ws"),
        ("op: add", "op: append",
         "prod/kustomization.yaml:17: cannot patch AksCluster gpu: op must be one of add, remove, replace, move, copy, test (got 'append')"),
        ("commonLabels:", "images: []\ncommonLabels:",
         "prod/kustomization.yaml:5: Kustomization: images: Kustomize field 'images' is not supported by amlops "
         "(supported: resources, patches, namePrefix, nameSuffix, commonLabels)"),
        ("  - ../base", "  - ../../outside",
         "prod/kustomization.yaml:2: Kustomization: resources[0]: leaves the repository (got '../../outside')"),
        ("  - ../base", "  - https://github.com/acme/base",
         "prod/kustomization.yaml:2: Kustomization: resources[0]: remote bases are not supported "
         "(got 'https://github.com/acme/base'); vendor the base into this repository"),
        ("  - path: scale.yaml", "  - path: missing.yaml",
         "prod/kustomization.yaml:9: Kustomization: patches[0].path: prod/missing.yaml does not exist"),
    ],
)
def test_kustomization_mistakes_name_the_kustomization_line(repo: Path, old: str, new: str, expected: str) -> None:
    k = repo / "prod/kustomization.yaml"
    assert old in k.read_text()
    k.write_text(k.read_text().replace(old, new))
    assert expected in errors_of(repo, "prod")


def test_kustomizations_that_include_each_other_are_refused(repo: Path) -> None:
    base = repo / "base/kustomization.yaml"
    base.write_text(base.read_text() + "  - ../prod\n")
    errors = errors_of(repo, "prod")
    assert any("kustomizations include each other: prod -> base -> prod" in e for e in errors)


def test_json_patch_operations_and_merge_patch_deletes_keep_locations(tmp_path: Path) -> None:
    root = write(tmp_path / "r", {
        "base/kustomization.yaml": "resources: [svc.yaml, cluster.yaml, models.yaml]\n",
        "base/cluster.yaml": BASE["base/cluster.yaml"],
        "base/models.yaml": """\
            apiVersion: amlops.dev/v1
            kind: Model
            metadata: {name: a}
            spec: {path: .}
            ---
            apiVersion: amlops.dev/v1
            kind: Model
            metadata: {name: b}
            spec: {path: .}
            """,
        "base/svc.yaml": """\
            apiVersion: amlops.dev/v1
            kind: Webservice
            metadata: {name: svc}
            spec:
              cluster: gpu
              models: [a]
              entryScript: score.py
              replicas: 1
              description: to be removed
              tags: {tier: gold}
            """,
        "base/score.py": "",
        "env/kustomization.yaml": """\
            resources: [../base]
            patches:
              - target: {kind: Webservice, name: sv.*}
                path: ops.yaml
              - patch: |-
                  apiVersion: amlops.dev/v1
                  kind: Webservice
                  metadata: {name: svc}
                  spec:
                    description: null
                    tags: {owner: ml}
            """,
        "env/ops.yaml": """\
            - op: test
              path: /spec/replicas
              value: 1
            - op: add
              path: /spec/models/0
              value: b
            - op: copy
              from: /spec/tags/tier
              path: /spec/tags/copied
            - op: move
              from: /spec/replicas
              path: /spec/maxQueueWaitMs
            - op: add
              path: /spec/replicas
              value: -1
            """,
    })
    documents, errors = render_overlay(root, root / "env")
    assert errors == []
    svc = next(d for d in documents if d.data["kind"] == "Webservice")
    assert svc.data["spec"]["models"] == ["b", "a"]
    assert svc.data["spec"]["tags"] == {"tier": "gold", "copied": "gold", "owner": "ml"}
    assert "description" not in svc.data["spec"] and svc.data["spec"]["maxQueueWaitMs"] == 1
    assert errors_of(root, "env") == ["env/ops.yaml:15: Webservice svc: spec.replicas: must be ≥ 1 (got -1)"]


def test_a_failing_json_patch_test_changes_nothing_and_says_where(tmp_path: Path) -> None:
    root = write(tmp_path / "r", {
        "base/kustomization.yaml": "resources: [cluster.yaml]\n",
        "base/cluster.yaml": BASE["base/cluster.yaml"],
        "env/kustomization.yaml": """\
            resources: [../base]
            patches:
              - target: {kind: AksCluster}
                patch: |-
                  - op: replace
                    path: /spec/agentCount
                    value: 9
                  - op: test
                    path: /spec/vmSize
                    value: Standard_NC12
            """,
    })
    documents, errors = render_overlay(root, root / "env")
    assert [str(e) for e in errors] == [
        "env/kustomization.yaml:10: cannot patch AksCluster gpu: test failed: /spec/vmSize is 'Standard_NC6', not 'Standard_NC12'"]
    assert documents[0].data["spec"]["agentCount"] == 2


def test_a_plain_folder_walk_refuses_overlays_instead_of_loading_them_twice(repo: Path) -> None:
    errors = errors_of(repo, ".")
    assert errors == [
        "base/kustomization.yaml:1: a kustomization inside a folder of plain manifests: point amlops at the "
        "overlay's folder itself (e.g. --path prod), which renders it",
        "prod/kustomization.yaml:1: a kustomization inside a folder of plain manifests: point amlops at the "
        "overlay's folder itself (e.g. --path prod), which renders it",
        "staging/kustomization.yaml:1: a kustomization inside a folder of plain manifests: point amlops at the "
        "overlay's folder itself (e.g. --path prod), which renders it",
    ]


def test_validate_render_and_render_print_the_rendered_manifests(repo: Path, tmp_path: Path) -> None:
    import yaml

    done = amlops(repo, "validate", "--render", "prod")
    assert done.returncode == 0, done.stderr
    assert "5 resources valid" in done.stdout
    documents = [d for d in yaml.safe_load_all(done.stdout.split("5 resources valid")[0]) if d]
    service = next(d for d in documents if d["kind"] == "Webservice")
    assert service["metadata"] == {"name": "prod-digits-eu", "labels": {"env": "prod", "team": "vision"}}
    assert service["spec"]["replicas"] == 3 and service["spec"]["cluster"] == "prod-gpu-eu"
    assert "# Source: base/services/svc.yaml:1 (patched by prod/kustomization.yaml, prod/scale.yaml)" in done.stdout

    # From outside the repository, the overlay still reaches its base (the Git work tree is the boundary).
    (repo / "prod/scale.yaml").write_text((repo / "prod/scale.yaml").read_text().replace("replicas: 3", "replicas: 0"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = amlops(elsewhere, "render", str(repo / "prod"))
    assert done.returncode == 1
    assert "replicas: 0" in done.stdout
    assert done.stderr.strip() == "prod/scale.yaml:6: Webservice prod-digits-eu: spec.replicas: must be ≥ 1 (got 0)"


def test_promotion_is_a_commit_to_the_environment_folder_and_plan_shows_only_it(repo: Path, tmp_path: Path) -> None:
    git(repo, "checkout", "-q", "-b", "promote")
    (repo / "prod/scale.yaml").write_text((repo / "prod/scale.yaml").read_text().replace("replicas: 3", "replicas: 5"))
    git(repo, "commit", "-qam", "prod: 5 replicas")
    prod = amlops(repo, "plan", "--base", "main", "--head", "promote", "--path", "prod", "--output", "json", "--no-color")
    assert prod.returncode == 2, prod.stderr
    changes = [c for c in json.loads(prod.stdout)["changes"] if c["action"] != "no-op"]
    assert [(c["kind"], c["name"], c["action"]) for c in changes] == [("Webservice", "prod-digits-eu", "update")]
    staging = amlops(repo, "plan", "--base", "main", "--head", "promote", "--path", "staging", "--no-color")
    assert staging.returncode == 0, staging.stdout + staging.stderr

    fresh = amlops(repo, "plan", "prod", "--state-dir", str(tmp_path / "state"), "--no-color")
    assert fresh.returncode == 2, fresh.stderr
    assert "prod-digits-eu" in fresh.stdout and "prod-gpu-eu" in fresh.stdout and "digits\n" not in fresh.stdout


REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_the_documented_environments_render_the_worked_example(environment: str) -> None:
    state = load_desired_state(REPO_ROOT, f"docs/examples/environments/{environment}")
    names = sorted(rid.name for rid in state.resources if rid.kind is Kind.WEBSERVICE)
    assert names == [f"{environment}-aks-dnn-mnist"]
    service = state.get(Kind.WEBSERVICE, f"{environment}-aks-dnn-mnist")
    assert service is not None and service.manifest.spec.cluster == f"{environment}-aks-gpu"  # type: ignore[union-attr]
    assert service.manifest.spec.replicas == (1 if environment == "staging" else 6)  # type: ignore[union-attr]
    assert service.files["entryScript"] == "manifests/src/score.py"


def test_an_edit_in_the_base_changes_a_watched_overlays_revision(repo: Path) -> None:
    from controller.sources.watching import FolderSource

    source = FolderSource(repo, path="prod")
    before = source.fetch().revision
    assert source.fetch().revision == before
    cluster = repo / "base/cluster.yaml"
    cluster.write_text(cluster.read_text().replace("agentCount: 2", "agentCount: 3"))
    assert source.fetch().revision != before
