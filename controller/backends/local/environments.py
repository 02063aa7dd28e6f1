"""Resolving an Environment manifest to a Python interpreter that can run its services.

The running interpreter is used when it already satisfies the requirements; otherwise a venv is
built once per requirements hash under the state directory and reused. The venv sees the running
interpreter's packages (a ``.pth`` file), so only what is missing gets installed.

Some requirements cannot or need not be honoured literally on a workstation. Each substitution is
reported (a ``Substituted`` condition and a log line), never done silently:

* ``python=3.6.2``-style pins: services run on the running Python.
* ``azureml-defaults`` / ``azureml-inference-server-http``: amlops' scoring host plays their part.
* ``tensorflow-gpu``: the same package is called ``tensorflow`` since 2.1.
* a TensorFlow 1.x pin (``tensorflow-gpu=1.12``): served by the installed TensorFlow 2 in
  v1-compatibility mode (``--tensorflow-compat v1``), unless ``tensorflowCompat`` says otherwise.
* ``cudatoolkit`` / ``cudnn`` conda packages: CUDA comes with ``tensorflow[and-cuda]`` wheels.

``EnvironmentHandler`` is the Environment kind's handler: it resolves and records the result.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import platform
import shutil
import site
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from controller.backends.base import ApplyContext, ProgressFn, no_progress
from controller.backends.local.machines import manifest_dir
from controller.backends.local.records import RecordedKind
from controller.structs.errors import PermanentError, TransientError
from controller.structs.logformats import event_logger
from controller.structs.manifests import EnvironmentManifest, EnvironmentSpec, Kind
from controller.structs.states import Condition, ConditionType, DesiredResource

log = event_logger(__name__)

PROVIDED_BY_SCORING_HOST = frozenset({"azureml-defaults", "azureml-inference-server-http"})
CUDA_CONDA_PACKAGES = frozenset({"cudatoolkit", "cudnn", "cuda-toolkit", "cuda"})
CONDA_TOOLING = frozenset({"pip", "setuptools", "wheel", "conda"})
_READY_MARKER = ".amlops-ready"


@dataclass(frozen=True)
class Substitution:
    """One requirement served by something else than what it literally asks for."""

    requested: str
    provided: str
    reason: str

    def message(self) -> str:
        """One human line: what was asked, what runs instead, why."""
        return f"{self.requested} → {self.provided} ({self.reason})"


@dataclass(frozen=True)
class Resolution:
    """How an environment runs: interpreter, what it had to install, and what was substituted."""

    python: str
    requirements: tuple[str, ...]
    substitutions: tuple[Substitution, ...] = ()
    tensorflow_compat: Literal["v1", "none"] = "none"
    venv: str | None = None
    environment_variables: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, as recorded in the state store."""
        return {
            "python": self.python,
            "requirements": list(self.requirements),
            "substitutions": [vars(s) for s in self.substitutions],
            "tensorflowCompat": self.tensorflow_compat,
            "venv": self.venv,
            "environmentVariables": dict(self.environment_variables),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Resolution:
        """The inverse of ``to_json``."""
        compat: Literal["v1", "none"] = "v1" if data.get("tensorflowCompat") == "v1" else "none"
        return cls(
            python=data["python"],
            requirements=tuple(data.get("requirements", ())),
            substitutions=tuple(Substitution(**s) for s in data.get("substitutions", ())),
            tensorflow_compat=compat,
            venv=data.get("venv"),
            environment_variables=dict(data.get("environmentVariables", {})),
        )


def current_interpreter() -> Resolution:
    """The resolution used by services that name no environment."""
    return Resolution(python=sys.executable, requirements=())


def _read_spec_file(root: Path, relative: str, what: str) -> str:
    path = (root / relative).resolve()
    try:
        return path.read_text()
    except OSError as exc:
        raise PermanentError(f"cannot read {what} {relative!r}: {exc.strerror}", reason="InvalidEnvironment") from exc


def collect_requirements(spec: EnvironmentSpec, root: Path) -> tuple[list[str], list[str]]:
    """``(conda dependencies, pip requirements)`` named by the spec, files read relative to ``root``."""
    conda: dict[str, Any] | None = spec.conda
    if spec.condaFile is not None:
        loaded = yaml.safe_load(_read_spec_file(root, spec.condaFile, "conda file"))
        conda = loaded if isinstance(loaded, dict) else {}
    conda_deps: list[str] = []
    pip: list[str] = []
    for dep in (conda or {}).get("dependencies") or []:
        if isinstance(dep, str):
            conda_deps.append(dep)
        elif isinstance(dep, dict):
            pip.extend(str(p) for p in dep.get("pip") or [])
    if spec.pipRequirements is not None:
        pip.extend(_read_spec_file(root, spec.pipRequirements, "pip requirements file").splitlines())
    pip.extend(spec.pip or [])
    return conda_deps, pip


def parse_requirement(text: str) -> Requirement | None:
    """A requirement from a conda or pip line, accepting conda's ``name=1.2`` and ``name 1.2`` forms.

    Returns None for lines that name no package (comments, pip options).
    """
    line = text.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    if "::" in line:  # conda channel prefix, e.g. conda-forge::numpy
        line = line.split("::", 1)[1]
    if " " in line and not any(op in line for op in "<>=!~;["):
        name, version = line.split(None, 1)
        line = f"{name}={version.strip()}"
    for i, ch in enumerate(line):
        # A single '=' is conda's fuzzy pin: 1.12 means 1.12.*.
        if ch == "=" and line[i - 1] not in "<>=!~" and (i + 1 >= len(line) or line[i + 1] != "="):
            version = line[i + 1 :].strip()
            if not version.endswith("*"):
                version += ".*"
            line = f"{line[:i]}=={version}"
            break
    try:
        return Requirement(line)
    except InvalidRequirement as exc:
        raise PermanentError(f"invalid requirement {text!r}: {exc}", reason="InvalidEnvironment") from exc


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name`` in the running interpreter, read from metadata only."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _admits_tensorflow_1(spec: SpecifierSet) -> bool:
    return bool(str(spec)) and any(spec.contains(f"1.{minor}.0", prereleases=True) for minor in range(16))


def substitute(
    conda_deps: Iterable[str], pip_reqs: Iterable[str], forced_compat: Literal["v1", "none"] | None = None
) -> tuple[list[Requirement], list[Substitution], Literal["v1", "none"]]:
    """Apply the substitutions listed in the module docstring.

    Returns the requirements still to satisfy, the substitutions made, and the TensorFlow
    compatibility mode (``forced_compat`` wins when given).
    """
    remaining: list[Requirement] = []
    subs: list[Substitution] = []
    compat: Literal["v1", "none"] = "none"
    running = platform.python_version()
    for source, lines in (("conda", conda_deps), ("pip", pip_reqs)):
        for line in lines:
            req = parse_requirement(line)
            if req is None or (req.marker is not None and not req.marker.evaluate()):
                continue
            name = canonicalize_name(req.name)
            if name == "python":
                if str(req.specifier) and not req.specifier.contains(running, prereleases=True):
                    subs.append(Substitution(line.strip(), f"python {running}", "services run on the running interpreter"))
                continue
            if source == "conda" and name in CONDA_TOOLING:
                continue
            if source == "conda" and name in CUDA_CONDA_PACKAGES:
                subs.append(Substitution(line.strip(), "CUDA libraries of the installed tensorflow", "conda CUDA packages are not installed locally"))
                continue
            if name in PROVIDED_BY_SCORING_HOST:
                subs.append(Substitution(line.strip(), "amlops scoring host", "amlops serves the scoring HTTP API itself"))
                continue
            if name == "tensorflow-gpu":
                subs.append(Substitution(line.strip(), "tensorflow", "tensorflow-gpu is named tensorflow since 2.1"))
                req = Requirement(str(req).replace(req.name, "tensorflow", 1))
                name = canonicalize_name("tensorflow")
            if name == "tensorflow" and _admits_tensorflow_1(req.specifier):
                have = installed_version("tensorflow")
                if have is None or not req.specifier.contains(have, prereleases=True):
                    provided = f"tensorflow {have} (v1 compatibility)" if have else "tensorflow 2 (v1 compatibility)"
                    subs.append(Substitution(line.strip(), provided, "TensorFlow 1.x is not installable on this Python"))
                    compat = "v1"
                    req = Requirement("tensorflow")
            remaining.append(req)
    if forced_compat is not None:
        compat = forced_compat
    return remaining, subs, compat


def unsatisfied(requirements: Iterable[Requirement]) -> list[Requirement]:
    """Requirements the running interpreter does not satisfy."""
    missing = []
    for req in requirements:
        have = installed_version(req.name)
        try:
            ok = have is not None and (not str(req.specifier) or req.specifier.contains(Version(have), prereleases=True))
        except InvalidVersion:
            ok = False
        if not ok:
            missing.append(req)
    return missing


def _parent_paths() -> list[str]:
    paths = [p for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)]
    paths.extend(site.getsitepackages())
    # The folder holding the ``controller`` package, so venv interpreters can run the scoring host.
    paths.append(str(Path(__file__).resolve().parents[3]))
    return list(dict.fromkeys(paths))


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def requirements_hash(requirements: Sequence[str]) -> str:
    """The cache key of a venv: requirements plus the interpreter they are installed for."""
    text = "\n".join(sorted(requirements)) + "\n" + sys.version
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_venv(requirements: Sequence[str], envs_dir: Path, progress: ProgressFn = no_progress) -> Path:
    """The interpreter of a venv holding ``requirements``, built once per requirements hash.

    The venv layers on the running interpreter's packages; only what those lack is downloaded.
    Built in a temporary folder and renamed, so a crash never leaves a half-built venv in use.
    """
    envs_dir.mkdir(parents=True, exist_ok=True)
    key = requirements_hash(requirements)
    final = envs_dir / key
    with open(envs_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per hash, across processes
        if (final / _READY_MARKER).exists():
            return _venv_python(final)
        staging = envs_dir / f"{key}.building"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        log.info("venv.build_started", hash=key, requirements=len(requirements))
        progress(f"creating venv {key}", 0.1)
        _run([sys.executable, "-m", "venv", "--without-pip", str(staging)], "create venv")
        purelib = subprocess.run(
            [str(_venv_python(staging)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        Path(purelib).mkdir(parents=True, exist_ok=True)
        (Path(purelib) / "amlops-parent.pth").write_text("\n".join(_parent_paths()) + "\n")
        # The venv is renamed after install; pip only needs to write into site-packages,
        # which lives under the venv folder and moves with it.
        staging.rename(final)
        if requirements:
            progress(f"installing {len(requirements)} requirements into venv {key}", 0.4)
            _run(
                [sys.executable, "-m", "pip", "--python", str(_venv_python(final)), "install",
                 "--no-input", "--disable-pip-version-check", *requirements],
                "install requirements",
            )
        (final / _READY_MARKER).write_text(json.dumps({"requirements": list(requirements)}))
        progress(f"venv {key} ready", 1.0)
        log.info("venv.build_finished", hash=key)
        return _venv_python(final)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise TransientError(f"could not {what}: " + " | ".join(tail))


def resolve_environment(
    spec: EnvironmentSpec, root: Path, envs_dir: Path, progress: ProgressFn = no_progress
) -> Resolution:
    """The interpreter and substitutions for ``spec``; builds a cached venv only when needed."""
    conda_deps, pip_reqs = collect_requirements(spec, root)
    remaining, subs, compat = substitute(conda_deps, pip_reqs, spec.tensorflowCompat)
    for sub in subs:
        log.info("environment.substituted", requested=sub.requested, provided=sub.provided, reason=sub.reason)
    missing = unsatisfied(remaining)
    requirements = tuple(str(r) for r in remaining)
    if not missing:
        return Resolution(sys.executable, requirements, tuple(subs), compat, None, dict(spec.environmentVariables))
    python = build_venv([str(r) for r in missing], envs_dir, progress)
    return Resolution(str(python), requirements, tuple(subs), compat, str(python.parent.parent), dict(spec.environmentVariables))


class EnvironmentHandler(RecordedKind):
    """Environment on the local backend: resolved to an interpreter (a cached venv when it must install)."""

    kind = Kind.ENVIRONMENT

    def apply(self, resource: DesiredResource, ctx: ApplyContext) -> tuple[list[Condition], dict[str, Any]]:
        """Resolve the environment; Substituted says which requirements run as something else."""
        manifest = resource.manifest
        assert isinstance(manifest, EnvironmentManifest)
        resolution = resolve_environment(manifest.spec, manifest_dir(resource, ctx), self.machine.state_dir / "envs",
                                         ctx.progress)
        conditions = []
        if resolution.substitutions:
            conditions.append(Condition(ConditionType.SUBSTITUTED, True, "Substituted",
                                        "; ".join(s.message() for s in resolution.substitutions)))
        return conditions, resolution.to_json()
