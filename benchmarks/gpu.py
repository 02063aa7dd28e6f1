"""GPU proof: one GPU per replica, refusal beyond the machine, and GPU vs CPU scoring side by side, in one run.

``python -m benchmarks.gpu [--quick] [--seconds S] [--connections C] [--rows 1,32,256] [--out DIR]``
(``make gpu-check``). Three parts:

* **placement** — ``amlops apply`` of the walk-through (TF1 ``score.py``, its checkpoint) as a
  service with one replica per GPU of this machine, ``gpu: 1`` each; for every replica: the GPU
  ``amlops status`` says it holds, its ``CUDA_VISIBLE_DEVICES`` (exactly that one UUID), the GPUs
  TensorFlow lists inside it (exactly one), the device it placed the model's ops on (``GPU:0``, from
  its status file), and whether NVML lists its pid on that GPU;
* **refusal** — a second service asking for one more GPU than the machine has free (the cluster
  declares one node more than the machine has GPUs, so validation passes): ``amlops apply`` exits
  1 with ``Unschedulable``, starts nothing, and leaves the first service's placement as it was;
* **throughput** — the walk-through's script (``--tensorflow-compat v1``) and the no-code SavedModel
  scorer (built from the same weights), each once on CPU (``CUDA_VISIBLE_DEVICES=''``) and once on
  GPU 0, all started together and loaded back to back at each row count (1, 32, 256 rows per
  request): requests/s, rows/s, p50/p99 and the device each server reports in ``/metrics``.

Without a GPU (NVML reports none, or ``AMLOPS_GPU_INVENTORY`` lists none) placement and refusal
are reported as skipped with the reason and throughput runs its CPU half. Writes ``gpu.json`` and
``gpu.md`` under ``--out`` (default ``.bench/gpu``). Exit 1 when a check fails; a skipped part is
not a failure, and the report says it was skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import digits
from benchmarks.reports import heading, machine, print_machine, run_script, table
from benchmarks.requesting import LoadResult, load_generator, lua_script, post, run_load
from benchmarks.scorer import (
    INLINE,
    MODEL_DIR,
    WALKTHROUGH,
    Server,
    amlops_server,
    build_savedmodel,
    prepare_files,
    start_all,
    stop_all,
)
from benchmarks.workfolders import REPO, project_python, work_folder
from controller.backends.local.gpus import Gpu, GpuInventory, discover_gpus

ROWS = (1, 32, 256)
SERVICE, EXTRA, CLUSTER = "gpu-proof", "gpu-proof-extra", "gpu-proof"
_DEVICE = re.compile(r'amlops_scoring_device_info\{[^}]*\bdevice="([^"]*)"')  # beside service/replica/... labels


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "amlops.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}, indent=2)


def write_repo(root: Path, gpus: int) -> None:
    """The walk-through as one GPU service with a replica per GPU, on a cluster one node larger than the machine."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "src").mkdir(parents=True)
    shutil.copy2(WALKTHROUGH, root / "src" / "score.py")
    shutil.copytree(MODEL_DIR, root / "models" / "tf-dnn-mnist")
    files = {
        "workspace.yaml": _doc("Workspace", "gpu-proof", {"backend": "local"}),
        # Standard_NC6: one GPU per node. One node more than the machine has GPUs: validation passes
        # a set the machine cannot hold, so the refusal comes from placement, not from validation.
        "cluster.yaml": _doc("AksCluster", CLUSTER, {"vmSize": "Standard_NC6", "agentCount": gpus + 1}),
        "environment.yaml": _doc("Environment", "tf1", {"baseImage": "DEFAULT_GPU_IMAGE", "tensorflowCompat": "v1"}),
        "model.yaml": _doc("Model", "tf-dnn-mnist", {"path": "models/tf-dnn-mnist"}),
        "service.yaml": _doc("Webservice", SERVICE, {
            "cluster": CLUSTER, "models": ["tf-dnn-mnist"], "environment": "tf1", "sourceDirectory": "src",
            "entryScript": "score.py", "replicas": gpus, "resources": {"cpu": 1, "memoryGb": 8, "gpu": 1},
            "auth": "none", "scoringTimeoutMs": 60000}),
    }
    for name, text in files.items():
        (root / name).write_text(text)


