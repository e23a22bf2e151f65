"""A full disk (issue #19): the data directory on a small tmpfs of its own, filled by
STOW-RS. New data are refused with 507 and a reason, before the disk is full when the
free-space floor is set; nothing half-written stays; reads go on; ``/health`` says
"degraded"; no worker dies; storing resumes once space is freed, without a restart.

Mounting a tmpfs needs root (CI runs as root on this machine)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from test_crash import check_consistency

from conftest import Archive, content_type, multipart
from server import PictorProcess, postmaster_pid
from synth import ct_slice, new_uids

MB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _ballast(disk: Path, leave: int) -> Path:
    """A file that takes all but ``leave`` bytes of the disk."""
    return _ballast_named(disk, "ballast", leave)


def _ballast_named(disk: Path, name: str, leave: int) -> Path:
    path = disk / name
    size = _free(disk) - leave
    with open(path, "wb") as f:
        chunk = b"\0" * MB
        for _ in range(size // MB):
            f.write(chunk)
    return path


def _stow(
    http: httpx.Client, url: str, study: str, series: str, first: int, chunked: bool = False
) -> httpx.Response:
    """10 x 512 KiB; ``chunked``: without a Content-Length, so that only the writes
    themselves can find the disk full."""
    body = multipart([ct_slice(study, series, first + i) for i in range(10)])
    return http.post(
        f"{url}/studies",
        content=iter([body]) if chunked else body,
        headers={"Content-Type": content_type()},
    )


def _workers(server: PictorProcess) -> set[int]:
    assert server.proc is not None
    return {c.pid for c in psutil.Process(server.proc.pid).children()}


def _fill_until_refused(
    http: httpx.Client, server: PictorProcess, study: str, series: str, chunked: bool = False
) -> tuple[list[int], httpx.Response]:
    statuses: list[int] = []
    for n in range(60):
        r = _stow(http, server.dicomweb, study, series, 10 * n, chunked)
        statuses.append(r.status_code)
        if r.status_code not in (200, 202):
            return statuses, r
    raise AssertionError(f"never refused: {statuses}")


def test_below_the_free_space_floor_stow_is_507_and_resumes_when_freed(
    small_disk: Path,
) -> None:
    server = PictorProcess(
        small_disk / "data", workers=2, env={"PICTOR_MIN_FREE_BYTES": str(64 * MB)}
    ).start()
    archive = Archive(server)
    http = httpx.Client(timeout=60)
    try:
        ballast = _ballast(small_disk, 96 * MB)
        workers = _workers(server)
        study, series = new_uids()
        statuses, refused = _fill_until_refused(http, server, study, series)
        assert set(statuses[:-1]) == {200} and refused.status_code == 507, statuses
        assert "PICTOR_MIN_FREE_BYTES" in refused.text and "storage is full" in refused.text
        # refused because the request would not fit above the floor (its Content-Length)
        assert _free(small_disk) >= 64 * MB
        assert http.get(f"{server.base}/health").json()["status"] == "ok"
        # something else takes space (the database, the logs): below the floor now
        more = _ballast_named(small_disk, "more", 48 * MB)
        health = http.get(f"{server.base}/health")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded" and health.json()["storage"]["full"]
        tiny = ct_slice(study, series, 999, rows=8, cols=8)
        r = http.post(
            server.dicomweb + "/studies",
            content=multipart([tiny]),
            headers={"Content-Type": content_type()},
        )
        assert r.status_code == 507 and "PICTOR_MIN_FREE_BYTES" in r.text
        more.unlink()
        # reads go on
        found = http.get(f"{server.dicomweb}/studies/{study}/series")
        assert found.status_code == 200 and found.json()
        check_consistency(archive)
        ballast.unlink()
        assert _stow(http, server.dicomweb, study, series, 1000).status_code == 200
        assert http.get(f"{server.base}/health").json()["status"] == "ok"
        assert _workers(server) == workers
    finally:
        http.close()
        archive.http.close()
        server.stop()


def test_a_disk_that_fills_up_refuses_cleanly_and_recovers(small_disk: Path) -> None:
    """No floor (0): the writes themselves meet ENOSPC. Issue #19 saw a 500, files left
    in tmp/, workers dying of SIGBUS twice a second and, once space was freed, the whole
    server stopping."""
    server = PictorProcess(small_disk / "data", workers=2, env={"PICTOR_MIN_FREE_BYTES": "0"})
    server.start()
    archive = Archive(server)
    http = httpx.Client(timeout=60)
    try:
        pg = postmaster_pid(server.data_dir)
        ballast = _ballast(small_disk, 24 * MB)
        workers = _workers(server)
        study, series = new_uids()
        statuses, refused = _fill_until_refused(http, server, study, series, chunked=True)
        for n in range(3):  # and more while full
            more = _stow(http, server.dicomweb, study, series, 5000 + 10 * n, chunked=True)
            statuses.append(more.status_code)
        assert set(statuses) <= {200, 202, 507}, statuses
        assert "no space left on the device" in refused.text
        check_consistency(archive)
        assert _workers(server) == workers, "a worker died"
        # the failed parts' space was given back: ready, whether "ok" or "degraded"
        assert http.get(f"{server.base}/health").status_code == 200
        ballast.unlink()
        assert _stow(http, server.dicomweb, study, series, 9000).status_code == 200
        assert server.proc is not None and server.proc.poll() is None
        assert http.get(f"{server.base}/health").json()["status"] == "ok"
        assert postmaster_pid(server.data_dir) == pg
        check_consistency(archive)
        assert "Traceback" not in server.log_path.read_text()
    finally:
        http.close()
        archive.http.close()
        server.stop()
