"""The local workspace: a record (everything lives on this machine, under the state folder)."""

from __future__ import annotations

from controller.backends.local.records import RecordedKind
from controller.structs.manifests import Kind


class WorkspaceHandler(RecordedKind):
    """Workspace on the local backend."""

    kind = Kind.WORKSPACE
    # Moving a workspace to another backend is a new workspace.
    replace_fields = frozenset({"backend"})
