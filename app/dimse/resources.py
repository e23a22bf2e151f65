"""What the DIMSE services share: settings, the one pool, the blob store, ingest, the bridge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.config import Settings
from app.dimse.bridge import Bridge
from app.ingest import Ingest
from app.storage import FileBlobStore

if TYPE_CHECKING:
    import asyncpg


@dataclass(frozen=True)
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    store: FileBlobStore
    ingest: Ingest
    bridge: Bridge
