"""Smoke tests of a deployment through its endpoint, before it gets traffic.

The request goes to the endpoint's scoring URI with ``azureml-model-deployment`` naming the
deployment, so a deployment at 0 % traffic can be asked. The answer must equal the manifest's
``expect`` / ``expectFile``, or (``compareWithLive``) what the live deployment, or a v1 service
being migrated, answers to the same request. Uses ``requests`` (proxy and CA bundle from the
environment, as the SDK does); keys never reach a log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.structs.errors import PermanentError, TransientError
from controller.structs.manifests import SampleRequest
from controller.structs.states import DesiredResource

DEPLOYMENT_HEADER = "azureml-model-deployment"
_TIMEOUT_S = 60.0


def sample_body(sample: SampleRequest, resource: DesiredResource, root: str) -> bytes:
    """The request body the manifest names (``file`` relative to the manifest, or ``body``)."""
    if sample.body is not None:
        return sample.body.encode()
    base = Path(root) / Path(resource.origin.file).parent
    assert sample.file is not None
    return (base / sample.file).read_bytes()


def expected_answer(sample: SampleRequest, resource: DesiredResource, root: str) -> Any:
    """The answer the manifest expects, decoded, or ``None`` when it names none."""
    if sample.expect is not None:
        return json.loads(sample.expect)
    if sample.expectFile is not None:
        return json.loads((Path(root) / Path(resource.origin.file).parent / sample.expectFile).read_text())
    return None


def score(uri: str, body: bytes, bearer: str | None, deployment: str | None = None) -> Any:
    """POST ``body`` to ``uri``; the decoded answer, or an error saying what came back."""
    import requests

    headers = {"Content-Type": "application/json"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    if deployment:
        headers[DEPLOYMENT_HEADER] = deployment
    try:
        response = requests.post(uri, data=body, headers=headers, timeout=_TIMEOUT_S)
    except requests.RequestException as exc:
        raise TransientError(f"sample request to {deployment or uri}: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise PermanentError(f"sample request to {deployment or uri}: HTTP {response.status_code}: "
                             f"{response.text[:300]}", reason="SmokeTestFailed")
    try:
        return response.json()
    except ValueError:
        return response.text
