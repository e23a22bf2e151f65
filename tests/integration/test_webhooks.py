"""Webhooks (issue #17) on a real server, delivering to real HTTP receivers on
loopback: CloudEvents 1.0 in structured mode, signed, in order per study, retried with
backoff by a receiver that fails for a while, kept across a restart, shown by
``pictor webhook status``, and hostile subscriptions refused."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from conftest import Archive, Pictor, content_type, embedded_dsn, multipart, pictor_cli
from server import free_port
from synth import ct_slice, new_uids, sop_instance_uid

SECRET = "a webhook secret of some length"
FAST = {"PICTOR_STABLE_SECONDS": "1", "PICTOR_WEBHOOK_BACKOFF_SECONDS": "0.2"}


class Receiver:
    """An HTTP receiver: keeps every request, checks its signature, answers 500 to the
    first ``failures`` requests, 204 after."""

    def __init__(self, failures: int = 0, port: int | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.failures = failures
        self.port = port or free_port()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                receiver.received.append(
                    {
                        "body": json.loads(body),
                        "content_type": self.headers["Content-Type"],
                        "signed": self.headers.get("X-Pictor-Signature") == expected,
                        "path": self.path,
                        "answered": 500 if receiver.failures > 0 else 204,
                    }
                )
                status = 500 if receiver.failures > 0 else 204
                receiver.failures -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def accepted(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.received if r["answered"] == 204]

    def wait(self, count: int, seconds: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while len(self.accepted()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        got = self.accepted()
        assert len(got) >= count, [e["type"] for e in got]
        return got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def add_hook(data: Path, url: str, events: str, secret: str | None = SECRET) -> int:
    args = ["webhook", "add", "--url", url, "--events", events]
    if secret:
        args += ["--secret", secret]
    done = pictor_cli(*args, data_dir=data)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def stow(archive: Archive, parts: list[bytes]) -> None:
    r = archive.http.post(
        "/studies", content=multipart(parts), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 200, r.text


def status(data: Path) -> list[dict[str, Any]]:
    done = pictor_cli("webhook", "status", "--json", data_dir=data)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_signed_cloudevents_in_order_per_study(
    tmp_path: Path, pictor: Pictor, receiver: Receiver
) -> None:
    data = tmp_path / "data"
    archive = Archive(pictor(data, env=FAST))
    add_hook(data, receiver.url, "instance.created,study.stable,study.updated,study.deleted")
    a, a_series = new_uids()
    b, b_series = new_uids()
    stow(
        archive, [ct_slice(a, a_series, i, rows=16, cols=16, patient_id="HOOK1") for i in range(3)]
    )
    stow(archive, [ct_slice(b, b_series, i, rows=16, cols=16) for i in range(2)])
    events = receiver.wait(7)  # 5 instances, then each study stable
    for r in receiver.received:
        assert r["content_type"].startswith("application/cloudevents+json")
        assert r["signed"] and r["path"] == "/hook"
    for e in events:
        assert e["specversion"] == "1.0" and e["datacontenttype"] == "application/json"
        assert uuid.UUID(e["id"]) and e["source"] and e["time"].endswith("Z")
        assert e["subject"] == e["data"]["StudyInstanceUID"]
    created = [e for e in events if e["type"] == "instance.created"]
    assert {e["data"]["SOPInstanceUID"] for e in created} == {
        *(sop_instance_uid(a_series, i) for i in range(3)),
        *(sop_instance_uid(b_series, i) for i in range(2)),
    }
    assert all(isinstance(e["data"]["Sequence"], int) for e in created)
    for study, count in ((a, 3), (b, 2)):
        kinds = [e["type"] for e in events if e["subject"] == study]
        assert kinds == ["instance.created"] * count + ["study.stable"], kinds
    # a correction, then a deletion
    r = httpx.post(
        archive.process.base + f"/admin/studies/{a}/update",
        json={"PatientName": {"vr": "PN", "Value": [{"Alphabetic": "HOOK^FIXED"}]}},
    )
    assert r.status_code == 200, r.text
    assert archive.http.delete(f"/studies/{b}").status_code == 204
    events = receiver.wait(9)
    assert [e["type"] for e in events[7:] if e["subject"] == a] == ["study.updated"]
    assert [e["type"] for e in events[7:] if e["subject"] == b] == ["study.deleted"]
    # a new instance makes the study unstable, then stable again
    stow(archive, [ct_slice(a, a_series, 5, rows=16, cols=16, patient_id="HOOK1")])
    events = receiver.wait(11)
    assert [e["type"] for e in events[9:]] == ["instance.created", "study.stable"]
    [row] = status(data)
    assert row["pending"] == 0 and row["delivered"] == 11 and row["failed"] == 0
    assert row["signed"] is True and "secret" not in row


def test_a_failing_receiver_gets_retries_and_ingest_does_not_wait(
    tmp_path: Path, pictor: Pictor
) -> None:
    data = tmp_path / "data"
    archive = Archive(pictor(data, env=FAST))
    flaky = Receiver(failures=4)
    # a receiver that accepts connections and never answers
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        add_hook(data, flaky.url, "instance.created")
        add_hook(data, f"http://127.0.0.1:{silent.getsockname()[1]}/never", "instance.created")
        study, series = new_uids()
        started = time.monotonic()
        for i in range(4):
            stow(archive, [ct_slice(study, series, i, rows=16, cols=16)])
        assert time.monotonic() - started < 8  # four STOWs, not four receiver timeouts
        events = flaky.wait(4, seconds=40)
        # in order, each once accepted, after the failures were retried
        assert [e["data"]["SOPInstanceUID"] for e in events] == [
            sop_instance_uid(series, i) for i in range(4)
        ]
        assert [r["answered"] for r in flaky.received[:4]] == [500] * 4
        assert {r["body"]["id"] for r in flaky.received[:4]} == {events[0]["id"]}  # same event
        rows = {r["url"]: r for r in status(data)}
        assert rows[flaky.url]["delivered"] == 4 and rows[flaky.url]["lastError"] == "HTTP 500"
    finally:
        flaky.close()
        silent.close()


def test_deliveries_survive_a_restart(tmp_path: Path, pictor: Pictor) -> None:
    data = tmp_path / "data"
    port = free_port()
    process = pictor(data, env=FAST)
    archive = Archive(process)
    add_hook(data, f"http://127.0.0.1:{port}/hook", "instance.created,study.stable")
    study, series = new_uids()
    stow(archive, [ct_slice(study, series, i, rows=16, cols=16) for i in range(2)])
    deadline = time.monotonic() + 20
    while not (row := status(data)[0])["lastError"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert row["pending"] >= 2 and row["delivered"] == 0, row
    assert "Connect" in row["lastError"], row  # nobody listens yet
    process.stop()
    receiver = Receiver(port=port)
    try:
        process.start()
        events = receiver.wait(3)
        assert [e["type"] for e in events] == ["instance.created"] * 2 + ["study.stable"]
        assert status(data)[0]["pending"] == 0
    finally:
        receiver.close()


def background_pid(server: Any) -> int:
    """The pid of ``pictor serve``'s background process (``python -m app.background``)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for child in psutil.Process(server.proc.pid).children():
            try:
                if "app.background" in child.cmdline():
                    return int(child.pid)
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    raise AssertionError("no background process")


