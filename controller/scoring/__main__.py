"""``python -m controller.scoring``: the scoring host process (see ``controller.scoring``)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from controller.scoring.importing import apply_tensorflow_defaults
from controller.scoring.options import parse_options
from controller.scoring.reporting import configure_events, log_event, write_status
from controller.scoring.sockets import FdServer, open_listener


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, open the listening socket and serve; returns the process exit status."""
    options = parse_options(sys.argv[1:] if argv is None else argv)
    os.environ.pop("AMLOPS_PROG", None)  # set by `amlops serve` for --help only; user code never sees it
    configure_events(options.log_format)
    tensorflow_defaults = apply_tensorflow_defaults(os.environ)  # before anything can import TensorFlow
    if options.model_dir:
        # Set before the entry script is imported: scripts read it at import time as well as in init().
        os.environ["AZUREML_MODEL_DIR"] = os.path.abspath(options.model_dir)
    try:
        listener = open_listener(options.host, options.port, options.listen_fd)
    except OSError as exc:
        log_event("listen_failed", host=options.host, port=options.port, error=str(exc))
        write_status(options.status_file, "failed", error=f"cannot listen: {exc}")
        return 1
    port = listener.getsockname()[1]
    common = {
        "port": port,
        "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "workers": options.workers,
        "cudaVisibleDevices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }

    def report(state: str, error: str | None = None, **fields: Any) -> None:
        write_status(options.status_file, state, error=error, **common, **fields)

    log_event("starting", port=port, workers=options.workers, entry_script=options.entry_path or "savedmodel",
              auth=options.auth, cuda_visible_devices=common["cudaVisibleDevices"],
              tensorflow_defaults=" ".join(f"{name}={value}" for name, value in tensorflow_defaults.items()) or None)

    def start_fd_server() -> Callable[[], None]:
        if not options.fd_socket:
            return lambda: None
        server = FdServer(options.fd_socket, listener.fileno())
        server.start()
        return server.close

    if options.workers > 1:
        from controller.scoring.forking import serve_forked

        code = serve_forked(options, listener, report, start_fd_server)
    else:
        from controller.scoring.serving import serve_process

        stop_fd_server = start_fd_server()

        def on_drain() -> None:
            stop_fd_server()
            listener.close()

        code = serve_process(options, listener, report, on_drain)
    log_event("exiting", code=code)
    return code


def run_as_script() -> None:
    """Exit with :func:`main`'s status without running interpreter teardown.

    Slot threads may still sit in a run() that overran its timeout, and TensorFlow's own threads
    can hang a normal shutdown; every response is already written when main() returns.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run_as_script()
