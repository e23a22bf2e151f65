"""Health, Prometheus metrics, JSON logs, and schemathesis against the served API."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Archive, multipart
from server import PictorProcess, postmaster_pid
from synth import ct_slice, new_uids

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"


def scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and labels (all server processes together)."""
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_health_names_the_database_and_the_storage(archive: Archive) -> None:
    r = httpx.get(f"{archive.process.base}/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["background"] == {"connected": True}  # pictor serve's background process
    assert body["storage"]["writable"] is True and body["storage"]["free_bytes"] > 0


def test_metrics_count_requests_per_route_and_ingest_across_processes(archive: Archive) -> None:
    """The server runs two processes; the counts are the sums over both, exactly what
    this test did between two scrapes."""
    http = httpx.Client(base_url=archive.process.base, timeout=60)
    study, series = new_uids()
    files = [ct_slice(study, series, i, rows=64, cols=64) for i in range(3)]
    before = scrape(http)
    for _ in range(7):  # new connections: they land on either process
        assert (
            httpx.get(f"{archive.url}/studies", params={"StudyInstanceUID": study}).status_code
            == 200
        )
    assert archive.stow(multipart(files)).status_code == 200
    assert archive.stow(multipart(files[:1])).status_code == 200  # already stored
    ds = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)
    frame = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}/frames/1"
    star = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    for _ in range(3):
        assert httpx.get(archive.url + frame, headers={"Accept": star}).status_code == 200
    assert httpx.get(f"{archive.url}/studies/1.2.3.999/metadata").status_code == 404
    after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    total = "pictor_http_requests_total"
    assert delta(total, route="qido-studies", method="GET", status="200") == 7
    assert delta(total, route="stow", method="POST", status="200") == 2
    assert delta(total, route="wado-frames", method="GET", status="200") == 3
    assert delta(total, route="wado-study-metadata", method="GET", status="404") == 1
    assert (
        delta("pictor_http_request_duration_seconds_count", route="qido-studies", method="GET") == 7
    )
    assert delta("pictor_ingest_instances_total", outcome="stored") == 3
    assert delta("pictor_ingest_instances_total", outcome="already-stored") == 1
    assert delta("pictor_ingest_bytes_total") == sum(map(len, files))
    http.close()


def test_json_logs_access_log_and_a_database_outage(tmp_path: Path) -> None:
    """PICTOR_LOG_FORMAT=json: every line one JSON object; PICTOR_ACCESS_LOG: one line per
    request with route, status and duration. With the storage unwritable, or PostgreSQL
    gone, /health says 503."""
    log = tmp_path / "server.log"
    server = PictorProcess(
        tmp_path / "data",
        env={"PICTOR_LOG_FORMAT": "json", "PICTOR_ACCESS_LOG": "true", "PICTOR_LOG_LEVEL": "info"},
        log_path=log,
        # one server process: a second one finishing its start after the first answers
        # would recreate tmp/ under the storage fault made below
        workers=1,
    ).start()
    try:
        assert httpx.get(f"{server.dicomweb}/studies").status_code == 200
        assert httpx.get(f"{server.dicomweb}/studies", params={"Nonsense": "1"}).status_code == 400
        time.sleep(0.5)
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        assert lines and all({"time", "level", "logger", "message"} <= set(e) for e in lines)
        access = [e for e in lines if e["logger"] == "pictor.access"]
        statuses = sorted(e["status"] for e in access if e.get("route") == "qido-studies")
        assert statuses == [200, 400]  # exactly the two searches made here
        assert all(e["duration_ms"] >= 0 and e["client"] == "127.0.0.1" for e in access)
        # storage that cannot take a file: 503 naming it (the probe writes into tmp/)
        tmp = server.data_dir / "tmp"
        tmp.rename(tmp.with_name("tmp-away"))
        tmp.write_bytes(b"not a directory")
        try:
            r = httpx.get(f"{server.base}/health", timeout=10)
            assert r.status_code == 503 and "storage not writable" in r.json()["message"]
        finally:
            tmp.unlink()
            tmp.with_name("tmp-away").rename(tmp)
        assert httpx.get(f"{server.base}/health", timeout=10).status_code == 200
        pid = postmaster_pid(server.data_dir)
        assert pid is not None
        os.kill(pid, 9)  # the database goes away under a running server
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = httpx.get(f"{server.base}/health", timeout=10)
            if r.status_code == 503:
                break
            time.sleep(0.5)
        assert r.status_code == 503 and "index unreachable" in r.json()["message"]
    finally:
        server.kill()


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis not installed")
def test_schemathesis_finds_no_server_error(archive: Archive, tmp_path: Path) -> None:
    """Property-based requests generated from openapi.yaml: no 5xx anywhere. A fixed
    seed and example budget (no time budget) make the run the same on every machine."""
    study, series = new_uids()
    assert (
        archive.stow(multipart([ct_slice(study, series, 0, rows=32, cols=32)])).status_code == 200
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            str(SPEC),
            "--url",
            archive.process.base,
            "--checks",
            "not_a_server_error",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "40",
            "--workers",
            "2",
            "--seed",
            "1",
            "--suppress-health-check",
            "all",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    summary = result.stdout[-4000:]
    assert "Server error" not in result.stdout, summary
    assert "Tested:" in result.stdout, summary
