"""End to end: the repository's own ``manifests/`` deploy the TensorFlow digits service, which classifies held-out digits.

Slow (TensorFlow loads in every replica), hence the ``tensorflow`` mark.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from runtime.conftest import GitRepo

from .conftest import World, leftover_processes, port_closed

SERVICE = "aks-dnn-mnist"
MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def _held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, images, _, labels = train_test_split(digits.images, digits.target, test_size=0.2, random_state=0)
    idx = (np.arange(28) * 8) // 28
    return (images / 16.0)[:, idx][:, :, idx].reshape(-1, 784), labels


@pytest.mark.tensorflow
def test_the_example_manifests_serve_the_digits_model_with_key_auth_and_delete_cleanly(world: World) -> None:
    repo = GitRepo(world.tmp / "example")
    shutil.copytree(MANIFESTS, repo.root / "manifests", ignore=shutil.ignore_patterns("__pycache__"))
    repo.commit("the example")

    world.amlops("apply", "manifests", "--yes", cwd=repo.root)
    key = world.key(SERVICE)
    details = world.service_details(SERVICE)
    assert details is not None
    uri, port, pids = details["scoringUri"], details["port"], world.ready_pids(SERVICE)
    assert len(pids) == 3

    X, y = _held_out_digits()
    assert len(y) >= 100
    predicted: list[int] = []
    for start in range(0, len(y), 60):
        code, body = world.score(X[start:start + 60].tolist(), key, uri=uri)
        assert code == 200, body
        predicted.extend(int(p) for p in body)
    accuracy = float(np.mean(np.array(predicted) == y))
    assert accuracy >= 0.9, f"accuracy {accuracy:.3f} on {len(y)} held-out digits"
    assert world.score(X[:1].tolist(), "wrong-key", uri=uri)[0] == 401

    world.amlops("delete", "manifests", "--yes", cwd=repo.root)
    assert port_closed(port)
    assert world.service_details(SERVICE) is None
    assert not [p for p in leftover_processes(world.state_dir) if p.pid in pids or "controller.scoring" in p.cmdline()]
