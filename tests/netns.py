"""Run a test's body in a private network namespace (Linux, root): a loopback of its
own that nothing outside can reach, and from which nothing outside can be reached.
Peers that listen on every address (Orthanc, storescp) are started inside it, with the
Pictor server they talk to, so no test traffic can leave the machine or meet another
test's servers.

:func:`isolated` forks the test process; the child enters a new network namespace
(``unshare(CLONE_NEWNET)``), brings its loopback up and runs the function; an exception
in it comes back to the parent as an AssertionError with the child's traceback."""

from __future__ import annotations

import ctypes
import multiprocessing
import socket
import subprocess
import traceback
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000


def _enter_private_network() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed (root is needed)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        _enter_private_network()
        result = fn(*args)
        conn.send(("ok", result))
    except BaseException:  # noqa: BLE001 - the parent reports it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def isolated(fn: Callable[..., Any], *args: Any, timeout: float = 600) -> Any:
    """``fn(*args)`` in a forked child in a private network namespace; its result."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe(duplex=False)
    proc = context.Process(target=_child, args=(child, fn, args))
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise AssertionError(f"the isolated test body ran past {timeout:g} s")
        kind, value = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    if kind != "ok":
        raise AssertionError(f"in the private network namespace:\n{value}")
    return value


def outside_is_unreachable(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` fails from here (in the namespace, the
    machine's other addresses do not exist)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except OSError:
        return True
