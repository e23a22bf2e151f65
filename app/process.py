"""The server as a process on this machine (issue #19): one ``pictor serve`` per data
directory, children that end with the supervisor, ports checked before anything starts.

The lock is an ``flock`` on ``<data dir>/serve.lock``: the kernel drops it when the
holder exits in any way (SIGKILL included), so a stale lock never needs clearing by hand,
and the file says who holds it. Only ``pictor serve`` takes it; the other commands
(``import``, ``token``, ``audit``, ...) work beside a running server.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

#: set by ``pictor serve`` for its children: the process whose death ends them
SUPERVISOR_VARIABLE = "PICTOR_SUPERVISOR_PID"
#: set by ``pictor serve`` for a child on no port: the pipe it writes to once ready
READY_VARIABLE = "PICTOR_READY_FD"

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class DataDirInUse(Exception):
    """Another ``pictor serve`` holds the data directory."""


class ServeLock:
    """The exclusive hold of a data directory by one ``pictor serve``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "serve.lock"
        self._fd: int | None = None

    def acquire(self, **about: Any) -> None:
        """Take the lock or raise :class:`DataDirInUse` saying who holds it. ``about``
        (port, ...) is written into the file for the next one to read."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirInUse(self._in_use(holder)) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), **about}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def _in_use(self, holder: dict[str, Any]) -> str:
        who = f"pid {holder['pid']}" if "pid" in holder else "another process"
        if holder.get("host"):
            who += f" on {holder['host']}"
        details = [who]
        if holder.get("port"):
            details.append(f"HTTP port {holder['port']}")
        if holder.get("since"):
            details.append(f"since {holder['since']}")
        return (
            f"the data directory {self.path.parent} is in use by another pictor serve "
            f"({', '.join(details)}): stop that one first, or give this one another "
            "--data-dir / PICTOR_DATA_DIR"
        )


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def die_with_supervisor() -> None:
    """In a child of ``pictor serve`` (an HTTP worker, the DIMSE process): end when the
    supervisor dies, SIGKILL included, so no worker keeps serving as an orphan."""
    expected = os.environ.get(SUPERVISOR_VARIABLE, "")
    if expected.isdigit() and int(expected) != os.getpid():
        die_with_parent(int(expected))
    # else: not a child of pictor serve (tests, the single-process server)


def say_ready() -> None:
    """Tell ``pictor serve`` that this child is ready (see :data:`READY_VARIABLE`)."""
    fd = os.environ.pop(READY_VARIABLE, "")
    if fd.isdigit():
        try:
            os.write(int(fd), b"1")
            os.close(int(fd))
        except OSError:
            pass  # started by hand, or the supervisor stopped waiting


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel send this process SIGTERM when ``parent_pid``, its parent, dies
    (Linux ``PR_SET_PDEATHSIG``); a process whose parent is already gone ends at once."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def port_problem(host: str, port: int, what: str, option: str) -> str | None:
    """Why ``host:port`` cannot be listened on, in one line, or None. Checked before
    anything starts, so a port in use stops the start instead of leaving half a server
    (issue #19: DIMSE silently down, or the URL printed and then an exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        return f"cannot listen on {host}:{port} for {what} ({option}): {reason}"
    return None
