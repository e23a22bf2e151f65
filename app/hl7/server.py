"""The HL7 process: the MLLP listener on its own event loop and database pool.

``pictor serve`` starts it (``python -m app.hl7``) with the settings in the
environment when ``PICTOR_HL7_PORT`` is not 0, watches it and stops it with the rest.
One process takes every HL7 connection, so messages are handled in the order they
arrive, which ADT and order feeds rely on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from app.addresses import resolve
from app.bootstrap import create_pool
from app.config import ConfigError, Settings, load_settings
from app.hl7.listener import Listener
from app.services.worklist import Worklist

log = logging.getLogger("pictor.hl7")


async def serve(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    peers = None
    if settings.auth or settings.hl7_peer_list:
        if not settings.hl7_peer_list:
            raise ConfigError(
                "PICTOR_AUTH is on but PICTOR_HL7_PEERS is empty: no RIS could connect "
                "(set the peers, or --hl7-port 0)"
            )
        peers = await asyncio.to_thread(resolve, settings.hl7_peer_list, "HL7 peer")
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        listener = Listener(Worklist(pool), peers=peers)
        server = await listener.serve(settings.host, settings.hl7_port)
        print(f"Pictor HL7 (MLLP) at {settings.host}:{settings.hl7_port}", flush=True)
        try:
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()
    finally:
        await pool.close()


def main() -> int:
    from app.process import die_with_supervisor

    die_with_supervisor()
    try:
        settings = load_settings()
        if not settings.database_url:
            raise ConfigError("the HL7 process needs DATABASE_URL (pictor serve sets it)")
        level = settings.log_level.upper()
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        import uvloop

        uvloop.run(serve(settings))
    except ConfigError as exc:
        print(f"pictor hl7: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pictor hl7: {exc}", file=sys.stderr)
        return 1
    return 0
