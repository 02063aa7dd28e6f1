"""The listening socket: bound here, inherited (``--listen-fd``), or handed to the next replica.

Replicas that share one listening socket share its kernel accept queue: a connection waiting in
the queue is taken by whichever replica accepts next, so a replica that stops accepting during
a rolling update leaves its queued connections to the others instead of dropping them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from controller.scoring.reporting import log_event

BACKLOG = 2048


def open_listener(host: str, port: int, listen_fd: int | None) -> socket.socket:
    """The listening TCP socket: the inherited ``listen_fd`` if given, else a new one on host:port."""
    if listen_fd is not None:
        listener = socket.socket(fileno=listen_fd)
        if listener.type != socket.SOCK_STREAM:
            raise ValueError(f"--listen-fd {listen_fd} is not a stream socket")
        # Listening again is harmless and makes an fd that was bound but never listened usable.
        listener.listen(BACKLOG)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(BACKLOG)
    listener.setblocking(False)
    return listener


class FdServer:
    """Hands a duplicate of the listening socket to any local client of a unix socket."""

    def __init__(self, path: str, listen_fd: int) -> None:
        self._path = path
        self._fd = os.dup(listen_fd)
        if os.path.exists(path):
            # The previous replica's socket: the newest replica takes the path over.
            os.unlink(path)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        os.chmod(path, 0o600)
        self._server.listen(16)
        self._inode = os.stat(path).st_ino
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="fd-socket", daemon=True)

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread.start()
        log_event("fd_socket_serving", path=self._path)

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _addr = self._server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                socket.send_fds(conn, [b"listen-fd"], [self._fd])

    def close(self) -> None:
        """Stop serving; remove the path unless a newer replica has taken it over."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with contextlib.suppress(OSError):
            if os.stat(self._path).st_ino == self._inode:
                os.unlink(self._path)
        os.close(self._fd)
