"""The error vocabulary: what users read about their manifests, and how failures are classed.

Flux's split is kept: a *permanent* error will not go away until the input changes (stall and
report it), a *transient* one may pass (retry with backoff).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class ManifestError:
    """One problem in one manifest, located to the file, line and field a user must edit."""

    file: str
    line: int
    message: str
    kind: str | None = None
    name: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [where]
        if self.kind and self.name:
            parts.append(f"{self.kind} {self.name}")
        elif self.kind or self.name:
            parts.append(self.kind or self.name or "")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


class ValidationFailed(Exception):
    """Raised when desired state has errors; carries every error found, not only the first."""

    def __init__(self, errors: Sequence[ManifestError]) -> None:
        self.errors = tuple(sorted(errors))
        super().__init__("\n".join(str(e) for e in self.errors))


class BackendError(Exception):
    """Base of errors a backend raises while reading or changing actual state."""


class PermanentError(BackendError):
    """Will not succeed until the desired state changes (invalid spec, quota, unschedulable)."""

    def __init__(self, message: str, *, reason: str = "Failed") -> None:
        super().__init__(message)
        self.reason = reason


class TransientError(BackendError):
    """May succeed if tried again (throttling, 5xx, a process that is still starting)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StateDirFull(TransientError):
    """The state directory's filesystem has no space left: nothing is recorded until some is freed."""


class RevisionUnavailable(Exception):
    """A Git revision could not be read (not a repository, an unknown ref, a failing git command).

    The message is for the user as is: one line, never a traceback.
    """
