"""Source addresses a peer may call from: hosts (resolved once, at start) and networks.

An AE title or an HL7 sending application is a name any caller may claim, so with
access control on a DIMSE association or an HL7 connection is accepted only from the
addresses configured for it (``PICTOR_DIMSE_PEERS``, ``PICTOR_HL7_PEERS``).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def resolve(hosts: Iterable[str], what: str) -> tuple[Network, ...]:
    """A network as given, a host as each of its addresses. A host that does not
    resolve admits no one and is logged (``what`` names whose it is)."""
    networks: list[Network] = []
    for host in hosts:
        try:
            networks.append(ipaddress.ip_network(host, strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            log.warning("%s: host %r does not resolve (%s)", what, host, exc)
            continue
        networks.extend(ipaddress.ip_network(info[4][0]) for info in infos)
    return tuple(networks)


def within(networks: Iterable[Network], address: str) -> bool:
    """Is ``address`` in one of ``networks``? (An IPv4-mapped IPv6 address is its IPv4
    address.)"""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)
