"""Scoring host throughput: amlops vs Azure's ``azmlinfsrv`` and KServe, same script, model, machine and run.

Every figure is a ratio against something measured side by side in the same run, because this
machine is shared and noisy: servers under comparison are started together and each load level is
applied to each of them back to back (amlops, azmlinfsrv, KServe, then the next level).

Parts (``--parts``): ``bound`` (one ``run()`` in-process, no HTTP: 1/cost is the most a worker can
serve), ``w1`` (the walk-through's script with the import line made TF2-compatible, all three
servers), ``w2`` (the verbatim TF1 script, amlops ``--tensorflow-compat v1``), ``batch`` (a
``run_batch`` variant vs the plain script), ``workers`` (``--workers 1`` vs ``2``), ``nocode``
(built-in SavedModel scorer vs an entry script calling ``signatures["serving_default"]``).

Baselines live in their own virtualenvs under the work folder (``.bench/venvs``), with
``tensorflow-cpu`` of the same version as the project's. Their scripts import
``azureml.core.model.Model`` (the walk-through does, and never uses it); those venvs get a
one-class stand-in for ``azureml.core`` on ``PYTHONPATH`` instead of the whole Azure ML SDK,
which only affects start-up.

Run alone: ``python -m benchmarks.scorer [--quick] [--parts w1,batch]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import digits
from benchmarks.reports import Skipped, heading, print_machine, run_script, table
from benchmarks.requesting import LoadResult, lua_script, post, require_wrk, run_wrk
from benchmarks.workfolders import REPO, ensure_venv, project_python, venv_version, work_folder

MODEL_DIR = REPO / "manifests" / "models" / "tf-dnn-mnist"
WALKTHROUGH = REPO / "manifests" / "src" / "score.py"
TF_IMPORT = "import tensorflow as tf"
COMPAT_IMPORT = "import tensorflow.compat.v1 as tf; tf.disable_v2_behavior()"
PARTS = ("bound", "w1", "w2", "batch", "workers", "nocode")
ROW_COUNTS = (1, 32)
# How TensorFlow 1 sessions run their ops: in the calling thread (the amlops scoring host's default,
# controller.scoring.importing.TENSORFLOW_DEFAULTS) or on TensorFlow's inter-op pool (TensorFlow's
# own default, what azmlinfsrv and KServe get unless told otherwise). Every server is measured with
# both, so the servers can be compared with the TensorFlow setting held equal.
INLINE, POOL = "TF inline", "TF pool"
TF_SETTINGS = {INLINE: {"TF_NUM_INTEROP_THREADS": "-1"}, POOL: {"TF_NUM_INTEROP_THREADS": "0"}}
CONCURRENCIES = (1, 8, 64)

BATCH_FUNCTION = '''

def run_batch(raw_list):
    """Every queued request in one session call (amlops' dynamic batching opt-in)."""
    arrays = [np.array(json.loads(raw)['data']) for raw in raw_list]
    out = output.eval(session=sess, feed_dict={X: np.concatenate(arrays)})
    y_hat = np.argmax(out, axis=1)
    results, start = [], 0
    for array in arrays:
        results.append(y_hat[start:start + len(array)].tolist())
        start += len(array)
    return results
'''

SIGNATURE_SCRIPT = '''\
import json
import os

import numpy as np
import tensorflow as tf


def init():
    global infer
    loaded = tf.saved_model.load(os.path.join(os.getenv('AZUREML_MODEL_DIR'), 'savedmodel'))
    infer = loaded.signatures['serving_default']


def run(raw_data):
    data = np.array(json.loads(raw_data)['data'], dtype=np.float32)
    out = infer(X=tf.constant(data))['output'].numpy()
    return np.argmax(out, axis=1).tolist()
'''

AZUREML_STANDIN = '''\
"""Stand-in for ``azureml.core.model`` in the baselines' venvs: the walk-through imports Model and never uses it."""


class Model:
    @staticmethod
    def get_model_path(model_name, version=None, _workspace=None):
        import os
        return os.path.join(os.environ.get("AZUREML_MODEL_DIR", "."), model_name)
'''

KSERVE_SERVER = '''\
"""KServe's Python model server around the same entry script: predict() calls its run()."""
import importlib.util
import os
import sys

import kserve
import orjson

script, port, grpc_port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.argv = sys.argv[:1]
spec = importlib.util.spec_from_file_location("score", script)
score = importlib.util.module_from_spec(spec)
sys.path.insert(0, os.path.dirname(script))
spec.loader.exec_module(score)


class EntryScriptModel(kserve.Model):
    def __init__(self, name):
        super().__init__(name)
        self.load()

    def load(self):
        score.init()
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        # KServe has already parsed the JSON body; run() takes the raw text, as in Azure ML.
        return {"predictions": score.run(orjson.dumps(payload))}


if __name__ == "__main__":
    kserve.ModelServer(http_port=port, grpc_port=grpc_port, enable_grpc=False, workers=workers).start(
        [EntryScriptModel("mnist")]
    )
'''

BOUND_PROBE = '''\
import json, os, sys, time
sys.path.insert(0, os.path.dirname(sys.argv[1]))
from controller.scoring.importing import load_entry_script
entry = load_entry_script(sys.argv[1], os.path.dirname(sys.argv[1]), sys.argv[2])
entry.init()
seconds = float(sys.argv[3])
result = {}
for body_path in sys.argv[4:]:
    raw = open(body_path).read()
    for _ in range(50):
        entry.run(raw)
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(20):
            entry.run(raw)
        samples.append((time.perf_counter() - start) / 20)
    samples.sort()
    result[body_path] = {"median_us": samples[len(samples) // 2] * 1e6,
                         "mean_us": sum(samples) / len(samples) * 1e6, "calls": 20 * len(samples)}
print("BOUND " + json.dumps(result))
'''


@dataclass
class Server:
    """One scoring server process under test."""

    label: str
    argv: list[str]
    url: str
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    tf: str = INLINE
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, logs: Path) -> None:
        self.log = logs / f"{self.label.replace(' ', '_').replace('/', '_')}.log"
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def wait_ready(self, body: bytes, timeout_s: float = 240.0) -> bytes:
        """POST until a 200 comes back; return its body (to check servers agree)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.process.returncode}; see {self.log}")
            try:
                status, answer = post(self.url, body, timeout_s=10)
            except OSError as exc:
                last = str(exc)
            else:
                if status == 200:
                    return answer
                last = f"HTTP {status}: {answer[:200]!r}"
            time.sleep(0.5)
        raise RuntimeError(f"{self.label} not ready after {timeout_s:.0f} s ({last}); see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------- preparing the work folder


@dataclass(frozen=True)
class Files:
    """Scripts, bodies and models prepared in the work folder."""

    root: Path
    tf1: Path  # the walk-through's score.py, verbatim
    compat: Path  # the same with the import line made TF2-compatible
    batch: Path  # compat + run_batch
    signature: Path  # entry script calling signatures["serving_default"]
    savedmodel_dir: Path  # model dir holding savedmodel/ (built from the checkpoint's weights)
    kserve_server: Path
    standin: Path  # PYTHONPATH entry with azureml.core.model for the baselines
    bodies: dict[int, Path]
    scripts: dict[int, Path]  # wrk Lua scripts per row count


def prepare_files(root: Path) -> Files:
    """Write every script variant, request body and wrk script into ``root``."""
    source = WALKTHROUGH.read_text()
    if TF_IMPORT + "\n" not in source:
        raise Skipped(f"{WALKTHROUGH} no longer has the line {TF_IMPORT!r}")
    compat_source = source.replace(TF_IMPORT + "\n", COMPAT_IMPORT + "\n", 1)
    paths = {}
    for name, text in (("tf1", source), ("compat", compat_source), ("batch", compat_source + BATCH_FUNCTION),
                       ("signature", SIGNATURE_SCRIPT)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "score.py").write_text(text)
        paths[name] = folder / "score.py"
    standin = root / "standin"
    (standin / "azureml" / "core").mkdir(parents=True, exist_ok=True)
    (standin / "azureml" / "core" / "__init__.py").write_text("")
    (standin / "azureml" / "core" / "model.py").write_text(AZUREML_STANDIN)
    kserve_server = root / "kserve_server.py"
    kserve_server.write_text(KSERVE_SERVER)
    bodies, scripts = {}, {}
    for rows in ROW_COUNTS:
        bodies[rows] = root / f"rows{rows}.json"
        scripts[rows] = lua_script(root, f"rows{rows}", digits.body(rows))
    return Files(root, paths["tf1"], paths["compat"], paths["batch"], paths["signature"], root / "savedmodel-model",
                 kserve_server, standin, bodies, scripts)


SAVEDMODEL_BUILDER = '''\
import sys
import tensorflow as tf
checkpoint, target = sys.argv[1], sys.argv[2]
reader = tf.train.load_checkpoint(checkpoint)
names = ["hidden1/kernel", "hidden1/bias", "hidden2/kernel", "hidden2/bias", "output/kernel"]
w = {n: tf.Variable(reader.get_tensor(n)) for n in names}

class Mnist(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = w

    @tf.function(input_signature=[tf.TensorSpec([None, 784], tf.float32, name="X")])
    def serve(self, X):
        h1 = tf.nn.relu(tf.matmul(X, self.w["hidden1/kernel"]) + self.w["hidden1/bias"])
        h2 = tf.nn.relu(tf.matmul(h1, self.w["hidden2/kernel"]) + self.w["hidden2/bias"])
        return {"output": tf.matmul(h2, self.w["output/kernel"])}

module = Mnist()
tf.saved_model.save(module, target, signatures={"serving_default": module.serve})
print("saved", target)
'''


def build_savedmodel(files: Files) -> None:
    """A TF2 SavedModel with the checkpoint's exact weights (once; reused while the checkpoint is unchanged)."""
    target = files.savedmodel_dir / "savedmodel"
    stamp = files.savedmodel_dir / ".source-mtime"
    checkpoint = MODEL_DIR / "model" / "mnist-tf.model"
    source_mtime = str((MODEL_DIR / "model" / "mnist-tf.model.index").stat().st_mtime_ns)
    if (target / "saved_model.pb").exists() and stamp.exists() and stamp.read_text() == source_mtime:
        return
    shutil.rmtree(files.savedmodel_dir, ignore_errors=True)
    files.savedmodel_dir.mkdir(parents=True)
    (files.root / "build_savedmodel.py").write_text(SAVEDMODEL_BUILDER)
    subprocess.run([project_python(), str(files.root / "build_savedmodel.py"), str(checkpoint), str(target)],
                   check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    stamp.write_text(source_mtime)


# ---------------------------------------------------------------- servers


def amlops_server(label: str, script: Path | None, model_dir: Path, workers: int = 1, compat: str = "none",
                  tf: str = INLINE) -> Server:
    port = free_port()
    argv = [project_python(), "-m", "controller.scoring", "--model-dir", str(model_dir), "--port", str(port),
            "--workers", str(workers), "--auth", "none"]
    if script is not None:
        argv += ["--entry-script", script.name, "--source-dir", str(script.parent)]
    if compat != "none":
        argv += ["--tensorflow-compat", compat]
    return Server(label, argv, f"http://127.0.0.1:{port}/score", REPO, env=dict(TF_SETTINGS[tf]), tf=tf)


def azmlinfsrv_server(venv: Path, files: Files, script: Path, tf: str = POOL) -> Server:
    port, health = free_port(), free_port()
    argv = [str(venv / "bin" / "azmlinfsrv"), "--entry_script", str(script), "--model_dir", str(MODEL_DIR),
            "--port", str(port), "--health_port", str(health)]
    return Server(f"azmlinfsrv, {tf}", argv, f"http://127.0.0.1:{port}/score", script.parent,
                  env={"PYTHONPATH": str(files.standin), **TF_SETTINGS[tf]}, tf=tf)


def kserve_server(venv: Path, files: Files, script: Path, tf: str = POOL) -> Server:
    port, grpc = free_port(), free_port()
    argv = [str(venv / "bin" / "python"), str(files.kserve_server), str(script), str(port), str(grpc), "1"]
    return Server(f"KServe, {tf}", argv, f"http://127.0.0.1:{port}/v1/models/mnist:predict", script.parent,
                  env={"PYTHONPATH": str(files.standin), "AZUREML_MODEL_DIR": str(MODEL_DIR), **TF_SETTINGS[tf]},
                  tf=tf)


def start_all(servers: Sequence[Server], body: bytes, logs: Path) -> dict[str, bytes]:
    """Start servers together (they load in parallel), wait until each answers, return their answers."""
    for server in servers:
        server.start(logs)
    try:
        return {server.label: server.wait_ready(body) for server in servers}
    except BaseException:
        stop_all(servers)
        raise


def stop_all(servers: Sequence[Server]) -> None:
    for server in servers:
        server.stop()


def predictions(answer: bytes) -> Any:
    """The class list in a server's answer (KServe wraps it in ``{"predictions": ...}``; azmlinfsrv may JSON-encode twice)."""
    value = json.loads(answer)
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict) and "predictions" in value:
        value = value["predictions"]
    return value


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Cell:
    server: str
    rows: int
    connections: int
    result: LoadResult

    def to_json(self) -> dict[str, Any]:
        """The cell as ``--json`` writes it."""
        r = self.result
        return {"server": self.server, "rows": self.rows, "conc": self.connections, "rps": round(r.rps, 1),
                "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors, "wrk_cpu": round(r.wrk_cpu, 2)}


def measure(servers: Sequence[Server], files: Files, rows_list: Sequence[int], connections_list: Sequence[int],
            seconds: float) -> list[Cell]:
    """Apply each (rows, connections) load to each server in turn, after a short warm-up on each."""
    cells = []
    for rows in rows_list:
        for server in servers:
            run_wrk(server.url, files.scripts[rows], 8, 1)  # warm-up: first calls, thread pools, caches
        for connections in connections_list:
            for server in servers:
                result = run_wrk(server.url, files.scripts[rows], connections, seconds)
                cells.append(Cell(server.label, rows, connections, result))
                print(f"  {server.label:<28} rows={rows:<3} c={connections:<3} {result.rps:8.0f} req/s  "
                      f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}  "
                      f"wrk cpu {result.wrk_cpu:.2f}", flush=True)
    return cells


def measure_bound(files: Files, seconds: float) -> dict[tuple[str, int, str], float]:
    """Per-call cost (µs, median of 20-call samples) of one in-process run(), per script, row count and TF setting."""
    costs: dict[tuple[str, int, str], float] = {}
    for name, script, compat, setting in (("w1", files.compat, "none", INLINE), ("w1", files.compat, "none", POOL),
                                          ("w2", files.tf1, "v1", INLINE)):
        out = subprocess.run(
            [project_python(), "-c", BOUND_PROBE, str(script), compat, str(seconds),
             *(str(files.bodies[r]) for r in ROW_COUNTS)],
            capture_output=True, text=True, cwd=REPO,
            env={**os.environ, "AZUREML_MODEL_DIR": str(MODEL_DIR), "TF_CPP_MIN_LOG_LEVEL": "2",
                 **TF_SETTINGS[setting]},
        )
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BOUND ")), None)
        if line is None:
            raise RuntimeError(f"in-process probe failed: {out.stderr[-2000:]}")
        for rows in ROW_COUNTS:
            costs[(name, rows, setting)] = json.loads(line[6:])[str(files.bodies[rows])]["median_us"]
    return costs


def cell(cells: Sequence[Cell], server: str, rows: int, connections: int) -> LoadResult | None:
    return next((c.result for c in cells if c.server == server and c.rows == rows and c.connections == connections),
                None)


def ratio(a: LoadResult | None, b: LoadResult | None) -> float | None:
    if a is None or b is None or not b.rps:
        return None
    return a.rps / b.rps


# ---------------------------------------------------------------- parts


def part_bound(files: Files, seconds: float, figures: dict[str, Any]) -> dict[tuple[str, int, str], float]:
    heading("In-process bound: one run() with no HTTP (project venv)")
    costs = measure_bound(files, max(1.0, seconds / 3))
    rows = [(name, r, setting, f"{cost:.0f}", f"{1e6 / cost:,.0f}") for (name, r, setting), cost in costs.items()]
    print(table(["script", "rows", "TensorFlow", "run() µs (median)", "bound req/s per worker"], rows))
    figures["bound_us"] = {f"{k[0]}/rows{k[1]}/{k[2]}": v for k, v in costs.items()}
    return costs


def of_bound(result: LoadResult, bound: dict[tuple[str, int, str], float], script: str, rows: int,
             setting: str) -> str | None:
    """Requests/s as a fraction of 1 / (one in-process run() with the same script, rows and TF setting)."""
    cost = bound.get((script, rows, setting))
    return f"{result.rps * cost / 1e6:.0%}" if cost else None


def part_w1(files: Files, seconds: float, logs: Path, bound: dict[tuple[str, int, str], float],
            figures: dict[str, Any]) -> list[Cell]:
    heading("Workload 1: walk-through score.py (TF2-compatible import line), one worker each, "
            "each server with TensorFlow's ops inline and on its pool")
    venvs = baseline_venvs()
    versions = {"azmlinfsrv": venv_version(venvs["azmlinfsrv"], "azureml-inference-server-http"),
                "KServe": venv_version(venvs["kserve"], "kserve")}
    print(f"baselines: azureml-inference-server-http {versions['azmlinfsrv']}, kserve {versions['KServe']}, "
          f"tensorflow-cpu {venv_version(venvs['kserve'], 'tensorflow-cpu')} in their own venvs")
    servers = [amlops_server(f"amlops, {INLINE}", files.compat, MODEL_DIR, tf=INLINE),
               azmlinfsrv_server(venvs["azmlinfsrv"], files, files.compat, POOL),
               kserve_server(venvs["kserve"], files, files.compat, POOL),
               amlops_server(f"amlops, {POOL}", files.compat, MODEL_DIR, tf=POOL),
               azmlinfsrv_server(venvs["azmlinfsrv"], files, files.compat, INLINE),
               kserve_server(venvs["kserve"], files, files.compat, INLINE)]
    answers = start_all(servers, files.bodies[32].read_bytes(), logs)
    try:
        agreed = {label: predictions(a) for label, a in answers.items()}
        if len({json.dumps(v) for v in agreed.values()}) != 1:
            print(f"WARNING: servers disagree on the same 32 rows: {agreed}")
        else:
            print(f"all {len(servers)} servers return the same 32 predictions: {next(iter(agreed.values()))}")
        cells = measure(servers, files, ROW_COUNTS, CONCURRENCIES, seconds)
    finally:
        stop_all(servers)
    settings = {server.label: server.tf for server in servers}
    print()
    print(table(
        ["rows", "conc", "server", "req/s", "p50 ms", "p99 ms", "errors", "of bound (same TF)", "wrk cpu"],
        [(c.rows, c.connections, c.server, c.result.rps, c.result.p50_ms, c.result.p99_ms, c.result.errors,
          of_bound(c.result, bound, "w1", c.rows, settings[c.server]), c.result.wrk_cpu)
         for c in cells],
    ))
    print()
    print("amlops over each baseline: as shipped (amlops inline, baselines on TensorFlow's default pool), "
          "then with the TensorFlow setting held equal")
    pairs = [(mine, f"{baseline}, {theirs}") for baseline in ("azmlinfsrv", "KServe")
             for mine, theirs in ((INLINE, POOL), (INLINE, INLINE), (POOL, POOL))]
    ratio_rows = [(rows, conc, *(ratio(cell(cells, f"amlops, {mine}", rows, conc), cell(cells, theirs, rows, conc))
                                 for mine, theirs in pairs))
                  for rows in ROW_COUNTS for conc in CONCURRENCIES]
    print(table(["rows", "conc", "/ azmlinfsrv shipped", "/ azmlinfsrv both inline", "/ azmlinfsrv both pool",
                 "/ KServe shipped", "/ KServe both inline", "/ KServe both pool"], ratio_rows))
    figures["w1"] = [c.to_json() for c in cells]
    figures["versions"] = versions
    return cells


def part_w2(files: Files, seconds: float, logs: Path, bound: dict[tuple[str, int, str], float],
            figures: dict[str, Any]) -> None:
    heading("Workload 2: the project's verbatim TF1 score.py, amlops --tensorflow-compat v1 "
            "(vs the TF2-compatible copy, same run)")
    servers = [amlops_server("amlops compat v1 (verbatim)", files.tf1, MODEL_DIR, compat="v1"),
               amlops_server("amlops (edited import)", files.compat, MODEL_DIR)]
    start_all(servers, files.bodies[1].read_bytes(), logs)
    try:
        cells = measure(servers, files, ROW_COUNTS, CONCURRENCIES, seconds)
    finally:
        stop_all(servers)
    print()
    rows_out = []
    for rows in ROW_COUNTS:
        for conc in CONCURRENCIES:
            a = cell(cells, servers[0].label, rows, conc)
            b = cell(cells, servers[1].label, rows, conc)
            assert a is not None
            rows_out.append((rows, conc, a.rps, a.p50_ms, a.p99_ms, a.errors,
                             of_bound(a, bound, "w2", rows, INLINE), ratio(a, b)))
    print(table(["rows", "conc", "req/s", "p50 ms", "p99 ms", "errors", "of bound", "compat v1 / edited"],
                rows_out))
    figures["w2"] = [c.to_json() for c in cells]


def part_pairs(title: str, key: str, servers: list[Server], files: Files, seconds: float, logs: Path,
               rows_list: Sequence[int], conns: Sequence[int], figures: dict[str, Any]) -> None:
    """Two amlops configurations side by side; prints the second over the first."""
    heading(title)
    start_all(servers, files.bodies[1].read_bytes(), logs)
    try:
        cells = measure(servers, files, rows_list, conns, seconds)
    finally:
        stop_all(servers)
    print()
    out = []
    for rows in rows_list:
        for conc in conns:
            a, b = cell(cells, servers[0].label, rows, conc), cell(cells, servers[1].label, rows, conc)
            assert a is not None and b is not None
            out.append((rows, conc, a.rps, a.p99_ms, b.rps, b.p99_ms, ratio(b, a), a.errors + b.errors))
    print(table(["rows", "conc", f"{servers[0].label} req/s", "p99 ms", f"{servers[1].label} req/s", "p99 ms",
                 "ratio", "errors"], out))
    figures[key] = [c.to_json() for c in cells]


def baseline_venvs() -> dict[str, Path]:
    tf = "tensorflow-cpu==" + _project_tensorflow_version()
    return {
        "azmlinfsrv": ensure_venv("azmlinfsrv", ["azureml-inference-server-http", tf],
                                  "import azureml_inference_server_http, tensorflow"),
        "kserve": ensure_venv("kserve", ["kserve", tf], "import kserve, tensorflow"),
    }


def _project_tensorflow_version() -> str:
    from importlib.metadata import version

    return version("tensorflow")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scorer", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per load level instead of 10 s")
    parser.add_argument("--seconds", type=float, help="seconds per load level (overrides --quick)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--json", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    print_machine()
    try:
        require_wrk()
        import controller.scoring  # noqa: F401  (the subject itself)
    except (RuntimeError, ImportError) as exc:
        raise Skipped(str(exc)) from exc
    root = work_folder("scorer")
    logs = work_folder("scorer", "logs")
    files = prepare_files(root)
    figures: dict[str, Any] = {"seconds": seconds}
    print(f"{seconds:.0f} s per load level; wrk -t1; work folder {root}; server logs in {logs}")
    bound = part_bound(files, seconds, figures) if "bound" in parts else {}
    if "w1" in parts:
        part_w1(files, seconds, logs, bound, figures)
    if "w2" in parts:
        part_w2(files, seconds, logs, bound, figures)
    if "batch" in parts:
        part_pairs("Dynamic batching: run_batch variant vs the plain script (amlops, 1 worker, 1 row per request)",
                   "batch", [amlops_server("plain run()", files.compat, MODEL_DIR),
                             amlops_server("run_batch", files.batch, MODEL_DIR)],
                   files, seconds, logs, (1,), (8, 64), figures)
    if "workers" in parts:
        part_pairs("Scaling: amlops --workers 1 vs 2 (wrk shares the same 2 cores)", "workers",
                   [amlops_server("1 worker", files.compat, MODEL_DIR),
                    amlops_server("2 workers", files.compat, MODEL_DIR, workers=2)],
                   files, seconds, logs, ROW_COUNTS, (8, 64), figures)
    if "nocode" in parts:
        build_savedmodel(files)
        part_pairs("No-code: built-in SavedModel scorer vs an entry script calling signatures['serving_default']",
                   "nocode", [amlops_server("score.py + signature", files.signature, files.savedmodel_dir),
                              amlops_server("built-in (no code)", None, files.savedmodel_dir)],
                   files, seconds, logs, ROW_COUNTS, (1, 8), figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, "scorer"))
