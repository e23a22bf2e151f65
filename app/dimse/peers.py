"""Known peers are known by AE title *and* address (issue #13, item 6).

An AE title is a name any caller may claim (PS3.8 7.1.1.4: it is not authenticated), so
with access control on an association is accepted only from a calling AE title of
``PICTOR_DIMSE_PEERS`` that calls from that peer's host (its resolved addresses) or
network. Anything else gets A-ASSOCIATE-RJ (rejected-permanent, service user, "calling
AE title not recognized", PS3.8 9.3.4), sent from the EVT_REQUESTED handler before any
negotiation, as the other refusals are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pynetdicom import evt

from app.addresses import Network, resolve, within

log = logging.getLogger(__name__)


def resolve_sources(sources: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[Network, ...]]:
    """AE title -> the networks it may call from (:func:`app.addresses.resolve`)."""
    return {aet: resolve(hosts, f"DIMSE peer {aet}") for aet, hosts in sources.items()}


def admitted(networks: Mapping[str, tuple[Network, ...]], aet: str, address: str) -> bool:
    """May ``aet`` call from ``address``?"""
    return within(networks.get(aet.strip(), ()), address)


def source_check(networks: Mapping[str, tuple[Network, ...]]) -> tuple[Any, Any]:
    """The EVT_REQUESTED handler that rejects a calling AE title from the wrong place."""

    def handle(event: Any) -> None:
        assoc = event.assoc
        aet = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        if admitted(networks, aet, address):
            return
        log.warning("association refused: calling AE title %r from %s", aet, address)
        assoc.requestor.ae_title = aet  # as negotiation would have set it (for the audit)
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    return (evt.EVT_REQUESTED, handle)