def amlops(state: Path | None, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process, as a user runs it (``validate`` has no state: pass None)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    state_args = ["--state-dir", str(state)] if state is not None else []
    return subprocess.run([project_python(), "-m", "controller", *args, *state_args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def nvml_pids() -> dict[str, list[int]] | None:
    """Pids NVML lists as running compute work, per GPU (or MIG instance) UUID; None if NVML cannot say."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        found: dict[str, list[int]] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            found[uuid] = [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
        return found
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


def replica_facts(state: Path) -> list[dict[str, Any]]:
    """Per replica of the proof service: slot, pid, the GPU it holds, what it sees and where TensorFlow put the model."""
    import psutil

    from controller.backends.local import LocalBackend
    from controller.structs.manifests import Kind

    backend = LocalBackend(state, "amlops")
    try:
        service = backend.read().get(Kind.WEBSERVICE, SERVICE)
        with backend.store.snapshot() as conn:
            status_files = {r.pid: r.status_file for r in backend.store.replicas(conn, SERVICE)}
    finally:
        backend.close()
    if service is None:
        return []
    pids = nvml_pids()
    facts = []
    for replica in service.details.get("placement") or []:
        pid = replica["pid"]
        status = json.loads(Path(status_files[pid]).read_text()) if pid in status_files else {}
        held = [g["uuid"] for g in replica["gpus"]]
        facts.append({
            "slot": replica["slot"], "pid": pid, "gpus": held,
            "cudaVisibleDevices": psutil.Process(pid).environ().get("CUDA_VISIBLE_DEVICES"),
            "tensorflowGpus": status.get("tensorflowGpus"), "device": status.get("device"),
            "deviceSource": status.get("deviceSource"),
            # In a container NVML may list host pids: "no" then proves nothing either way.
            "nvmlListsPid": None if pids is None else any(pid in pids.get(uuid, []) for uuid in held),
        })
    return facts


def part_placement(state: Path, repo: Path, gpus: GpuInventory) -> dict[str, Any]:
    heading(f"Placement: {len(gpus)} replicas × 1 GPU on {len(gpus)} GPU(s)")
    started = time.monotonic()
    applied = amlops(state, "apply", str(repo), "--yes", "--no-color")
    result: dict[str, Any] = {"applyExit": applied.returncode, "applySeconds": round(time.monotonic() - started, 1)}
    if applied.returncode != 0:  # apply exits 0 after a successful apply (2 only with --detailed-exitcode)
        result["failed"] = f"amlops apply exited {applied.returncode}: {applied.stderr[-2000:]}"
        print(result["failed"])
        return result
    facts = replica_facts(state)
    result["replicas"] = facts
    problems = []
    for fact in facts:
        if len(fact["gpus"]) != 1 or fact["cudaVisibleDevices"] != fact["gpus"][0]:
            problems.append(f"replica {fact['slot']} sees {fact['cudaVisibleDevices']!r}, holds {fact['gpus']}")
        if len(fact["tensorflowGpus"] or []) != 1 or fact["device"] != "GPU:0":
            problems.append(f"replica {fact['slot']}: TensorFlow lists {fact['tensorflowGpus']}, placed ops on "
                            f"{fact['device']} (is tensorflow[and-cuda] installed? pip install -e '.[gpu]')")
    held = [g for fact in facts for g in fact["gpus"]]
    if len(set(held)) != len(held) or len(facts) != len(gpus):
        problems.append(f"{len(facts)} replicas on {len(set(held))} distinct GPUs, expected {len(gpus)} on {len(gpus)}")
    answer = post(f"{_service_uri(state)}", digits.body(1), timeout_s=60)
    result["scored"] = answer[0]
    if answer[0] != 200:
        problems.append(f"scoring answered {answer[0]}: {answer[1][:200]!r}")
    print(table(["slot", "pid", "GPU held", "CUDA_VISIBLE_DEVICES", "TF GPUs", "model on", "NVML lists pid"],
                [(f["slot"], f["pid"], ",".join(f["gpus"]), f["cudaVisibleDevices"], len(f["tensorflowGpus"] or []),
                  f["device"], f["nvmlListsPid"]) for f in facts]))
    result["problems"] = problems
    return result


def _service_uri(state: Path) -> str:
    rows = json.loads(amlops(state, "status", "--output", "json").stdout)["resources"]
    # The workspace and the cluster share the service's name: only the Webservice row has a scoring URI.
    return str(next(r["scoringUri"] for r in rows if r["kind"] == "Webservice" and r["name"] == SERVICE))


def part_refusal(state: Path, repo: Path, before: list[dict[str, Any]]) -> dict[str, Any]:
    heading("Refusal: one GPU more than the machine has free")
    (repo / "extra.yaml").write_text(_doc("Webservice", EXTRA, {
        "cluster": CLUSTER, "models": ["tf-dnn-mnist"], "environment": "tf1", "sourceDirectory": "src",
        "entryScript": "score.py", "replicas": 1, "resources": {"cpu": 1, "memoryGb": 8, "gpu": 1}, "auth": "none"}))
    validated = amlops(None, "validate", str(repo))
    first = amlops(state, "apply", str(repo), "--yes", "--no-color")
    again = amlops(state, "apply", str(repo), "--yes", "--no-color")
    rows = json.loads(amlops(state, "status", "--output", "json").stdout)["resources"]
    after = replica_facts(state)
    result = {
        "validateExit": validated.returncode, "applyExit": first.returncode, "reapplyExit": again.returncode,
        "unschedulable": "Unschedulable" in first.stderr,
        "message": next((ln for ln in first.stderr.splitlines() if "Unschedulable" in ln), first.stderr[-500:]),
        "extraCreated": any(r["kind"] == "Webservice" and r["name"] == EXTRA for r in rows),
        "placementUnchanged": [(f["pid"], f["gpus"]) for f in after] == [(f["pid"], f["gpus"]) for f in before],
    }
    problems = []
    if validated.returncode != 0:
        problems.append(f"validate exited {validated.returncode}: {validated.stderr[-300:]}")
    if first.returncode != 1 or not result["unschedulable"]:
        problems.append(f"apply exited {first.returncode} without Unschedulable: {first.stderr[-500:]}")
    if again.returncode != 1:
        problems.append(f"the re-apply exited {again.returncode}, not 1")
    if result["extraCreated"] or not result["placementUnchanged"]:
        problems.append("the refused service was created or the first one was moved")
    result["problems"] = problems
    print(f"validate exit {validated.returncode}; apply exit {first.returncode}; re-apply exit {again.returncode}; "
          f"{result['message']}")
    return result


@dataclass(frozen=True)
class Measured:
    workload: str
    device: str  # what the server was given: cpu | gpu
    observed: str  # what it reports in /metrics
    rows: int
    result: LoadResult

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {"workload": self.workload, "device": self.device, "observed": self.observed, "rows": self.rows,
                "rps": round(r.rps, 1), "rowsPerS": round(r.rps * self.rows, 1), "p50_ms": round(r.p50_ms, 3),
                "p99_ms": round(r.p99_ms, 3), "errors": r.errors, "clientCpu": round(r.wrk_cpu, 2)}


def observed_device(server: Server) -> str:
    """The device a running scoring server reports in ``/metrics`` (``GPU:0``, ``CPU:0``)."""
    import urllib.request

    url = server.url.rsplit("/", 1)[0] + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        match = _DEVICE.search(response.read().decode())
    return match.group(1) if match else "unreported"


def part_throughput(root: Path, logs: Path, gpu: Gpu | None, rows_list: Sequence[int], connections: int,
                    seconds: float) -> list[Measured]:
    heading(f"Throughput: GPU vs CPU, {connections} connections, {seconds:.0f} s per cell ({load_generator()})")
    files = prepare_files(root)
    build_savedmodel(files)
    bodies = {rows: digits.body(rows) for rows in rows_list}
    scripts = {rows: lua_script(root, f"gpu-rows{rows}", body) for rows, body in bodies.items()}
    devices = {"cpu": ""} | ({"gpu": gpu.uuid} if gpu is not None else {})
    servers: dict[tuple[str, str], Server] = {}
    for device, visible in devices.items():
        for workload, script, model_dir, compat in (("walk-through", files.tf1, MODEL_DIR, "v1"),
                                                    ("no-code", None, files.savedmodel_dir, "none")):
            server = amlops_server(f"{workload} {device}", script, model_dir, compat=compat, tf=INLINE)
            server.env.update({"CUDA_VISIBLE_DEVICES": visible, "TF_FORCE_GPU_ALLOW_GROWTH": "true"})
            # 256-row calls on CPU queue for longer than Azure's 500 ms default: measure them, not 503s.
            server.argv += ["--max-queue-wait-ms", "120000", "--scoring-timeout-ms", "120000"]
            servers[(workload, device)] = server
    start_all(list(servers.values()), bodies[rows_list[0]], logs)
    cells: list[Measured] = []
    try:
        observed = {key: observed_device(server) for key, server in servers.items()}
        for rows in rows_list:
            for server in servers.values():
                run_load(server.url, bodies[rows], scripts[rows], connections, 1)  # warm-up
            for (workload, device), server in servers.items():
                result = run_load(server.url, bodies[rows], scripts[rows], connections, seconds)
                cells.append(Measured(workload, device, observed[(workload, device)], rows, result))
                print(f"  {server.label:<20} on {observed[(workload, device)]:<6} rows={rows:<4} {result.rps:8.0f} req/s "
                      f"{result.rps * rows:10.0f} rows/s  p99 {result.p99_ms:7.2f} ms  errors {result.errors}", flush=True)
    finally:
        stop_all(list(servers.values()))
    return cells


def side_by_side(cells: Sequence[Measured]) -> list[tuple[Any, ...]]:
    """One row per (workload, rows): CPU and GPU figures next to each other, and GPU ÷ CPU rows/s."""
    out = []
    for workload in dict.fromkeys(c.workload for c in cells):
        for rows in dict.fromkeys(c.rows for c in cells):
            cpu = next((c for c in cells if (c.workload, c.rows, c.device) == (workload, rows, "cpu")), None)
            gpu = next((c for c in cells if (c.workload, c.rows, c.device) == (workload, rows, "gpu")), None)

            ratio = gpu.result.rps / cpu.result.rps if gpu and cpu and cpu.result.rps else None
            out.append((workload, rows, *_figures(cpu), *_figures(gpu), None if ratio is None else f"{ratio:.2f}×"))
    return out


def _figures(m: Measured | None) -> tuple[Any, ...]:
    if m is None:
        return ("skipped", None, None, None, None)
    return (m.observed, m.result.rps, m.result.rps * m.rows, m.result.p99_ms, m.result.errors)


HEADERS = ["workload", "rows", "CPU: on", "req/s", "rows/s", "p99 ms", "errors",
           "GPU: on", "req/s", "rows/s", "p99 ms", "errors", "GPU ÷ CPU"]


def markdown(report: dict[str, Any], cells: Sequence[Measured]) -> str:
    """The report as Markdown: verdict, machine, each part, the side-by-side table."""
    m = report["machine"]
    lines = [f"# GPU proof — {report['verdict']}", "",
             f"- machine: {m['nproc']} cores, {m['cpu']}, {m['memory_gib']} GiB, Python {m['python']}, "
             f"git {m['git']}, {m['date']}",
             f"- GPUs ({report['inventory']['source']}): "
             + (", ".join(f"{g['index']} {g['name']} {g['uuid']}" for g in report["inventory"]["gpus"])
                or f"none ({report['inventory']['reason']})"),
             f"- command: `{report['command']}`; load generator: {report['loadGenerator']}, "
             f"{report['connections']} connections, {report['seconds']} s per cell", ""]
    for part in ("placement", "refusal"):
        value = report[part]
        lines.append(f"## {part.capitalize()}")
        lines.append("")
        if "skipped" in value:
            lines.append(f"Skipped: {value['skipped']}")
        else:
            lines.append("```json")
            lines.append(json.dumps(value, indent=2))
            lines.append("```")
        lines.append("")
    lines += ["## Throughput, GPU vs CPU (same run, servers loaded back to back)", "", table(HEADERS, side_by_side(cells)), ""]
    if report["gpuSkipped"]:
        lines.append(f"GPU half skipped: {report['gpuSkipped']}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per cell instead of 10")
    parser.add_argument("--seconds", type=float, help="seconds per cell")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="rows per request, comma-separated")
    parser.add_argument("--out", type=Path, help="report folder (default .bench/gpu)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    rows_list = [int(r) for r in args.rows.split(",")]
    out = args.out or work_folder("gpu")
    out.mkdir(parents=True, exist_ok=True)
    print_machine()
    inventory = discover_gpus()
    skipped = "" if len(inventory) else f"no GPU on this machine ({inventory.source}: {inventory.reason})"
    command = "python -m benchmarks.gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    report: dict[str, Any] = {"machine": machine(), "command": command.strip(), "inventory": inventory.to_json(),
                              "loadGenerator": load_generator(), "connections": args.connections, "seconds": seconds,
                              "gpuSkipped": skipped or None}
    print(f"GPUs: {len(inventory)} ({inventory.source}{': ' + inventory.reason if inventory.reason else ''})")
    state, repo = out / "state", out / "repo"
    if skipped:
        print(f"SKIPPED placement and refusal: {skipped}")
        report["placement"] = report["refusal"] = {"skipped": skipped}
    else:
        shutil.rmtree(state, ignore_errors=True)
        write_repo(repo, len(inventory))
        try:
            report["placement"] = part_placement(state, repo, inventory)
            report["refusal"] = (part_refusal(state, repo, report["placement"].get("replicas", []))
                                 if "failed" not in report["placement"] else {"skipped": "placement failed"})
        finally:
            amlops(state, "delete", str(repo), "--yes", "--include-retained")
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    cells = part_throughput(out / "files", logs, inventory.gpus[0] if len(inventory) else None, rows_list,
                            args.connections, seconds)
    report["throughput"] = [c.to_json() for c in cells]
    problems = [p for part in ("placement", "refusal") for p in report[part].get("problems", [])]
    problems += [report[part]["failed"] for part in ("placement", "refusal") if "failed" in report[part]]
    problems += [f"{c.workload} on {c.device}: {c.result.errors} errors at {c.rows} rows" for c in cells if c.result.errors]
    problems += [f"{c.workload} given the GPU reports {c.observed}" for c in cells if c.device == "gpu" and c.observed != "GPU:0"]
    report["problems"] = problems
    report["verdict"] = ("FAILED" if problems else "CPU half only, GPU half skipped" if skipped else "passed")
    heading("GPU vs CPU, side by side")
    print(table(HEADERS, side_by_side(cells)))
    (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu.md").write_text(markdown(report, cells))
    print(f"\nverdict: {report['verdict']}" + "".join(f"\n  - {p}" for p in problems))
    print(f"report: {out / 'gpu.json'}, {out / 'gpu.md'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(run_script(main, "gpu"))
