"""Reconcile cost at scale: load+validate and plan for synthetic repos of 100, 1,000 and 10,000 resources.

Each size runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own. Within it: a first
load (cold ``HASHER`` cache), a second load of the unchanged tree (content hashes cached by
mtime+size), and ``plan()`` against an in-memory actual state equal to the desired one (0 % drift)
and with 1 % of services drifted. The per-resource figures across sizes show whether growth is
linear. Target: 10,000 resources load+validate+plan under 2 s.

Run alone: ``python -m benchmarks.reconcile [--quick] [--sizes 100,1000]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.reports import Skipped, heading, print_machine, run_script, table
from benchmarks.workfolders import REPO, project_python, work_folder

SIZES = (100, 1_000, 10_000)
CONTROLLER = "amlops-bench"
TARGET_S = 2.0


def mix(size: int) -> dict[str, int]:
    """A realistic mix: one workspace, a few clusters, environments and models, many services."""
    clusters = max(2, size // 1000)
    environments = max(2, size // 100)
    models = max(3, size // 20)
    return {"workspace": 1, "clusters": clusters, "environments": environments, "models": models,
            "services": size - 1 - clusters - environments - models}


def generate_repo(root: Path, size: int) -> dict[str, int]:
    """Write a manifest repo of ``size`` resources under ``root`` (one document per file, like a real repo)."""
    if root.exists():
        shutil.rmtree(root)
    counts = mix(size)
    for folder in ("clusters", "environments", "models", "services", "src"):
        (root / folder).mkdir(parents=True)
    (root / "workspace.yaml").write_text(
        "apiVersion: amlops.dev/v1\nkind: Workspace\nmetadata:\n  name: bench\nspec:\n  backend: local\n")
    (root / "src" / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw_data):\n    return raw_data\n")
    # Cluster 0 has GPUs (a few GPU services run on it); the others are CPU clusters.
    for i in range(counts["clusters"]):
        vm = "Standard_NC6" if i == 0 else "Standard_D3_v2"
        (root / "clusters" / f"aks-{i:03d}.yaml").write_text(
            f"apiVersion: amlops.dev/v1\nkind: AksCluster\nmetadata:\n  name: aks-{i:03d}\nspec:\n"
            f"  vmSize: {vm}\n  agentCount: 20\n  clusterPurpose: FastProd\n  deletionPolicy: Retain\n")
    for i in range(counts["environments"]):
        (root / "environments" / f"env-{i:04d}.yml").write_text(
            f"name: env-{i}\ndependencies:\n- python=3.11\n- pip:\n  - numpy\n  - scikit-learn=={i % 5}.0\n")
        (root / "environments" / f"env-{i:04d}.yaml").write_text(
            f"apiVersion: amlops.dev/v1\nkind: Environment\nmetadata:\n  name: env-{i:04d}\nspec:\n"
            f"  condaFile: env-{i:04d}.yml\n  baseImage: DEFAULT_CPU_IMAGE\n"
            f"  environmentVariables:\n    WORKERS: \"{1 + i % 4}\"\n")
    for i in range(counts["models"]):
        model_dir = root / "models" / f"model-{i:04d}"
        model_dir.mkdir()
        (model_dir / "weights.bin").write_bytes(i.to_bytes(4, "little") * 2048)  # 8 KiB per model
        (model_dir / "config.json").write_text(json.dumps({"layers": [784, 300, 100, 10], "seed": i}))
        (root / "models" / f"model-{i:04d}.yaml").write_text(
            f"apiVersion: amlops.dev/v1\nkind: Model\nmetadata:\n  name: model-{i:04d}\nspec:\n"
            f"  path: model-{i:04d}\n  framework: TensorFlow\n  frameworkVersion: \"2.16\"\n"
            f"  tags:\n    team: team-{i % 7}\n")
    gpu_services = 0
    for i in range(counts["services"]):
        gpu = 1 if gpu_services < 10 and i % 50 == 0 else 0
        gpu_services += gpu
        cluster = 0 if gpu else 1 + i % (counts["clusters"] - 1)
        (root / "services" / f"svc-{i:05d}.yaml").write_text(
            f"apiVersion: amlops.dev/v1\nkind: Webservice\nmetadata:\n  name: svc-{i:05d}\n"
            f"  labels:\n    team: team-{i % 7}\nspec:\n"
            f"  cluster: aks-{cluster:03d}\n  models:\n    - model-{i % counts['models']:04d}\n"
            f"  environment: env-{i % counts['environments']:04d}\n  sourceDirectory: ../src\n"
            f"  entryScript: score.py\n  replicas: {1 + i % 2}\n"
            f"  resources:\n    cpu: 0.5\n    memoryGb: 1\n    gpu: {gpu}\n"
            f"  auth: key\n  scoringTimeoutMs: 60000\n")
    return counts


def _io() -> tuple[int, int]:
    """Bytes read and read syscalls of this process so far (``/proc/self/io``: rchar, syscr)."""
    values = {}
    with open("/proc/self/io") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            values[key] = int(value)
    return values["rchar"], values["syscr"]


def measure_size(repo: Path, repeats: int) -> dict[str, Any]:
    """In this (fresh) process: load twice, plan at 0 % and 1 % drift; timings are medians of ``repeats``."""
    import dataclasses

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from controller.core.planning import as_applied, plan, static_replace_fields
    from controller.sources.digests import HASHER
    from controller.sources.loading import load_desired_state
    from controller.structs.manifests import Kind

    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    calls = {"n": 0}
    hash_file = HASHER.file

    def counting_file(path: Path, st: Any = None) -> str:  # counting proxy: measurement only, behaviour unchanged
        calls["n"] += 1
        return hash_file(path, st)

    HASHER.file = counting_file  # type: ignore[method-assign]

    def one_load() -> tuple[Any, float, dict[str, int]]:
        before_cache = dict(HASHER._files)
        calls["n"] = 0
        rchar, syscr = _io()
        started = time.perf_counter()
        state = load_desired_state(repo)
        elapsed = time.perf_counter() - started
        rchar2, syscr2 = _io()
        misses = sum(1 for k, v in HASHER._files.items() if before_cache.get(k) is not v)
        return state, elapsed, {"hash_calls": calls["n"], "hash_misses": misses, "bytes_read": rchar2 - rchar,
                                "read_syscalls": syscr2 - syscr}

    desired, first_s, first_io = one_load()
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Keep only the figures of the repeated loads: holding their states would inflate the peak RSS.
    warm_times, second_io = [], None
    for _ in range(repeats):
        _state, elapsed, io = one_load()
        del _state
        warm_times.append(elapsed)
        second_io = second_io or io
    second_s = sorted(warm_times)[len(warm_times) // 2]

    actual = as_applied(desired, controller_name=CONTROLLER)
    services = [r for r in actual if r.id.kind == Kind.WEBSERVICE]
    drifted = services[: max(1, len(desired) // 100)]
    drifted_resources = dict(actual.resources)
    for res in drifted:
        spec = dict(res.spec)
        spec["replicas"] = (spec.get("replicas") or 1) + 5
        drifted_resources[res.id] = dataclasses.replace(res, spec=spec)
    actual_drift = type(actual)(drifted_resources)

    def timed_plan(state: Any) -> tuple[float, Any]:
        times, result = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            result = plan(desired, state, controller_name=CONTROLLER, replace_fields=static_replace_fields)
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2], result

    plan0_s, plan0 = timed_plan(actual)
    plan1_s, plan1 = timed_plan(actual_drift)

    def changed(p: Any) -> int:
        return sum(1 for c in p.changes if c.action.value != "no-op")

    return {
        "resources": len(desired), "first_load_s": first_s, "second_load_s": second_s,
        "plan_0_s": plan0_s, "plan_1_s": plan1_s,
        "changes_0": changed(plan0), "changes_1": changed(plan1), "drifted": len(drifted),
        "first_io": first_io, "second_io": second_io,
        "rss_start_mb": rss_start / 1024, "rss_imports_mb": rss_imports / 1024, "rss_loaded_mb": rss_loaded / 1024,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reconcile", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat per timing instead of five")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(measure_size(Path(args.child), args.repeats or 1)))
        return 0
    print_machine()
    try:
        import controller.core.planning as planning
        import controller.sources.loading  # noqa: F401
    except ImportError as exc:
        raise Skipped(f"controller.core.planning or controller.sources.loading missing: {exc}") from exc
    for name in ("plan", "as_applied", "static_replace_fields"):
        if not hasattr(planning, name):
            raise Skipped(f"controller.core.planning.{name} does not exist yet")
    repeats = 1 if args.quick else 5
    results, failed = [], []
    for size in (int(s) for s in args.sizes.split(",")):
        repo = work_folder("reconcile") / f"repo-{size}"
        started = time.perf_counter()
        counts = generate_repo(repo, size)
        print(f"generated {repo}: {counts} in {time.perf_counter() - started:.1f} s", flush=True)
        out = subprocess.run([project_python(), "-m", "benchmarks.reconcile", "--child", str(repo),
                              "--repeats", str(repeats)], capture_output=True, text=True, cwd=REPO)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"size {size} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            failed.append(size)
            continue
        result = json.loads(line[7:])
        results.append(result)
        print(f"  {size}: first load {result['first_load_s']:.3f} s, second {result['second_load_s']:.3f} s, "
              f"plan {result['plan_0_s']:.3f} s / {result['plan_1_s']:.3f} s, peak RSS {result['rss_peak_mb']:.0f} MB",
              flush=True)
    heading(f"Load+validate and plan (median of {repeats}; first load is a single cold run)")
    print(table(
        ["resources", "first load s", "µs/res", "2nd load s", "µs/res", "speed-up", "plan 0% s", "µs/res",
         "plan 1% s", "changes 1%", "load+plan s", "target 2 s", "peak RSS MB"],
        [(r["resources"], r["first_load_s"], r["first_load_s"] / r["resources"] * 1e6,
          r["second_load_s"], r["second_load_s"] / r["resources"] * 1e6,
          f"{r['first_load_s'] / r['second_load_s']:.2f}×",
          r["plan_0_s"], r["plan_0_s"] / r["resources"] * 1e6, r["plan_1_s"], f"{r['changes_1']} ({r['drifted']} drifted)",
          r["first_load_s"] + r["plan_1_s"],
          "met" if r["first_load_s"] + r["plan_1_s"] < TARGET_S else "MISSED",
          r["rss_peak_mb"]) for r in results],
    ))
    heading("Second load of the unchanged tree: file reads (from /proc/self/io) and HASHER cache")
    print(table(
        ["resources", "load", "hash calls", "hashes computed", "cache hits", "bytes read", "read syscalls"],
        [(r["resources"], which, io["hash_calls"], io["hash_misses"], io["hash_calls"] - io["hash_misses"],
          f"{io['bytes_read']:,}", f"{io['read_syscalls']:,}")
         for r in results for which, io in (("first", r["first_io"]), ("second", r["second_io"]))],
    ))
    print("\nRSS MB: interpreter start / after imports / after first load / peak: " + "; ".join(
        f"{r['resources']}: {r['rss_start_mb']:.0f} / {r['rss_imports_mb']:.0f} / {r['rss_loaded_mb']:.0f} / "
        f"{r['rss_peak_mb']:.0f}" for r in results))
    if any(r["changes_0"] for r in results):
        print("NOTE: a 0 % drift plan had changes: " + ", ".join(f"{r['resources']}: {r['changes_0']}" for r in results))
    if failed:
        print(f"FAILED sizes: {', '.join(map(str, failed))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, "reconcile"))
