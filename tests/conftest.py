"""Shared fixtures: a real ``pictor serve`` on loopback with its embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import pydicom  # noqa: E402
from pydicom.filebase import DicomBytesIO  # noqa: E402

from app import viewer  # noqa: E402

from corpus import reference_files  # noqa: E402
from s3server import MotoServer  # noqa: E402
from server import PictorProcess  # noqa: E402
from synth import ct_slice, new_uids  # noqa: E402

BOUNDARY = "pictor-test-boundary"


def multipart(
    parts: list[bytes], boundary: str = BOUNDARY, part_type: str | None = "application/dicom"
) -> bytes:
    out = []
    for part in parts:
        header = f"Content-Type: {part_type}\r\n" if part_type else ""
        out.append(f"--{boundary}\r\n{header}\r\n".encode() + part + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode()


def content_type(boundary: str = BOUNDARY) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def pictor_cli(
    *args: str, data_dir: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``pictor ARGS`` as an administrator runs it beside a server on ``data_dir`` (no
    PICTOR_* or DATABASE_URL of the test run's own environment; ``env`` added; ``stdin``
    typed in)."""
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICTOR_")}
    env.pop("DATABASE_URL", None)
    env["PICTOR_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )


def until(check: Callable[[], Any], timeout: float = 60, what: str = "", poll: float = 0.3) -> Any:
    """``check()``'s first true value, polled every ``poll`` seconds; AssertionError
    after ``timeout`` seconds naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what or check}")


def embedded_dsn(data_dir: Path) -> str:
    """Connection URI of a server's embedded PostgreSQL (from its postmaster.pid, PS: lines
    4 and 5 are the port and the socket directory)."""
    lines = (data_dir / "pg" / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres@/postgres?host={lines[4]}&port={lines[3]}"


class Archive:
    """A running server plus direct access to its index and storage, for assertions."""

    def __init__(self, process: PictorProcess) -> None:
        self.process = process
        self.http = httpx.Client(base_url=process.dicomweb, timeout=120)

    @property
    def url(self) -> str:
        return self.process.dicomweb

    @property
    def data_dir(self) -> Path:
        return self.process.data_dir

    def stow(
        self, body: bytes, ctype: str | None = None, study: str | None = None
    ) -> httpx.Response:
        path = "/studies" + (f"/{study}" if study else "")
        return self.http.post(path, content=body, headers={"Content-Type": ctype or content_type()})

    def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(embedded_dsn(self.data_dir))
            try:
                return await conn.fetch(sql, *args)
            finally:
                await conn.close()

        return asyncio.run(run())

    def storage_files(self) -> set[str]:
        root = self.data_dir / "storage"
        return {str(p.relative_to(root)) for p in root.rglob("*.dcm")}

    def tmp_files(self) -> list[str]:
        return sorted(p.name for p in (self.data_dir / "tmp").iterdir())


#: starts a ``pictor serve`` (PictorProcess's arguments) that the test's end stops
Pictor = Callable[..., PictorProcess]


def _servers() -> Iterator[Pictor]:
    started: list[PictorProcess] = []

    def start(data_dir: Path, **options: Any) -> PictorProcess:
        process = PictorProcess(data_dir, **options).start()
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture
def pictor() -> Iterator[Pictor]:
    """A factory of real servers on loopback, each stopped when the test ends."""
    yield from _servers()


@pytest.fixture(scope="module")
def pictor_module() -> Iterator[Pictor]:
    """The same, for module fixtures: stopped when the module's tests are done."""
    yield from _servers()


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    process = PictorProcess(tmp_path_factory.mktemp("archive") / "data").start()
    archive = Archive(process)
    try:
        yield archive
    finally:
        archive.http.close()
        process.stop()


# -- the WADO-RS test modules' corpus (test_wado.py, test_transcode.py) --


@pytest.fixture(scope="module")
def stored(archive: Archive) -> dict[str, object]:
    study, series = new_uids()
    files = [ct_slice(study, series, i) for i in range(3)]
    corpus = [
        r
        for r in reference_files()
        if r.number_of_frames > 0 and r.transfer_syntax != "1.2.840.10008.1.2.1.99"
    ]
    r = archive.stow(multipart(files + [r.path.read_bytes() for r in corpus]))
    assert r.status_code == 200, r.text
    datasets = [pydicom.dcmread(DicomBytesIO(f)) for f in files]
    return {
        "study": study,
        "series": series,
        "files": files,
        "datasets": datasets,
        "corpus": corpus,
    }


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """One S3 protocol server on loopback for the session (each test takes buckets of
    its own with ``new_bucket``)."""
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


VIEWER_INDEX = (
    '<!doctype html><html><head><script>window.PUBLIC_URL="/"</script>'
    '<link rel="icon" href="/assets/favicon.ico"><script src="/app-config.js"></script>'
    '<script defer src="/app.bundle.0123456789abcdef.js"></script></head><body></body></html>'
)


def stand_in_viewer(directory: Path) -> Path:
    """A viewer bundle laid out like OHIF's dist, for tests that need no real one."""
    directory.mkdir(parents=True)
    (directory / "index.html").write_text(VIEWER_INDEX)
    (directory / "app.bundle.0123456789abcdef.js").write_text('__webpack_require__.p = "/";')
    (directory / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (directory / "app.bundle.css").write_text("@font-face{src:url(/a.woff2)}")
    (directory / viewer.MARKER).write_text(json.dumps({"version": "test"}))
    assert viewer.relocate(directory) == 1
    return directory
