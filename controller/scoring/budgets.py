"""How much request data one scoring process holds at once, and giving the memory back afterwards.

Every request body is held from its first byte until its answer is written (it is the input of
run()). The budget caps the sum over all connections, so a burst of large bodies is answered 503
with Retry-After (the client or Azure's front end retries) instead of growing the process to its
memory limit and being OOM-killed with every request on it.

glibc keeps freed memory for reuse: after large requests the resident set stays at its peak. Large
allocations are made with ``mmap`` (a fixed threshold, so freeing them returns them at once), and
after a large body is released the heap's free pages are handed back with ``malloc_trim``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

MMAP_THRESHOLD: Final = 1024 * 1024
"""Allocations from this size on get their own mapping, returned to the system when freed."""
TRIM_AFTER_BYTES: Final = 1024 * 1024
"""Bodies from this size on make the next idle moment return free heap pages."""
_M_MMAP_THRESHOLD: Final = -3  # mallopt parameter number in glibc's malloc.h


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only: musl and others have no malloc_trim
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


_LIBC = _libc()


def fix_mmap_threshold() -> bool:
    """Make large allocations mmap'd whatever sizes were freed before (glibc raises the threshold otherwise)."""
    return _LIBC is not None and bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def return_free_memory() -> None:
    """Give the heap's free pages back to the system (a no-op without glibc)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class BodyBudget:
    """Bytes of request bodies held by the process; owned by the event loop (no lock)."""

    __slots__ = ("held", "limit", "trim_due")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.trim_due = False

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when that would pass the limit."""
        if self.held + size > self.limit and self.held:
            return False  # one body alone may use the whole budget (--max-request-bytes bounds it)
        self.held += size
        return True

    def give_back(self, size: int) -> bool:
        """Release ``size`` bytes; True when a large body was released and nothing is held any more."""
        self.held -= size
        if size >= TRIM_AFTER_BYTES:
            self.trim_due = True
        if self.trim_due and self.held == 0:
            self.trim_due = False
            return True
        return False
