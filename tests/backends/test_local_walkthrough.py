"""The walk-through's example (TF1 score.py, TensorFlow checkpoint, conda file) on the local backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# tests/ is on sys.path (pytest's rootdir insertion): the held-out split of the example model.
from scoring.scoring_digits import held_out

from controller.backends.local import LocalBackend
from controller.sources.loading import load_desired_state
from controller.structs.manifests import Kind
from controller.structs.states import ConditionType

from .conftest import Repo, post

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


@pytest.mark.tensorflow
def test_the_walkthrough_service_scores_a_digit(backend: LocalBackend) -> None:
    desired = load_desired_state(MANIFESTS, ".", "walkthrough")
    repo = Repo.__new__(Repo)
    repo.root = MANIFESTS
    ctx = repo.ctx(desired)
    for resource in desired:
        backend.create(resource, ctx)
    svc = backend.read().get(Kind.WEBSERVICE, "aks-dnn-mnist")
    assert svc is not None
    assert svc.condition(ConditionType.READY).status  # type: ignore[union-attr]
    assert svc.condition(ConditionType.GPU_UNAVAILABLE) is not None or backend.gpus
    substituted = svc.condition(ConditionType.SUBSTITUTED)
    assert substituted is not None and "tensorflow-gpu=1.12" in substituted.message
    # Held-out digits (never trained on), each of the ten classes, must come back as their own class.
    rows, labels = held_out()
    picked = [int(np.flatnonzero(labels == digit)[0]) for digit in range(10)] + list(range(40))
    status, body = post(backend.scoring_uri("aks-dnn-mnist"), {"data": rows[picked].tolist()},
                        backend.get_keys("aks-dnn-mnist")[0])
    assert status == 200, body
    assert isinstance(body, list) and len(body) == len(picked)
    right = sum(int(got) == int(labels[i]) for got, i in zip(body, picked, strict=True))
    assert right >= 0.9 * len(picked), (body, labels[picked].tolist())
    assert len({int(got) for got in body}) == 10  # not one class for everything
