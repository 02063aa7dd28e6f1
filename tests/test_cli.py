"""The amlops command line: plan between Git revisions, validate, apply → status → delete end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from core.repos import Repo  # tests/ is on sys.path (pytest's rootdir insertion)

from controller.cli import main
from controller.structs.manifests import Kind
from controller.structs.states import ResourceId


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> Repo:
    repo = Repo(tmp_path / "repo")
    repo.standard(replicas=2)
    _git(repo.root, "init", "-q", "-b", "main")
    _git(repo.root, "-c", "user.email=t@example.com", "-c", "user.name=t", "add", "-A")
    _git(repo.root, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "base")
    return repo


def _commit(repo: Repo, message: str) -> None:
    _git(repo.root, "-c", "user.email=t@example.com", "-c", "user.name=t", "add", "-A")
    _git(repo.root, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", message)


def test_plan_between_two_commits_shows_the_change_and_exits_2(git_repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    path = git_repo.root / "manifests/services/svc-a.yaml"
    path.write_text(path.read_text().replace("replicas: 2", "replicas: 3"))
    git_repo.write("manifests/services/svc-b.yaml", path.read_text().replace("svc-a", "svc-b"))
    _commit(git_repo, "scale and add")
    # An uncommitted edit must not leak into a plan between commits.
    path.write_text(path.read_text().replace("replicas: 3", "replicas: 9"))
    code = main(["plan", "--base", "HEAD~1", "--head", "HEAD", "--repo", str(git_repo.root), "--no-color"])
    out = capsys.readouterr().out
    assert code == 2
    assert "~ update in place Webservice/svc-a" in out
    assert "~ spec.replicas: 2 → 3" in out
    assert "+ create Webservice/svc-b" in out
    assert "Plan: 1 to add, 1 to change, 0 to replace, 0 to destroy." in out
    assert "replicas: 9" in path.read_text()  # the working tree is untouched


def test_plan_between_identical_commits_exits_0(git_repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "--base", "HEAD", "--head", "HEAD", "--repo", str(git_repo.root), "--output", "json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["summary"] == {"add": 0, "change": 0, "replace": 0, "destroy": 0}


def test_plan_markdown_between_commits_lists_the_removed_service(git_repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    git_repo.write("manifests/services/svc-b.yaml", (git_repo.root / "manifests/services/svc-a.yaml").read_text().replace("svc-a", "svc-b"))
    _commit(git_repo, "add b")
    git_repo.remove("manifests/services/svc-a.yaml")
    _commit(git_repo, "remove a")
    code = main(["plan", "--base", "HEAD~1", "--repo", str(git_repo.root), "--output", "markdown"])
    out = capsys.readouterr().out
    assert code == 2
    assert "| `-` destroy | `Webservice/svc-a` | manifest removed from manifests/services/svc-a.yaml |" in out


def test_plan_of_an_invalid_head_exits_1_with_file_and_line(git_repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    path = git_repo.root / "manifests/services/svc-a.yaml"
    path.write_text(path.read_text().replace("replicas: 2", "replicas: 0"))
    _commit(git_repo, "broken")
    code = main(["plan", "--base", "HEAD~1", "--repo", str(git_repo.root)])
    err = capsys.readouterr().err
    assert code == 1
    assert "manifests/services/svc-a.yaml:12: Webservice svc-a: spec.replicas:" in err


def test_validate_exit_codes_and_messages(git_repo: Repo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(git_repo.root)
    assert main(["validate", "manifests"]) == 0
    assert "5 resources valid" in capsys.readouterr().out
    path = git_repo.root / "manifests/model.yaml"
    path.write_text(path.read_text().replace("path: linear", "path: nowhere"))
    assert main(["validate", "manifests"]) == 1
    assert "manifests/model.yaml:6: Model linear: spec.path: manifests/nowhere does not exist" in capsys.readouterr().err


def test_plan_against_an_empty_state_dir_creates_everything(git_repo: Repo, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(git_repo.root)
    code = main(["plan", "manifests", "--state-dir", str(tmp_path / "state"), "--output", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 2
    assert [c["action"] for c in data["changes"]] == ["create"] * 5


def test_history_of_a_fresh_state_dir_is_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--state-dir", str(tmp_path / "s"), "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


E2E_SERVICE = """\
apiVersion: amlops.dev/v1
kind: Webservice
metadata:
  name: svc-e2e
spec:
  cluster: aks-cpu
  models:
    - linear
  sourceDirectory: ../src
  entryScript: score.py
  replicas: 1
  resources:
    cpu: 0.1
    memoryGb: 0.5
