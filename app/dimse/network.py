"""Socket options for DIMSE connections.

pynetdicom writes a DIMSE message as several PDUs (a command set, then the data set,
PS3.8 9.3.5 / PS3.7 6.3.1), each with its own send. With Nagle's algorithm on, the
second small send waits for the peer's delayed acknowledgement of the first (40 ms on
Linux) on every C-FIND response and C-STORE. TCP_NODELAY sends each PDU at once.
"""

from __future__ import annotations

import socket
from typing import Any


def no_delay(event: Any) -> None:
    """EVT_CONN_OPEN handler: turn Nagle's algorithm off on the association's socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not a TCP socket, or already closed
