"""A core install (no extras) can validate, plan and show status: only declared dependencies are imported.

The commands run in a child interpreter whose import system refuses every third-party module that
the ``amlops`` distribution does not pull in without extras (its ``Requires-Dist`` closure), so a
module that works only because an extra happens to be installed here fails as it would after
``pip install amlops`` into a fresh virtual environment. ``.ci/run`` does the real thing: it builds
the wheel and installs it into a fresh venv.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]

_GUARD = r"""
import importlib.abc, importlib.machinery, json, sys
allowed = set(json.loads(sys.argv[1]))
stdlib = set(sys.stdlib_module_names)
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in stdlib or top in allowed or top.startswith("_"):
            return None
        raise ModuleNotFoundError(f"No module named {name!r} (not a declared dependency of amlops)", name=name)
sys.meta_path.insert(0, _Refuse())
sys.argv = ["amlops", *sys.argv[2:]]
from controller.cli import main
raise SystemExit(main())
"""


def _core_closure() -> set[str]:
    """Distribution names that ``pip install amlops`` (no extras) installs, amlops included."""
    seen: set[str] = set()
    todo = ["amlops"]
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
    return seen


def _allowed_modules() -> list[str]:
    closure = _core_closure()
    modules = {"controller"}
    for module, dists in metadata.packages_distributions().items():
        if any(d.lower().replace("_", "-") in closure for d in dists):
            modules.add(module)
    return sorted(modules)


def _amlops(*args: str, cwd: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _GUARD, json.dumps(_allowed_modules()), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "AMLOPS_STATE_DIR": str(state), "HOME": str(state)})


def test_the_guard_refuses_what_only_an_extra_installs(tmp_path: Path) -> None:
    # Without this the test below could pass by never refusing anything.
    result = subprocess.run([sys.executable, "-c", _GUARD.replace("from controller.cli import main\nraise SystemExit(main())",
                                                                  "import azureml.core"),
                             json.dumps(_allowed_modules())], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "not a declared dependency of amlops" in result.stderr


def test_a_core_install_validates_plans_and_shows_status_of_the_example(tmp_path: Path) -> None:
    for command in (["validate", "manifests"], ["plan", "manifests", "--no-color"], ["status", "--path", "manifests"]):
        result = _amlops(*command, cwd=REPO, state=tmp_path / "state")
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode in (0, 2), (command, result.stdout, result.stderr)
