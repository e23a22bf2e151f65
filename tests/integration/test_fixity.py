"""Fixity (issue #19): the SHA-256 recorded at ingest, checked by ``pictor verify`` and
by the background scrub; a missing or changed file is reported in the command's
output, ``/health`` and ``/metrics``, and repaired from a backup."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from conftest import Archive, multipart, pictor_cli
from server import PictorProcess
from synth import ct_slice, new_uids


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    line = next(line for line in text.splitlines() if line.startswith(f"{name} "))
    return float(line.split()[1])


def _files(archive: Archive, study: str) -> list[Path]:
    rows = archive.query(
        "SELECT i.file_key FROM instance i JOIN study s ON s.pk = i.study_pk"
        " WHERE s.study_uid = $1 ORDER BY i.pk",
        study,
    )
    return [archive.data_dir / "storage" / r[0] for r in rows]


def test_verify_reports_damage_and_repairs_it_from_a_backup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = PictorProcess(data, workers=1, env={"PICTOR_SCRUB_RATE": "0"}).start()
    archive = Archive(server)
    try:
        study, series = new_uids()
        assert (
            archive.stow(multipart([ct_slice(study, series, i) for i in range(3)])).status_code
            == 200
        )
        assert _metric(server.base, "pictor_stored_instances") == 3
        assert _metric(server.base, "pictor_fixity_problems") == 0
        assert pictor_cli("backup", str(tmp_path / "backup"), data_dir=data).returncode == 0
        clean = pictor_cli("verify", data_dir=data)
        assert (
            clean.returncode == 0
            and "checked 3 files" in clean.stdout
            and ": 0 missing" in clean.stdout
        )
        changed, missing, _ = _files(archive, study)
        data_bytes = bytearray(changed.read_bytes())
        data_bytes[-10] ^= 0xFF  # one bit flipped on the disk
        changed.write_bytes(bytes(data_bytes))
        missing.unlink()
        bad = pictor_cli("verify", "--study", study, data_dir=data)
        assert bad.returncode == 1
        assert f"CHANGED: {changed.relative_to(data / 'storage')}" in bad.stdout
        assert f"MISSING: {missing.relative_to(data / 'storage')}" in bad.stdout
        assert "2 missing or changed" in bad.stdout
        health = httpx.get(f"{server.base}/health").json()
        assert health["status"] == "degraded" and health["storage"]["damaged_files"] == 2
        assert any("2 stored files are missing or changed" in p for p in health["problems"])
        assert _metric(server.base, "pictor_fixity_problems") == 2
        fixed = pictor_cli("verify", "--repair-from", str(tmp_path / "backup"), data_dir=data)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert fixed.stdout.count("repaired from the backup") == 2
        assert httpx.get(f"{server.base}/health").json()["status"] == "ok"
        r = archive.http.get(f"/studies/{study}/series/{series}/instances")
        assert r.status_code == 200 and len(r.json()) == 3
        assert "Traceback" not in bad.stderr + fixed.stderr
    finally:
        archive.http.close()
        server.stop()


def test_the_background_scrub_finds_a_changed_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = PictorProcess(data, workers=1, env={"PICTOR_SCRUB_RATE": "0"}).start()
    archive = Archive(server)
    try:
        study, series = new_uids()
        assert (
            archive.stow(multipart([ct_slice(study, series, i) for i in range(4)])).status_code
            == 200
        )
        victim = _files(archive, study)[2]
    finally:
        archive.http.close()
        server.stop()
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    # two workers: one of them scrubs (the advisory lock), at 64 MiB/s
    server = PictorProcess(data, workers=2, env={"PICTOR_SCRUB_RATE": str(64 << 20)}).start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _metric(server.base, "pictor_fixity_problems") < 1:
            time.sleep(0.3)
        assert _metric(server.base, "pictor_fixity_problems") == 1
        assert "fixity scrub" in server.log_path.read_text()
    finally:
        server.stop()
