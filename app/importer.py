"""``pictor import PATH...``: bulk import of DICOM files through the ingest path of STOW.

Folders are searched recursively (an existing archive, a CD with a DICOMDIR: every
referenced file lies under the folder; the DICOMDIR index itself is not an instance
and is skipped). Files are stored exactly as they are, with the same two-phase store,
duplicate rules and failure reasons as STOW-RS, by several worker processes at once.
Re-running on the same folder is safe: identical instances count as already stored.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import msgspec

from app.config import Settings, load_settings, to_environment
from app.services.ingest import ALREADY_STORED, BATCH, FAILED, STORED, Ingest, Outcome, Part

_READ = 1 << 20


def find_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        elif path.exists():
            yield path


def _is_dicomdir(path: Path) -> bool:
    return path.name.upper() == "DICOMDIR"


def looks_like_dicom(path: Path) -> bool:
    """PS3.10 7.1: the 'DICM' prefix after the 128-byte preamble (or, rarely, without it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or head[:4] == b"DICM"


async def _ingest_files(
    settings: Settings, files: list[str], skipped: list[str]
) -> list[tuple[str, Outcome]]:
    from app.bootstrap import create_pool, open_store

    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        ingest = Ingest(settings, pool, open_store(settings))
        parts: list[Part] = []
        for name in files:
            if not looks_like_dicom(Path(name)):
                skipped.append(name)
                continue
            temp = ingest.new_part()
            try:
                with open(name, "rb", buffering=0) as f:
                    while chunk := f.read(_READ):
                        await temp.write(chunk)
            except BaseException:
                await temp.abort()
                raise
            parts.append(await ingest.complete(temp))
        outcomes = await ingest.commit(parts, who="cli:import", may_purge=True)
    finally:
        await pool.close()
    names = [n for n in files if n not in set(skipped)]
    return list(zip(names, outcomes))


def _worker(environment: dict[str, str], files: list[str]) -> tuple[list[tuple[str, bytes]], int]:
    """Runs in a worker process: ingest one batch; returns outcomes and the non-DICOM count."""
    settings = load_settings(environ=environment)
    skipped: list[str] = []
    results = asyncio.run(_ingest_files(settings, files, skipped))
    return [(name, msgspec.json.encode(outcome)) for name, outcome in results], len(skipped)


def run_import(settings: Settings, paths: list[Path], *, jobs: int = 0) -> int:
    """Import ``paths``; print a progress bar and a summary. Exit status 1 if any failed."""
    from tqdm import tqdm

    from app.bootstrap import EmbeddedPostgres, prepare

    missing = [p for p in paths if not p.exists()]
    for p in missing:
        print(f"pictor import: {p}: no such file or folder")
    files = [p for p in find_files(paths) if not _is_dicomdir(p)]
    skipped = sum(1 for p in find_files(paths) if _is_dicomdir(p))
    embedded: EmbeddedPostgres | None = None
    counts: Counter[str] = Counter()
    failures: list[tuple[str, str]] = []
    try:
        if not settings.database_url:
            embedded = EmbeddedPostgres(settings.pg_dir)
            settings = msgspec.structs.replace(settings, database_url=embedded.start())
        asyncio.run(prepare(settings, settings.database_url))
        environment = to_environment(settings)
        batches = [[str(f) for f in files[i : i + BATCH]] for i in range(0, len(files), BATCH)]
        workers = jobs or (os.cpu_count() or 1)
        with (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool,
            tqdm(total=len(files), unit="file", desc="importing", disable=None) as bar,
        ):
            futures = [pool.submit(_worker, environment, batch) for batch in batches]
            for future in as_completed(futures):
                results, not_dicom = future.result()
                counts["not-dicom"] += not_dicom
                bar.update(not_dicom)
                for name, encoded in results:
                    outcome = msgspec.json.decode(encoded, type=Outcome)
                    counts[outcome.status] += 1
                    if outcome.status == FAILED:
                        failures.append((name, outcome.message))
                    bar.update(1)
    finally:
        if embedded is not None:
            embedded.stop()  # not while a server (or another command) still uses it
    for name, message in sorted(failures)[:50]:
        print(f"failed: {name}: {message}")
    if len(failures) > 50:
        print(f"... and {len(failures) - 50} more failures")
    print(
        f"stored {counts[STORED]}, already present {counts[ALREADY_STORED]}, "
        f"failed {counts[FAILED]}, skipped {counts['not-dicom']} non-DICOM files"
        + (f" and {skipped} DICOMDIR index" if skipped else "")
    )
    return 1 if counts[FAILED] or missing else 0
