"""Backend calls per no-op reconcile, against the local backend (and the Azure ML emulator when it can count).

A repo is applied once; then reconciles of the unchanged repo are run with the backend wrapped in a
counting proxy (and its store too, whose list queries are the local backend's "API calls"). Two
repo sizes show whether calls grow with resources (they should not: one list per kind) and that a
no-op reconcile writes nothing (no create/update/delete, no store writes).

Services here use a trivial entry script (no TensorFlow) and no GPU, so applying them is cheap.
The counting proxy is measurement only: it forwards every call unchanged.

Run alone: ``python -m benchmarks.calls [--quick]``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.reports import Skipped, heading, print_machine, table
from benchmarks.workfolders import work_folder

WRITE_METHODS = {"create", "update", "delete"}
CONTROLLER = "amlops-bench"


class Counting:
    """Forwards attribute access to ``target``; counts each method call by name."""

    def __init__(self, target: Any, counts: collections.Counter[str], prefix: str = "") -> None:
        self._target = target
        self._counts = counts
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if callable(value) and not name.startswith("__"):
            counts, key = self._counts, self._prefix + name

            def counted(*args: Any, **kwargs: Any) -> Any:
                counts[key] += 1
                return value(*args, **kwargs)

            return counted
        return value


def write_repo(root: Path, services: int) -> None:
    """One workspace, one CPU cluster, two environments, three models, ``services`` trivial services."""
    if root.exists():
        shutil.rmtree(root)
    for folder in ("clusters", "environments", "models", "services", "src"):
        (root / folder).mkdir(parents=True)
    (root / "workspace.yaml").write_text(
        "apiVersion: amlops.dev/v1\nkind: Workspace\nmetadata:\n  name: bench\nspec:\n  backend: local\n")
    (root / "src" / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw_data):\n    return [0]\n")
    (root / "clusters" / "cpu.yaml").write_text(
        "apiVersion: amlops.dev/v1\nkind: AksCluster\nmetadata:\n  name: cpu\nspec:\n  vmSize: Standard_D3_v2\n"
        "  agentCount: 3\n")
    for i in range(2):
        (root / "environments" / f"env-{i}.yaml").write_text(
            f"apiVersion: amlops.dev/v1\nkind: Environment\nmetadata:\n  name: env-{i}\nspec:\n"
            f"  environmentVariables:\n    N: \"{i}\"\n")
    for i in range(3):
        (root / "models" / f"model-{i}").mkdir()
        (root / "models" / f"model-{i}" / "weights.bin").write_bytes(bytes([i]) * 1024)
        (root / "models" / f"model-{i}.yaml").write_text(
            f"apiVersion: amlops.dev/v1\nkind: Model\nmetadata:\n  name: model-{i}\nspec:\n  path: model-{i}\n")
    for i in range(services):
        (root / "services" / f"svc-{i:03d}.yaml").write_text(
            f"apiVersion: amlops.dev/v1\nkind: Webservice\nmetadata:\n  name: svc-{i:03d}\nspec:\n  cluster: cpu\n"
            f"  models:\n    - model-{i % 3}\n  environment: env-{i % 2}\n  sourceDirectory: ../src\n"
            f"  entryScript: score.py\n  replicas: 1\n  resources:\n    cpu: 0.1\n    memoryGb: 0.5\n"
            f"  auth: none\n")


def measure(services: int, no_op_runs: int) -> dict[str, Any]:
    """Apply a repo of ``services`` services, then count backend calls over ``no_op_runs`` no-op reconciles."""
    from controller.backends.local import LocalBackend
    from controller.core.reconciling import ReconcileOptions, reconcile
    from controller.core.recording import Recorder

    root = work_folder("calls") / f"repo-{services}"
    state = work_folder("calls") / f"state-{services}"
    shutil.rmtree(state, ignore_errors=True)
    write_repo(root, services)
    backend = LocalBackend(state, CONTROLLER, ready_timeout=120)
    recorder = Recorder(state)  # the real history recorder: reconcile reads resource status from it
    options = ReconcileOptions(controller_name=CONTROLLER)
    try:
        first = reconcile(root, ".", "bench-1", lambda ws: backend, recorder, options)
        counts: collections.Counter[str] = collections.Counter()
        real_store = backend.store
        backend.store = Counting(real_store, counts, "store.")  # type: ignore[assignment]
        proxy = Counting(backend, counts)
        outcomes = [reconcile(root, ".", "bench-1", lambda ws: proxy, recorder, options)  # type: ignore[arg-type,return-value]
                    for _ in range(no_op_runs)]
        backend.store = real_store
        resources = 1 + 1 + 2 + 3 + services
        changes = [sum(1 for c in (o.plan.changes if o.plan else ()) if c.action.value != "no-op") for o in outcomes]
        return {"services": services, "resources": resources, "first": str(first.status),
                "statuses": sorted({str(o.status) for o in outcomes}), "changes": changes,
                "per_reconcile": {k: v / no_op_runs for k, v in sorted(counts.items())}}
    finally:
        try:
            for i in range(services):
                from controller.structs.manifests import Kind
                from controller.structs.states import ResourceId

                backend.delete(ResourceId(Kind.WEBSERVICE, f"svc-{i:03d}"), _ctx(root))
        except Exception as exc:  # cleanup is best effort; say so
            print(f"(cleanup of services failed: {type(exc).__name__}: {exc})")
        backend.close()


def _ctx(root: Path) -> Any:
    from controller.backends.base import ApplyContext
    from controller.sources.loading import load_desired_state

    return ApplyContext(CONTROLLER, "bench-1", str(root), load_desired_state(root))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calls", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer services and no-op runs")
    args = parser.parse_args(argv)
    print_machine()
    try:
        import controller.backends.local
        import controller.core.reconciling  # noqa: F401
    except ImportError as exc:
        raise Skipped(f"the local backend or reconcile pipeline does not exist yet: {exc}") from exc
    sizes = (2, 8) if args.quick else (4, 16)
    runs = 3 if args.quick else 5
    results = [measure(n, runs) for n in sizes]
    heading(f"Local backend: calls per no-op reconcile (mean of {runs}, after one apply)")
    names = sorted({k for r in results for k in r["per_reconcile"]})
    print(table(["call"] + [f"{r['resources']} resources" for r in results],
                [(name, *(r["per_reconcile"].get(name, 0) for r in results)) for name in names]))
    for r in results:
        writes = {k: v for k, v in r["per_reconcile"].items() if k in WRITE_METHODS or
                  any(w in k for w in ("store.put", "store.upsert", "store.insert", "store.delete", "store.set",
                                       "store.record", "store.write", "store.save", "store.update"))}
        print(f"{r['resources']} resources: first apply {r['first']}; no-op reconciles {r['statuses']}, "
              f"planned changes {r['changes']}; write calls {writes or 'none'}")
    heading("Azure ML emulator")
    print(emulator_status())
    return 0


def emulator_status() -> str:
    """Whether the emulator can count requests (its ``GET /_emulator/requests`` admin endpoint)."""
    try:
        import controller.emulator.routes as routes
    except ImportError:
        return "pending: controller/emulator has no routes module yet"
    source = Path(routes.__file__).read_text()
    if "/_emulator/requests" not in source:
        return ("pending: controller/emulator has no GET /_emulator/requests endpoint yet, so requests per no-op "
                "reconcile against the azureml backend are not counted")
    return "the emulator has /_emulator/requests, but this benchmark does not drive it yet (pending)"


def run_as_script() -> int:
    try:
        return main()
    except Skipped as exc:
        print(f"SKIPPED calls: {exc}")
        return 0


if __name__ == "__main__":
    sys.exit(run_as_script())
