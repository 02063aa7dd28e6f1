"""TensorFlow workloads: the walk-through's TF1 score.py unchanged, and the no-code SavedModel scorer.

Each host here imports TensorFlow (seconds on a small machine), so these tests are marked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scoring_digits import MODEL_DIR, SOURCE_DIR, held_out
from scoring_hosts import Host, StartHost, write_script

pytestmark = [pytest.mark.tensorflow, pytest.mark.timeout(120)]
BUILDER = Path(__file__).with_name("scoring_tf_models.py")


def build(kind: str, target: Path) -> None:
    subprocess.run([sys.executable, str(BUILDER), kind, str(target)], check=True, capture_output=True,
                   env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})


def one_hot_rows(classes: list[int]) -> list[list[float]]:
    rows = np.zeros((len(classes), 784), dtype=np.float32)
    rows[np.arange(len(classes)), classes] = 1.0
    return rows.tolist()  # type: ignore[no-any-return]


NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}
"""What the local backend gives a replica without a GPU: whatever this machine has, TensorFlow sees none."""


def device_metric(host: Host) -> str:
    code, _headers, body = host.request("GET", "/metrics")
    assert code == 200
    return next(line for line in body.decode().splitlines() if line.startswith("amlops_scoring_device_info{"))


def test_the_walkthrough_score_py_runs_unchanged_on_the_shipped_model(start_host: StartHost) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", SOURCE_DIR, "--model-dir", MODEL_DIR,
                      "--tensorflow-compat", "v1", "--service-name", "aks-dnn-mnist", timeout=60, env=NO_GPU)
    status = host.status()
    assert status["tensorflowGpus"] == []  # the replica was given no GPU; TF was asked cheaply
    # Graph mode: the TF1 session's variables carry no device, so TensorFlow is asked where it places an op.
    assert (status["device"], status["deviceSource"]) == ("CPU:0", "probe"), status
    assert device_metric(host) == 'amlops_scoring_device_info{device="CPU:0",source="probe"} 1.0'
    rows, labels = held_out()
    predicted: list[int] = []
    for start in range(0, len(rows), 60):
        # The walk-through's own client sends str(list(row)) of numpy floats inside {"data": [...]}.
        chunk = rows[start : start + 60]
        code, _headers, body = host.score({"data": chunk.tolist()}, path="/api/v1/service/aks-dnn-mnist/score")
        assert code == 200, body
        predicted.extend(json.loads(body))
    accuracy = float(np.mean(np.asarray(predicted) == labels))
    assert accuracy >= 0.9, accuracy


def test_a_checkpoint_built_here_with_the_same_tensor_names_also_serves(
    start_host: StartHost, tmp_path: Path
) -> None:
    build("checkpoint", tmp_path / "model-root" / "model")
    host = start_host("--entry-script", "score.py", "--source-dir", SOURCE_DIR,
                      "--model-dir", str(tmp_path / "model-root"), "--tensorflow-compat", "v1", timeout=60)
    code, _headers, body = host.score({"data": one_hot_rows([3, 7, 0])})
    assert code == 200
    assert json.loads(body) == [3, 7, 0]


def test_the_no_code_scorer_serves_a_savedmodel(start_host: StartHost, tmp_path: Path) -> None:
    build("savedmodel", tmp_path / "models" / "tiny" / "1")
    host = start_host("--model-dir", str(tmp_path / "models"), timeout=60, env=NO_GPU)
    status = host.status()
    assert (status["device"], status["deviceSource"]) == ("CPU:0", "variables"), status  # where its weights live
    assert status["deviceName"].endswith("device:CPU:0")
    code, _headers, body = host.score({"data": one_hot_rows([5, 2])})
    assert code == 200
    assert json.loads(body) == [5, 2]
    code, _headers, body = host.score({"data": [[1.0]]})
    assert code == 500
    assert "fast_path=True" in host.log()


THREADS_SCRIPT = '''
import threading

import tensorflow as tf


def init():
    global sess, op_thread
    graph = tf.Graph()
    with graph.as_default():
        op_thread = tf.py_func(lambda: threading.get_ident(), [], tf.int64)
    sess = tf.Session(graph=graph)


def run(raw_data):
    return {"run_thread": threading.get_ident(), "op_thread": int(sess.run(op_thread))}
'''


@pytest.mark.parametrize(("environment", "inline"), [({}, True), ({"TF_NUM_INTEROP_THREADS": "2"}, False)])
def test_tf1_sessions_run_their_ops_in_the_run_thread_unless_the_environment_says_otherwise(
    start_host: StartHost, tmp_path: Path, environment: dict[str, str], inline: bool
) -> None:
    write_script(tmp_path / "src", THREADS_SCRIPT)
    host = start_host("--entry-script", "score.py", "--source-dir", str(tmp_path / "src"),
                      "--tensorflow-compat", "v1", env=environment, timeout=60)
    code, _headers, body = host.score({})
    assert code == 200, body
    threads = json.loads(body)
    assert (threads["op_thread"] == threads["run_thread"]) is inline, threads
    starting = next(line for line in host.log().splitlines() if "event=starting" in line)
    assert starting.endswith('tensorflow_defaults="TF_NUM_INTEROP_THREADS=-1"' if inline else "tensorflow_defaults=None")


def first_real_gpu() -> str:
    from controller.backends.local.gpus import probe_nvml

    return probe_nvml().gpus[0].uuid


@pytest.mark.gpu
def test_on_a_gpu_both_workloads_place_the_model_on_the_gpu_they_were_given(
    start_host: StartHost, tmp_path: Path
) -> None:
    one_gpu = {"CUDA_VISIBLE_DEVICES": first_real_gpu(), "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    walkthrough = start_host("--entry-script", "score.py", "--source-dir", SOURCE_DIR, "--model-dir", MODEL_DIR,
                             "--tensorflow-compat", "v1", timeout=120, env=one_gpu)
    assert len(walkthrough.status()["tensorflowGpus"]) == 1
    assert walkthrough.status()["device"] == "GPU:0", walkthrough.status()
    build("savedmodel", tmp_path / "models" / "tiny" / "1")
    saved = start_host("--model-dir", str(tmp_path / "models"), timeout=120, env=one_gpu)
    assert (saved.status()["device"], saved.status()["deviceSource"]) == ("GPU:0", "variables"), saved.status()
    assert device_metric(saved) == 'amlops_scoring_device_info{device="GPU:0",source="variables"} 1.0'
    code, _headers, body = saved.score({"data": one_hot_rows([5, 2])})
    assert (code, json.loads(body)) == (200, [5, 2])