"""


def test_apply_then_status_then_delete_with_the_local_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    repo = Repo(tmp_path / "repo")
    repo.standard(services=())
    repo.remove("manifests/environment.yaml")  # the current interpreter: no venv build offline
    repo.write("manifests/services/svc-e2e.yaml", E2E_SERVICE)
    state = str(tmp_path / "state")
    monkeypatch.chdir(repo.root)
    try:
        # A successful apply exits 0, as terraform apply does (2 used to look like a failure to CI).
        assert main(["apply", "manifests", "--state-dir", state, "--yes", "--no-color"]) == 0, capsys.readouterr()
        out = capsys.readouterr().out
        assert "+ create Webservice/svc-e2e" in out and "Apply applied: 4 of 4 change(s) succeeded" in out

        # Level-triggered and idempotent: a second apply finds nothing to do (0 with --detailed-exitcode too).
        assert main(["apply", "manifests", "--state-dir", state, "--yes", "--detailed-exitcode"]) == 0
        assert "No changes." in capsys.readouterr().out

        assert main(["status", "--state-dir", state, "--output", "json"]) == 0
        status = json.loads(capsys.readouterr().out)
        service = next(r for r in status["resources"] if r["name"] == "svc-e2e")
        assert service["replicas"] == {"ready": 1, "desired": 1}
        assert service["modelVersions"] == ["linear:1"]
        assert any(c["type"] == "Ready" and c["status"] for c in service["conditions"])
        assert status["lastAppliedRevision"] == "working-tree"

        assert main(["keys", "svc-e2e", "--state-dir", state, "--output", "json"]) == 0
        keys = json.loads(capsys.readouterr().out)
        request = urllib.request.Request(service["scoringUri"], data=json.dumps({"data": [[1, 2]]}).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {keys['primaryKey']}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read()) == [[5.0]]

        assert main(["history", "--state-dir", state]) == 0
        history = capsys.readouterr().out
        assert "working-tree         applied     +4 ~0 -/+0 -0" in history
    finally:
        assert main(["delete", "Webservice/svc-e2e", "--state-dir", state, "--yes"]) == 0
    assert "- destroy Webservice/svc-e2e" in capsys.readouterr().out
    assert main(["status", "--state-dir", state, "--output", "json"]) == 0
    assert all(r["name"] != "svc-e2e" for r in json.loads(capsys.readouterr().out)["resources"])

    # A folder-wide delete keeps what deletionPolicy: Retain protects, unless told otherwise.
    assert main(["delete", "manifests", "--state-dir", state, "--yes"]) == 0
    captured = capsys.readouterr()
    assert "AksCluster/aks-cpu: kept (deletionPolicy: Retain; --include-retained deletes it too)" in captured.err
    assert main(["status", "--state-dir", state, "--output", "json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)["resources"]}
    assert "aks-cpu" in names and "linear" not in names
    assert main(["delete", "manifests", "--state-dir", state, "--yes", "--include-retained"]) == 0
    assert "- destroy AksCluster/aks-cpu" in capsys.readouterr().out


def test_delete_skips_what_another_controller_created_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.backends.base import ApplyContext
    from controller.backends.local import LocalBackend
    from controller.sources.loading import load_desired_state

    repo = Repo(tmp_path / "repo")
    repo.standard(services=())
    state = tmp_path / "state"
    desired = load_desired_state(repo.root, "manifests", "r1")
    theirs = LocalBackend(state, "someone-else")
    theirs.create(desired.resources[ResourceId(Kind.AKS_CLUSTER, "aks-cpu")], ApplyContext("someone-else", "r1", str(repo.root), desired))
    theirs.close()
    monkeypatch.chdir(repo.root)

    assert main(["delete", "AksCluster/aks-cpu", "--state-dir", str(state), "--yes"]) == 1
    assert "AksCluster/aks-cpu: not created by controller 'amlops'; skipped (--force deletes it anyway)" in capsys.readouterr().err
    assert LocalBackend(state).read().get(Kind.AKS_CLUSTER, "aks-cpu") is not None

    assert main(["delete", "AksCluster/aks-cpu", "--state-dir", str(state), "--yes", "--force"]) == 0
    assert LocalBackend(state).read().get(Kind.AKS_CLUSTER, "aks-cpu") is None


def test_apply_and_delete_refuse_while_a_controller_holds_the_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.runtime.locking import LeaderLock

    repo = Repo(tmp_path / "repo")
    repo.standard(services=())
    state = tmp_path / "state"
    state.mkdir()
    running = LeaderLock(state)
    assert running.try_acquire()
    monkeypatch.chdir(repo.root)
    try:
        assert main(["apply", "manifests", "--state-dir", str(state), "--yes"]) == 1
        assert "is reconciling" in capsys.readouterr().err
        assert main(["delete", "manifests", "--state-dir", str(state), "--yes"]) == 1
        assert "is reconciling" in capsys.readouterr().err
    finally:
        running.release()
    assert main(["apply", "manifests", "--state-dir", str(state), "--yes", "--detailed-exitcode"]) == 2


def test_status_keys_and_logs_with_invalid_manifests_say_so_and_fall_back_to_the_local_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo(tmp_path / "repo")
    repo.standard(services=())
    repo.remove("manifests/environment.yaml")  # the current interpreter: no venv build offline
    state = str(tmp_path / "state")
    monkeypatch.chdir(repo.root)
    assert main(["apply", "manifests", "--state-dir", state, "--yes"]) == 0
    capsys.readouterr()
    path = repo.root / "manifests/model.yaml"
    path.write_text(path.read_text().replace("path: linear", "path: nowhere"))

    assert main(["status", "--state-dir", state, "--output", "json"]) == 0
    captured = capsys.readouterr()
    assert "amlops status: the manifests in manifests are invalid (1 error(s); first: manifests/model.yaml:6" in captured.err
    assert "using the local backend only" in captured.err
    assert {"aks-cpu", "linear"} <= {r["name"] for r in json.loads(captured.out)["resources"]}
    assert all(r["backend"] == "local" for r in json.loads(captured.out)["resources"])

    assert main(["keys", "svc-none", "--state-dir", state]) == 1
    err = capsys.readouterr().err
    assert "the manifests in manifests are invalid" in err and "service 'svc-none' has no keys" in err


def test_status_path_reads_the_manifests_named_and_without_any_shows_the_local_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo(tmp_path / "repo")
    repo.standard(services=())
    repo.remove("manifests/environment.yaml")
    state = str(tmp_path / "state")
    monkeypatch.chdir(repo.root)
    assert main(["apply", "manifests", "--state-dir", state, "--yes"]) == 0
    capsys.readouterr()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no manifests/ here: the local backend alone, as before --path existed
    assert main(["status", "--state-dir", state, "--output", "json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "aks-cpu" in {r["name"] for r in json.loads(captured.out)["resources"]}

    assert main(["status", "--path", str(repo.root / "manifests"), "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "AksCluster/aks-cpu" in out and "Ready" in out


def test_logs_follow_is_documented_as_local_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["logs", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "local backend only" in help_text and "--path PATH" in help_text


def test_apply_exits_0_on_success_and_2_only_with_detailed_exitcode_when_it_changed_something(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo(tmp_path / "repo")
    repo.standard(services=())
    repo.remove("manifests/environment.yaml")  # no service, so no process and no environment to build
    state = str(tmp_path / "state")
    monkeypatch.chdir(repo.root)
    assert main(["apply", "manifests", "--state-dir", state, "--yes", "--detailed-exitcode"]) == 2
    assert "+ create AksCluster/" in capsys.readouterr().out
    repo.standard(services=(), agents=2)
    repo.remove("manifests/environment.yaml")
    assert main(["apply", "manifests", "--state-dir", state, "--yes"]) == 0
    assert "~ update in place AksCluster/aks-cpu" in capsys.readouterr().out
    assert main(["apply", "manifests", "--state-dir", state, "--yes", "--detailed-exitcode"]) == 0
    assert "No changes." in capsys.readouterr().out


def test_the_same_manifests_name_one_source_whichever_folder_amlops_runs_from(git_repo: Repo) -> None:
    from controller.core.connecting import source_for as source_of

    root = git_repo.root
    inside = source_of(root, ".")
    assert inside == f"{root}//."
    # From the repo's parent (`amlops apply repo`): the Git work tree, not the working directory, names it.
    assert source_of(root.parent, "repo") == inside
    assert source_of(root.parent, "repo/manifests") == source_of(root, "manifests") == f"{root}//manifests"
    # Outside any Git work tree the folder holding the manifests is the source, from wherever it is named.
    plain = root.parent / "plain"
    (plain / "manifests").mkdir(parents=True)
    assert source_of(plain, ".") == f"{plain}//."
    assert source_of(plain, "manifests") == source_of(plain.parent, "plain/manifests") == f"{plain}/manifests//."
