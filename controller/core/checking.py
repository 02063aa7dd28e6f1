"""Checking manifests with no backend at all (``amlops validate``, ``amlops render``): what a folder
renders to (an overlay's kustomization applied), and whether it is valid."""

from __future__ import annotations

from pathlib import Path

from controller.sources.loading import desired_documents, load_desired_state
from controller.sources.overlays import documents_yaml


def check(root: Path, path: str) -> int:
    """How many resources the manifests under ``root/path`` declare; raises ``ValidationFailed`` with every error."""
    return len(load_desired_state(root, path))


def rendered(root: Path, path: str) -> str:
    """The documents ``root/path`` renders to, as multi-document YAML headed by the files that wrote each."""
    documents, _ = desired_documents(root, root / path)
    return documents_yaml(documents)
