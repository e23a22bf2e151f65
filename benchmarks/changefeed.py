"""The change feed (issue #17): how fast a consumer reads it, how fast changes are
numbered into it, and what it costs STOW-RS.

Usage: python benchmarks/changefeed.py [--entries 1000000] [--instances 1000]

On a fresh server (its own data directory and embedded PostgreSQL):

1. ``--entries`` feed entries are written straight into the index (``change_feed``,
   generated UIDs), then read as a consumer of Microsoft's feed reads it: one client,
   ``offset`` = the last Sequence read, ``limit=1000``, ``includemetadata=false``;
   entries/s. Every Sequence must come back once, in order.
2. Numbering: ``--entries`` / 10 changes left in ``change_log`` at once (as committed
   writers leave them); seconds until the mover has numbered them all, entries/s.
3. With metadata: ``--instances`` real CT instances stored by STOW-RS (10 per request,
   4 clients: instances/s, every instance feeding one entry), then their entries read
   with ``limit=100`` and ``includemetadata=true``; entries/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import uvloop
from events import store

import _client  # noqa: F401 - puts the repository and tests/ on sys.path
from conftest import embedded_dsn
from server import PictorProcess


async def seed(dsn: str, count: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        start = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM change_feed")
        await conn.execute(
            """INSERT INTO change_feed (seq, at, action, study_uid, series_uid, sop_uid)
               SELECT $1 + g, now(), 'create', '1.2.826.0.1.3680043.10.' || (g / 100),
                      '1.2.826.0.1.3680043.11.' || (g / 10), '1.2.826.0.1.3680043.12.' || g
                 FROM generate_series(1, $2) g""",
            start,
            count,
        )
        await conn.execute("ANALYZE change_feed")
    finally:
        await conn.close()


async def leave_changes(dsn: str, count: int) -> float:
    """``count`` committed change_log rows; seconds until all are numbered."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """INSERT INTO change_log (action, study_uid, series_uid, sop_uid)
               SELECT 'update', '1.2.826.0.1.3680043.20.' || (g / 100),
                      '1.2.826.0.1.3680043.21.' || (g / 10), '1.2.826.0.1.3680043.22.' || g
                 FROM generate_series(1, $1) g""",
            count,
        )
        started = time.perf_counter()
        await conn.execute("SELECT pg_notify('pictor_feed', '')")
        while await conn.fetchval("SELECT EXISTS (SELECT 1 FROM change_log)"):
            await asyncio.sleep(0.01)
        return time.perf_counter() - started
    finally:
        await conn.close()


def read_all(base: str, after: int, limit: int, metadata: bool) -> tuple[int, float]:
    """(entries, seconds) reading from ``after`` to the end."""
    seen = 0
    expected = after + 1
    started = time.perf_counter()
    with httpx.Client(base_url=base, timeout=120) as client:
        while True:
            r = client.get(
                "/changefeed",
                params={
                    "offset": after,
                    "limit": limit,
                    "includemetadata": "true" if metadata else "false",
                },
            )
            r.raise_for_status()
            page = r.json()
            if not page:
                return seen, time.perf_counter() - started
            for entry in page:
                assert entry["Sequence"] == expected, (entry["Sequence"], expected)
                assert ("Metadata" in entry) is metadata or entry["State"] == "deleted"
                expected += 1
            seen += len(page)
            after = page[-1]["Sequence"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--instances", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pictor-feed-bench-") as tmp:
        process = PictorProcess(Path(tmp) / "data", env={"PICTOR_SCRUB_RATE": "0"}).start()
        try:
            dsn = embedded_dsn(process.data_dir)
            base = process.dicomweb
            results: dict[str, float] = {}
            started = time.perf_counter()
            uvloop.run(seed(dsn, args.entries))
            results["seed_seconds"] = round(time.perf_counter() - started, 1)
            read, seconds = read_all(base, 0, 1000, False)
            assert read == args.entries, read
            results["read_entries_per_s"] = round(read / seconds)
            moving = args.entries // 10
            seconds = uvloop.run(leave_changes(dsn, moving))
            results["numbered_entries"] = moving
            results["numbering_entries_per_s"] = round(moving / seconds)
            top = int(httpx.get(base + "/changefeed/latest").json()["Sequence"])
            rate = uvloop.run(store(process.port, args.instances, 4))
            results["stow_instances_per_s"] = round(rate, 1)
            deadline = time.monotonic() + 60
            while int(httpx.get(base + "/changefeed/latest").json()["Sequence"]) < (
                top + args.instances
            ):
                assert time.monotonic() < deadline, "the stored instances were not numbered"
                time.sleep(0.05)
            read, seconds = read_all(base, top, 100, True)
            assert read == args.instances, read
            results["read_with_metadata_entries_per_s"] = round(read / seconds)
            print(json.dumps(results, indent=1))
        finally:
            process.stop()


if __name__ == "__main__":
    main()