def sessions_of(data: Path, application: str) -> list[int]:
    """The server pids of the database sessions named ``application``."""

    async def query() -> list[int]:
        conn = await asyncpg.connect(embedded_dsn(data))
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application
            )
            return [row["pid"] for row in rows]
        finally:
            await conn.close()

    return asyncio.run(query())


def test_deliveries_run_in_a_lowered_background_process_that_is_restarted(
    tmp_path: Path, pictor: Pictor, receiver: Receiver
) -> None:
    data = tmp_path / "data"
    process = pictor(data, env={**FAST, "PICTOR_BACKGROUND_NICE": "7"})
    archive = Archive(process)
    add_hook(data, receiver.url, "instance.created")
    first = background_pid(process)
    assert os.getpriority(os.PRIO_PROCESS, first) == 7
    # its database sessions (the embedded PostgreSQL is on this machine) are lowered too,
    # the HTTP workers' are not
    sessions = sessions_of(data, "pictor-background")
    assert sessions and all(os.getpriority(os.PRIO_PROCESS, pid) == 7 for pid in sessions)
    for worker in psutil.Process(process.proc.pid).children():  # type: ignore[union-attr]
        if worker.pid != first:
            assert os.getpriority(os.PRIO_PROCESS, worker.pid) == 0
    study, series = new_uids()
    stow(archive, [ct_slice(study, series, 0, rows=16, cols=16)])
    assert receiver.wait(1)[0]["data"]["SOPInstanceUID"] == sop_instance_uid(series, 0)
    # killed while the supervisor cannot restart it (stopped): /health says so, ingest
    # goes on; started again, what was stored meanwhile is delivered
    supervisor = psutil.Process(process.proc.pid)  # type: ignore[union-attr]
    supervisor.suspend()
    try:
        psutil.Process(first).kill()
        stow(archive, [ct_slice(study, series, 1, rows=16, cols=16)])
        deadline = time.monotonic() + 20
        while (health := httpx.get(process.base + "/health").json())["background"][
            "connected"
        ] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health["status"] == "degraded", health
        assert any("background process is not connected" in p for p in health["problems"])
    finally:
        supervisor.resume()
    deadline = time.monotonic() + 20
    while (second := background_pid(process)) == first and time.monotonic() < deadline:
        time.sleep(0.2)
    assert second != first
    events = receiver.wait(2)
    assert [e["data"]["SOPInstanceUID"] for e in events] == [
        sop_instance_uid(series, i) for i in range(2)
    ]
    assert "the background process stopped; restarting it" in process.log_path.read_text()


