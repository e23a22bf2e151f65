"""What the DIMSE services share: settings, the one pool, the blob store, ingest, the bridge."""

from __future__ import annotations

from dataclasses import dataclass

from app.bootstrap import Pool
from app.config import Settings
from app.dimse.bridge import Bridge
from app.services.ingest import Ingest
from app.storage import BlobStore


@dataclass(frozen=True)
class Resources:
    settings: Settings
    pool: Pool
    store: BlobStore
    ingest: Ingest
    bridge: Bridge
