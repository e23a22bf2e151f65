"""``pictor serve`` as a process an administrator starts and stops (issue #19, "safe
start and stop"): one server per data directory, no orphans when the supervisor is
killed, ports and settings refused in one line, the database shared with the other
commands and restarted when it dies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from app.index.database import EmbeddedPostgres

from conftest import content_type, multipart
from server import PictorProcess, free_port, postmaster_pid
from synth import ct_slice, new_uids

PICTOR = [sys.executable, "-m", "app.cli"]
ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PICTOR_") and k != "DATABASE_URL"
    }
    env.update({"PICTOR_DIMSE_PORT": "0", "PICTOR_HL7_PORT": "0", **extra})
    return env


def _serve(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """``pictor serve`` that is expected to refuse to start."""
    return subprocess.run(
        PICTOR + ["serve", *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def _one_clear_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("pictor:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def _health(base: str) -> int:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _store(base: str, count: int = 1) -> str:
    study, series = new_uids()
    body = multipart([ct_slice(study, series, i, rows=64, cols=64) for i in range(count)])
    request = urllib.request.Request(
        f"{base}/dicom-web/studies",
        data=body,
        headers={"Content-Type": content_type()},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.status == 200
    return study


def _studies(base: str) -> list[str]:
    with urllib.request.urlopen(f"{base}/dicom-web/studies", timeout=10) as r:
        body = r.read()
    return [s["0020000D"]["Value"][0] for s in json.loads(body or b"[]")]


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_second_server_on_the_same_data_directory_refuses_and_harms_nothing(
    tmp_path: Path,
) -> None:
    first = PictorProcess(tmp_path / "data", workers=1).start()
    try:
        assert first.proc is not None
        pg = postmaster_pid(first.data_dir)
        out = _serve("--port", str(free_port()), "--data-dir", str(first.data_dir))
        line = _one_clear_line(out)
        assert "in use by another pictor serve" in line
        assert f"pid {first.proc.pid}" in line and f"HTTP port {first.port}" in line
        # the first server and its database are untouched
        assert postmaster_pid(first.data_dir) == pg
        assert _health(first.base) == 200
        _store(first.base)
    finally:
        first.stop()
    # the lock went with the server: the directory can be served again
    again = PictorProcess(tmp_path / "data", workers=1).start()
    assert _health(again.base) == 200
    again.stop()


def test_a_command_beside_the_server_leaves_its_database_running(tmp_path: Path) -> None:
    server = PictorProcess(tmp_path / "data", workers=1).start()
    try:
        pg = postmaster_pid(server.data_dir)
        out = subprocess.run(
            PICTOR + ["token", "create", "--scopes", "read", "--name", "beside"],
            env=_env(PICTOR_DATA_DIR=str(server.data_dir)),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert postmaster_pid(server.data_dir) == pg and pg is not None and _alive(pg)
        assert _health(server.base) == 200
        _store(server.base)
    finally:
        server.stop()
    assert pg is not None and _wait(lambda: not _alive(pg), 15), "the last user stops it"


def test_killing_the_supervisor_ends_its_workers_and_dimse_process(tmp_path: Path) -> None:
    dimse_port = free_port()
    server = PictorProcess(
        tmp_path / "data", workers=2, env={"PICTOR_DIMSE_PORT": str(dimse_port)}
    ).start()
    assert server.proc is not None
    study = _store(server.base)
    children = psutil.Process(server.proc.pid).children(recursive=True)
    assert len(children) >= 3  # two HTTP workers, the DIMSE process (and codec workers)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    survivors = [c.pid for c in children if not _wait(lambda c=c: not _alive(c.pid), 15)]
    assert survivors == [], f"orphans still running: {survivors}"
    # nothing holds the ports or the directory: a new generation starts on the same ones
    again = PictorProcess(
        tmp_path / "data", port=server.port, workers=1, env={"PICTOR_DIMSE_PORT": str(dimse_port)}
    ).start()
    try:
        assert study in _studies(again.base)
    finally:
        again.stop()


@pytest.mark.parametrize("door", ["HTTP", "DIMSE"])
def test_a_port_in_use_stops_the_start_in_one_line(tmp_path: Path, door: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if door == "HTTP":
            out = _serve("--port", str(port), "--data-dir", str(tmp_path / "d"))
            option = "--port / PICTOR_PORT"
        else:
            out = _serve(
                "--port",
                str(free_port()),
                "--data-dir",
                str(tmp_path / "d"),
                PICTOR_DIMSE_PORT=str(port),
            )
            option = "--dimse-port / PICTOR_DIMSE_PORT"
    line = _one_clear_line(out)
    assert line == (
        f"pictor: cannot listen on 127.0.0.1:{port} for {door} ({option}): address already in use"
    )
    assert "DICOMweb at" not in out.stdout  # no URL printed for a server that is not there
    assert postmaster_pid(tmp_path / "d") is None  # nothing was started


def test_start_up_errors_are_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = _one_clear_line(_serve("--data-dir", str(blocker / "data")))
    assert line.startswith(f"pictor: the data directory {blocker / 'data'} (--data-dir")
    assert "is not writable" in line
    for url, reason in (
        ("postgresql://pictor:s3cret@127.0.0.1:1/pacs", "Connect call failed"),
        ("mysql://somewhere/pacs", "invalid DSN"),
    ):
        out = _serve("--data-dir", str(tmp_path / "d"), DATABASE_URL=url)
        line = _one_clear_line(out)
        assert "(DATABASE_URL)" in line and reason in line
        assert "s3cret" not in out.stderr + out.stdout  # the password is never printed
    line = _one_clear_line(_serve("--data-dir", str(tmp_path / "d"), PICTOR_WORKERS="0"))
    assert line.startswith("pictor: PICTOR_WORKERS='0' / --workers: give 1 to 64")


@pytest.mark.slow
def test_the_embedded_database_killed_is_restarted_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    server = PictorProcess(tmp_path / "data", workers=2).start()
    try:
        before = _store(server.base, 3)
        pg = postmaster_pid(server.data_dir)
        assert pg is not None
        os.kill(pg, signal.SIGKILL)
        # meanwhile: 503 with Retry-After (or already answered again)
        try:
            with urllib.request.urlopen(f"{server.base}/dicom-web/studies", timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            assert exc.headers["Retry-After"].isdigit()
            assert "Traceback" not in exc.read().decode()
        # a session of the killed server can answer a probe in the moment before it
        # notices: back means answering through a new server
        assert _wait(
            lambda: (
                postmaster_pid(server.data_dir) not in (None, pg) and _health(server.base) == 200
            ),
            30,
        ), "service did not come back"

        def answers() -> bool:
            try:
                return before in _studies(server.base)
            except urllib.error.HTTPError:
                return False  # a worker still holding a dead connection: retried

        assert _wait(answers, 30)
        after = _store(server.base, 2)
        assert {before, after} <= set(_studies(server.base))
        assert "Traceback" not in server.log_path.read_text()
    finally:
        server.stop()


@pytest.mark.skipif(
    os.geteuid() != 0, reason="pgserver runs PostgreSQL as its own user only as root"
)
def test_a_restart_gives_back_what_a_start_gave_the_database_user(tmp_path: Path) -> None:
    """Run as root, pgserver starts PostgreSQL as its own system user and opens the
    directories above the data directory for it. A restart after the postmaster died
    must do so again: CI once saw a tool tighten /tmp's folders meanwhile, and every
    restart then failed ("pg_ctl: could not access directory ...: Permission denied")."""
    parent = tmp_path / "closed"
    parent.mkdir()
    pg = EmbeddedPostgres(parent / "pg")
    pg.start()
    try:
        pid = postmaster_pid(parent)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        parent.chmod(0o700)  # what pytest does to its own base directory
        assert _wait(lambda: pg.restart(), 30), "the database did not restart"
        assert (parent.stat().st_mode & 0o005) == 0o005
    finally:
        pg.stop()


@pytest.mark.slow
def test_workers_started_while_the_database_is_down_serve_503_then_recover(
    tmp_path: Path,
) -> None:
    """A worker uvicorn restarts during a database outage must not fail its start-up
    (that stops the whole server); it answers 503 with Retry-After until the database
    is back. Here the database is a separate PostgreSQL (DATABASE_URL), stopped and
    started again by the test."""
    external = EmbeddedPostgres(tmp_path / "external-pg")
    dsn = external.start()
    server = PictorProcess(tmp_path / "data", workers=2, env={"DATABASE_URL": dsn}).start()
    try:
        assert server.proc is not None
        study = _store(server.base)
        workers = psutil.Process(server.proc.pid).children()
        external.stop()
        assert _wait(lambda: _health(server.base) == 503, 15)
        try:
            urllib.request.urlopen(f"{server.base}/dicom-web/studies", timeout=10)
            raise AssertionError("answered without a database")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and exc.headers["Retry-After"].isdigit()
        for worker in workers:
            if worker.name().startswith("python") and worker.cmdline()[-1:] != ["app.dimse"]:
                worker.kill()  # uvicorn starts a replacement while the database is down
        time.sleep(4)
        assert server.proc.poll() is None, server.log_path.read_text()[-3000:]
        assert _health(server.base) == 503
        external.start()

        def back() -> bool:
            try:
                return _health(server.base) == 200 and study in _studies(server.base)
            except urllib.error.HTTPError:
                return False

        assert _wait(back, 30)
        assert _store(server.base) in _studies(server.base)
    finally:
        server.stop()
        external.stop()


def _echo(port: int) -> bool:
    out = subprocess.run(
        ["/usr/bin/echoscu", "-aec", "PICTOR", "127.0.0.1", str(port)],
        capture_output=True,
        timeout=30,
    )
    return out.returncode == 0


def test_a_dimse_process_that_dies_is_restarted_and_health_follows_it(tmp_path: Path) -> None:
    """Issue #19: DIMSE down while /health said ok. /health now covers DIMSE, and the
    supervisor restarts a DIMSE process that crashed or was killed."""
    dimse_port = free_port()
    server = PictorProcess(
        tmp_path / "data", workers=1, env={"PICTOR_DIMSE_PORT": str(dimse_port)}
    ).start()
    try:
        assert server.proc is not None
        with urllib.request.urlopen(f"{server.base}/health", timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "ok" and body["dimse"] == {"port": dimse_port, "listening": True}
        assert _echo(dimse_port)
        dimse = next(
            c
            for c in psutil.Process(server.proc.pid).children()
            if c.cmdline()[-2:] == ["-m", "app.dimse"]
        )
        dimse.kill()
        dimse.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{server.base}/health", timeout=5) as r:
                body = json.loads(r.read())
            if not body["dimse"]["listening"]:  # meanwhile
                assert body["status"] == "degraded"
                assert f"DIMSE does not answer on port {dimse_port}" in body["problems"]
            elif _echo(dimse_port):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("DIMSE did not come back")
        again = [
            c
            for c in psutil.Process(server.proc.pid).children()
            if c.cmdline()[-2:] == ["-m", "app.dimse"]
        ]
        assert len(again) == 1 and again[0].pid != dimse.pid
        assert "the DIMSE process stopped; restarting it" in server.log_path.read_text()
        assert server.stop() == 0
        assert _wait(lambda: not _alive(again[0].pid), 15)  # the new one stops with it
    finally:
        server.stop()
