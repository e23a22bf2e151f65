"""``pictor import PATH...``: bulk import of DICOM files through the ingest path of STOW.

Folders are searched recursively (an existing archive, a CD with a DICOMDIR: every
referenced file lies under the folder; the DICOMDIR index itself is not an instance
and is skipped), and ZIP files are read member by member, streamed. Files are stored
exactly as they are, with the same two-phase store, duplicate rules and failure
reasons as STOW-RS, by several worker processes at once. A data set without the Part
10 preamble and File Meta Information (PS3.10 7.1; older systems and some CDs write
them so) is stored with a File Meta Information built for it in front of its bytes,
unchanged. Re-running on the same folder is safe: identical instances count as already
stored.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import msgspec

from app.config import Settings, load_settings, to_environment
from app.dicom.part10 import EXPLICIT_VRS, dicom_kind, file_meta_for
from app.services.ingest import ALREADY_STORED, BATCH, FAILED, STORED, Ingest, Outcome, Part

_READ = 1 << 20

#: one thing to import: a file, or a ZIP file and the name of a member in it
Item = tuple[str, str]


def display(item: Item) -> str:
    path, member = item
    return f"{path}/{member}" if member else path


def find_items(paths: list[Path]) -> Iterator[Item]:
    """Every file under ``paths``, and every member of each ZIP file among them."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield from _items_of(Path(root) / name)
        elif path.exists():
            yield from _items_of(path)


def _items_of(path: Path) -> Iterator[Item]:
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m.filename for m in archive.infolist() if not m.is_dir()]
        except (OSError, zipfile.BadZipFile):
            yield (str(path), "")  # reported as not DICOM
            return
        for member in sorted(members):
            yield (str(path), member)
    else:
        yield (str(path), "")


def _is_dicomdir(item: Item) -> bool:
    return Path(item[1] or item[0]).name.upper() == "DICOMDIR"


@contextmanager
def _open(item: Item) -> Iterator[IO[bytes]]:
    path, member = item
    if not member:
        with open(path, "rb", buffering=0) as f:
            yield f
        return
    with zipfile.ZipFile(path) as archive, archive.open(member) as f:
        yield f


async def _ingest_files(
    settings: Settings, items: list[Item], skipped: list[Item]
) -> list[tuple[Item, Outcome]]:
    from app.bootstrap import create_pool, open_store

    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        ingest = Ingest(settings, pool, open_store(settings))
        parts: list[Part] = []
        taken: list[Item] = []
        for item in items:
            try:
                with _open(item) as f:
                    head = f.read(132)
                    kind = dicom_kind(head)
                    if not kind:
                        skipped.append(item)
                        continue
                    temp = ingest.new_part()
                    try:
                        if kind == "dataset":
                            f.seek(0)
                            meta = file_meta_for(f, explicit=head[4:6] in EXPLICIT_VRS)
                            if meta is not None:
                                await temp.write(meta)
                        f.seek(0)
                        while chunk := f.read(_READ):
                            await temp.write(chunk)
                    except BaseException:
                        await temp.abort()
                        raise
            except (OSError, zipfile.BadZipFile, RuntimeError) as exc:  # unreadable member
                skipped.append(item)
                print(f"pictor import: {display(item)}: cannot be read: {exc}")
                continue
            parts.append(await ingest.complete(temp))
            taken.append(item)
        outcomes = await ingest.commit(parts, who="cli:import", may_purge=True)
    finally:
        await pool.close()
    return list(zip(taken, outcomes))


def _worker(environment: dict[str, str], items: list[Item]) -> tuple[list[tuple[str, bytes]], int]:
    """Runs in a worker process: ingest one batch; returns outcomes and the non-DICOM count."""
    settings = load_settings(environ=environment)
    skipped: list[Item] = []
    results = asyncio.run(_ingest_files(settings, items, skipped))
    return [(display(i), msgspec.json.encode(o)) for i, o in results], len(skipped)


def run_import(
    settings: Settings, paths: list[Path], *, jobs: int = 0, report: Path | None = None
) -> int:
    """Import ``paths``; print a progress bar, every failure with its reason, and a
    summary; ``report``: a tab-separated line per file (outcome, reason, message).
    Exit status 1 if any failed."""
    from tqdm import tqdm

    from app.bootstrap import EmbeddedPostgres, prepare

    missing = [p for p in paths if not p.exists()]
    for p in missing:
        print(f"pictor import: {p}: no such file or folder")
    items = [i for i in find_items(paths) if not _is_dicomdir(i)]
    dicomdirs = sum(1 for i in find_items(paths) if _is_dicomdir(i))
    embedded: EmbeddedPostgres | None = None
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    failures: list[tuple[str, str]] = []
    lines = open(report, "w", encoding="utf-8") if report is not None else None  # noqa: SIM115
    try:
        if lines is not None:
            lines.write("file\toutcome\tfailure reason\tmessage\n")
        if not settings.database_url:
            embedded = EmbeddedPostgres(settings.pg_dir)
            settings = msgspec.structs.replace(settings, database_url=embedded.start())
        asyncio.run(prepare(settings, settings.database_url))
        environment = to_environment(settings)
        batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
        workers = jobs or (os.cpu_count() or 1)
        with (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool,
            tqdm(total=len(items), unit="file", desc="importing", disable=None) as bar,
        ):
            futures = [pool.submit(_worker, environment, batch) for batch in batches]
            for future in as_completed(futures):
                results, not_dicom = future.result()
                counts["not-dicom"] += not_dicom
                bar.update(not_dicom)
                for name, encoded in results:
                    outcome = msgspec.json.decode(encoded, type=Outcome)
                    counts[outcome.status] += 1
                    reason = f"{outcome.reason:04X}H" if outcome.reason is not None else ""
                    if outcome.status == FAILED:
                        failures.append((name, f"{reason} {outcome.message}".strip()))
                        reasons[outcome.message.partition(":")[0]] += 1
                    if lines is not None:
                        lines.write(f"{name}\t{outcome.status}\t{reason}\t{outcome.message}\n")
                    bar.update(1)
    finally:
        if lines is not None:
            lines.close()
        if embedded is not None:
            embedded.stop()  # not while a server (or another command) still uses it
    for name, message in sorted(failures):
        print(f"failed: {name}: {message}")
    if len(reasons) > 1:
        for text, n in reasons.most_common():
            print(f"  {n} x {text}")
    print(
        f"stored {counts[STORED]}, already present {counts[ALREADY_STORED]}, "
        f"failed {counts[FAILED]}, skipped {counts['not-dicom']} non-DICOM files"
        + (f" and {dicomdirs} DICOMDIR index" if dicomdirs else "")
    )
    return 1 if counts[FAILED] or missing else 0
