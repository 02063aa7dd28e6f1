"""``python -m benchmarks.gpu`` on a machine made to look GPU-less: the CPU half runs, the GPU half says why it did not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.backends.local.gpus import INVENTORY_ENV, write_inventory

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