def test_hostile_subscriptions_are_refused(tmp_path: Path, pictor: Pictor) -> None:
    process = pictor(tmp_path / "data", workers=1)
    admin = process.base + "/admin/webhooks"
    good = {"url": "http://127.0.0.1:9/hook", "events": ["study.stable"]}
    for body, named in [
        ({**good, "url": "ftp://127.0.0.1/x"}, "http(s)"),
        ({**good, "url": "http://user:pw@127.0.0.1/x"}, "no user or password"),
        ({**good, "url": "http:///nohost"}, "http(s)"),
        ({**good, "url": "http://127.0.0.1:99999/x"}, "port that is not a number"),
        ({**good, "url": "http://127.0.0.1/a b"}, "space or a control character"),
        ({**good, "url": "http://127.0.0.1/a\r\nX-Evil: 1"}, "space or a control character"),
        ({**good, "events": ["study.exploded"]}, "events must be"),
        ({**good, "events": []}, "events must be"),
        ({**good, "secret": "short"}, "16 to 256"),
        ({**good, "extra": 1}, "extra"),
        ({"url": "http://127.0.0.1:9/" + "x" * 3000, "events": ["study.stable"]}, "2000"),
    ]:
        r = httpx.post(admin, json=body)
        assert r.status_code == 400 and named in r.json()["message"], (body, r.text)
    r = httpx.post(
        admin, content=b"url=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415
    made = httpx.post(admin, json={**good, "secret": SECRET})
    assert made.status_code == 201 and made.json()["signed"] is True
    assert "secret" not in made.json() and SECRET not in httpx.get(admin).text
    assert httpx.delete(f"{admin}/{made.json()['id']}").status_code == 204
    assert httpx.delete(f"{admin}/{made.json()['id']}").status_code == 404
    assert httpx.delete(f"{admin}/abc").status_code == 400
    bad = pictor_cli(
        "webhook",
        "add",
        "--url",
        "file:///etc/passwd",
        "--events",
        "study.stable",
        data_dir=tmp_path / "data",
    )
    assert bad.returncode != 0 and "http(s)" in bad.stderr
