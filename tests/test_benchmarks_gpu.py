"""``python -m benchmarks.gpu`` on a machine made to look GPU-less: the CPU half runs, the GPU half says why it did not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.backends.local.gpus import INVENTORY_ENV, Gpu, write_inventory

pytestmark = [pytest.mark.tensorflow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]


def test_without_a_gpu_the_gpu_check_measures_cpu_and_reports_the_gpu_half_skipped(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path / "no-gpus.json", [])
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--seconds", "1", "--connections", "2", "--out", str(out)],
        cwd=REPO, env={**os.environ, INVENTORY_ENV: str(inventory), "AMLOPS_BENCH_DIR": str(tmp_path / "bench")},
        capture_output=True, text=True, timeout=540, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu.json").read_text())
    reason = f"no GPU on this machine (file {inventory}: {INVENTORY_ENV}={inventory} lists no GPU)"
    assert report["gpuSkipped"] == reason
    assert report["placement"] == {"skipped": reason} and report["refusal"] == {"skipped": reason}
    assert report["verdict"] == "CPU half only, GPU half skipped" and report["problems"] == []
    cells = {(c["workload"], c["rows"]): c for c in report["throughput"]}
    assert set(cells) == {(w, r) for w in ("walk-through", "no-code") for r in (1, 32, 256)}
    for cell in cells.values():
        assert cell["device"] == "cpu" and cell["observed"] == "CPU:0", cell
        assert cell["rps"] > 0 and cell["errors"] == 0 and cell["rowsPerS"] == pytest.approx(cell["rps"] * cell["rows"], rel=0.01)
    markdown = (out / "gpu.md").read_text()
    assert markdown.startswith("# GPU proof — CPU half only, GPU half skipped")
    assert f"GPU half skipped: {reason}" in markdown
    assert "| walk-through | 256  | CPU:0   |" in markdown


def test_with_two_injected_gpus_the_placement_and_refusal_half_runs_and_only_the_device_checks_fail(tmp_path: Path) -> None:
    # The GPU half on a machine made to look like one with two GPUs: placement by UUID, the refusal of
    # one GPU more and the CLI's exit codes are all real; only TensorFlow, finding no CUDA device
    # behind the injected UUIDs, runs on CPU, which the proof must report as a failure, not a pass.
    gpus = [Gpu(i, f"GPU-injected-{i}", "NVIDIA H200", 141 << 30) for i in range(2)]
    inventory = write_inventory(tmp_path / "two-gpus.json", gpus)
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--seconds", "1", "--connections", "2", "--rows", "1", "--out", str(out)],
        cwd=REPO, env={**os.environ, INVENTORY_ENV: str(inventory), "AMLOPS_BENCH_DIR": str(tmp_path / "bench")},
        capture_output=True, text=True, timeout=540, check=False)
    report = json.loads((out / "gpu.json").read_text())
    assert done.returncode == 1 and report["verdict"] == "FAILED", done.stdout[-3000:] + done.stderr[-3000:]
    placement, refusal = report["placement"], report["refusal"]
    assert "failed" not in placement and placement["applyExit"] == 0 and placement["scored"] == 200, placement
    held = [(r["gpus"], r["cudaVisibleDevices"]) for r in placement["replicas"]]
    assert sorted(held) == [([g.uuid], g.uuid) for g in gpus]  # one GPU each, by UUID, never shared
    assert refusal["validateExit"] == 0 and refusal["applyExit"] == 1 and refusal["reapplyExit"] == 1, refusal
    assert refusal["unschedulable"] and not refusal["extraCreated"] and refusal["placementUnchanged"], refusal
    assert refusal["problems"] == []
    problems = report["problems"]
    assert problems and all("TensorFlow lists []" in p or "given the GPU reports CPU:0" in p for p in problems), problems
    assert {(c["workload"], c["device"]) for c in report["throughput"]} == {
        (w, d) for w in ("walk-through", "no-code") for d in ("cpu", "gpu")}
