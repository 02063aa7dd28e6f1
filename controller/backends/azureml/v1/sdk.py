"""What azureml-core does besides its API: prints to stdout, leaves temp files, refuses absolute paths.

These wrappers keep its output out of the controller's, remove exactly what it leaves in $TMPDIR,
and register a model from any absolute path without changing the process's working directory.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from controller.backends.azureml.classifying import scrub
from controller.structs.logformats import event_logger

log = event_logger(__name__)

_warned = threading.Event()
_sdk_temp_lock = threading.Lock()


def warn_end_of_support() -> None:
    """Log once per process that SDK v1 is past Microsoft's end of support."""
    if not _warned.is_set():
        _warned.set()
        log.warning("azureml.sdk_v1_end_of_support", package="azureml-core", support_ended="2026-06",
                    advice="SDK v1 gets no fixes; move services to api: v2 (azure-ai-ml)")


def epoch(value: Any) -> int:
    """Unix seconds from what the SDK gives for a token's times (a ``datetime`` it made from them, or a number)."""
    return int(value.timestamp()) if isinstance(value, datetime.datetime) else int(value)


def error_message(service: Any, exc: BaseException) -> str:
    err = getattr(service, "error", None)
    if isinstance(err, dict):
        details = err.get("details") or []
        return str(err.get("message") or "") + "".join(f" [{d.get('code')}: {d.get('message')}]" for d in details
                                                         if isinstance(d, dict))
    return scrub(str(exc)).strip().splitlines()[-1][:500] if str(exc).strip() else type(exc).__name__


class _QuietStdout:
    """``sys.stdout`` while any thread is in ``quiet``: drops the writes of those threads only.

    ``contextlib.redirect_stdout`` swaps a process-wide object: two executor threads in it at once
    restore each other's replacement, and the controller's stdout stays swallowed for good.
    """

    def __init__(self, target: Any) -> None:
        self.target = target

    def write(self, text: str) -> int:
        if getattr(_quiet_threads, "depth", 0):
            return len(text)
        return int(self.target.write(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


_quiet_threads = threading.local()
_quiet_lock = threading.Lock()
_quiet_users = 0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The SDK prints progress to stdout; keep it out of the controller's output (this thread's only)."""
    import sys

    global _quiet_users
    with _quiet_lock:
        if _quiet_users == 0 and not isinstance(sys.stdout, _QuietStdout):
            sys.stdout = _QuietStdout(sys.stdout)
        _quiet_users += 1
    _quiet_threads.depth = getattr(_quiet_threads, "depth", 0) + 1
    try:
        yield
    finally:
        _quiet_threads.depth -= 1
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0 and isinstance(sys.stdout, _QuietStdout):
                sys.stdout = sys.stdout.target


def register_model(ws: Any, source: Path, name: str, **kwargs: Any) -> Any:
    """``Model.register`` of the absolute path ``source``, without its check against the working directory.

    ``Model.register`` refuses a path outside ``os.getcwd()`` but otherwise reads absolute paths;
    changing the process-wide working directory would break relative paths in every other thread,
    so its two steps (upload the files as an asset, register the asset) are called directly.
    """
    from azureml._model_management._util import model_name_validation
    from azureml.core import Model

    model_name_validation(name)
    asset = Model._create_asset(ws.service_context, str(source), name)
    return Model._register_with_asset(ws, name, asset.id, unpack=False, **kwargs)


_SDK_REQUIREMENTS: Final = "azureml-model-management-sdk=="
_SDK_TARBALL = re.compile(r"[0-9a-f]{8}\.tar\.gz")


@contextlib.contextmanager
def sdk_tempfiles_removed() -> Iterator[None]:
    """Remove what ``Model.deploy`` / ``Webservice.update`` leave in $TMPDIR, and nothing else.

    The SDK writes a wrapped entry script (``tmp*.py``), a requirements file and a tarball of the
    source folder (``tmp*/xxxxxxxx.tar.gz``) and never deletes them. ``tempfile.tempdir`` is
    process-wide, so the call is not pointed at a private folder: the entries new after the call
    that have those shapes are removed instead. Calls are serialised so that one never removes
    another's files before it uploaded them; waiting for the deployment happens after this.
    """
    with _sdk_temp_lock:
        root = Path(tempfile.gettempdir())
        before = set(os.listdir(root))
        try:
            yield
        finally:
            for entry in set(os.listdir(root)) - before:
                path = root / entry
                if not _made_by_sdk(path):
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()


def _made_by_sdk(path: Path) -> bool:
    try:
        if path.is_dir():
            inside = os.listdir(path)
            return path.name.startswith("tmp") and len(inside) == 1 and bool(_SDK_TARBALL.fullmatch(inside[0]))
        if path.name.startswith("requirements") and path.suffix == ".txt":
            return path.read_text(errors="replace").startswith(_SDK_REQUIREMENTS)
        if path.name.startswith("tmp") and path.suffix == ".py":
            return "driver_module_spec" in path.read_text(errors="replace")  # the SDK's main_template.txt
    except OSError:
        return False
    return False




SDK_RETRIES: Final = 0
"""Retries azureml-core may make on its own: none. Left alone it retries a 429 three times with a
32 s base back-off, ignoring Retry-After, underneath the executor's retries; the executor retries
instead, waiting at least what the server's Retry-After asks (``TransientError.retry_after``)."""
SDK_BACKOFF_S: Final = 1
"""azureml-core's back-off base for the retries its own REST clients still make (a 429 used 32 s)."""


def bound_sdk_retries() -> None:
    """Make the backend the owner of retries: azureml-core's own retry loop is turned off.

    Its defaults are module globals, read when each call is made (``AZUREML_DEFAULT_RETRIES``
    only sets them at import), so setting them here holds for every call after the first connect.
    """
    from azureml._restclient import clientbase

    clientbase.DEFAULT_RETRIES = SDK_RETRIES
    clientbase.DEFAULT_BACKOFF = SDK_BACKOFF_S
    clientbase.DEFAULT_500_BACKOFF = SDK_BACKOFF_S
    clientbase.DEFAULT_503_BACKOFF = SDK_BACKOFF_S
