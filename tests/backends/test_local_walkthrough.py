"""The walk-through's example (TF1 score.py, TensorFlow checkpoint, conda file) on the local backend."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    status, body = post(backend.scoring_uri("aks-dnn-mnist"), {"data": [[0.0] * 784]}, backend.get_keys("aks-dnn-mnist")[0])
    assert status == 200, body
    assert isinstance(body, list) and len(body) == 1 and 0 <= body[0] <= 9
