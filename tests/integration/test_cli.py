"""The command line as a person uses it: ``pictor serve`` and ``pictor import``."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import asyncpg
import psutil
import pydicom

from app.index.database import EmbeddedPostgres

from conftest import Archive, multipart
from server import PictorProcess, free_port, postmaster_pid
from synth import ct_slice, new_uids

PICTOR = [sys.executable, "-m", "app.cli"]
ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PICTOR_") and k != "DATABASE_URL"
    }
    env.update(extra)
    return env


def _gone(pid: int, timeout: float = 15) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_serve_prints_url_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        PICTOR + ["serve", "--port", str(port), "--data-dir", str(data)],
        env=_env(PICTOR_DIMSE_PORT="0", PICTOR_HL7_PORT="0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        while "DICOMweb at" not in line:
            assert line, "server exited before printing its URL"
            line = proc.stdout.readline().decode()
        assert f"http://127.0.0.1:{port}/dicom-web" in line
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        pg = postmaster_pid(data)
        assert pg is not None and psutil.pid_exists(pg)
        # listens on loopback only by default
        addrs = {
            c.laddr.ip
            for c in psutil.net_connections("tcp")
            if c.laddr.port == port and c.status == "LISTEN"
        }
        assert addrs == {"127.0.0.1"}
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(30) == 0
        assert _gone(pg), "the embedded PostgreSQL must stop with the server"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_environment_configures_the_server(tmp_path: Path) -> None:
    port = free_port()
    process = PictorProcess(tmp_path / "d", port=port, workers=1)
    process.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as r:
            assert r.status == 200
        assert (tmp_path / "d" / "pg" / "PG_VERSION").exists()
    finally:
        process.stop()


def test_bad_flag_value_is_a_clear_error() -> None:
    out = subprocess.run(
        PICTOR + ["serve", "--port", "70000"], env=_env(), capture_output=True, cwd=ROOT
    )
    assert out.returncode != 0
    assert b"ports must be between" in out.stderr


def test_import_folder_with_junk_is_safe_to_rerun(tmp_path: Path, archive: Archive) -> None:
    """``pictor import``: stores, skips non-DICOM, reports failures, and re-runs cleanly."""
    folder = tmp_path / "cd"
    (folder / "sub").mkdir(parents=True)
    study, series = new_uids()
    for i in range(5):
        (folder / "sub" / f"IM{i:04d}").write_bytes(ct_slice(study, series, i))
    (folder / "README.TXT").write_text("not an image")
    (folder / "broken.dcm").write_bytes(ct_slice(study, series, 9)[:3000])
    (folder / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")  # the index, skipped
    data = tmp_path / "import-data"

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            PICTOR + ["import", "--data-dir", str(data), str(folder)],
            env=_env(),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )

    first = run()
    assert first.returncode == 1  # one file failed
    assert (
        "stored 5, already present 0, failed 1, skipped 1 non-DICOM files and 1 DICOMDIR"
        in first.stdout
    )
    assert "broken.dcm" in first.stdout and "truncated" in first.stdout
    second = run()
    assert "stored 0, already present 5, failed 1" in second.stdout
    assert postmaster_pid(data) is None  # import stops the database it started
    files = list((data / "storage").rglob("*.dcm"))
    assert len(files) == 5
    shutil.rmtree(data)


def test_import_into_a_running_server(archive: Archive, tmp_path: Path) -> None:
    """Import while the server runs on the same data directory: visible at once."""
    study, series = new_uids()
    for i in range(3):
        (tmp_path / f"{i}.dcm").write_bytes(ct_slice(study, series, i))
    out = subprocess.run(
        PICTOR + ["import", "--data-dir", str(archive.data_dir), str(tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "stored 3" in out.stdout
    assert archive.query("SELECT num_instances FROM study WHERE study_uid = $1", study)[0][0] == 3
    assert postmaster_pid(archive.data_dir) is not None  # the server's database keeps running


def test_database_url_uses_that_server(tmp_path: Path) -> None:
    """With DATABASE_URL the server uses that PostgreSQL and runs none of its own."""
    external = EmbeddedPostgres(tmp_path / "external-pg")
    dsn = external.start()
    data = tmp_path / "data"
    process = PictorProcess(data, workers=1, env={"DATABASE_URL": dsn})
    process.start()
    archive = Archive(process)
    try:
        study, series = new_uids()
        assert archive.stow(multipart([ct_slice(study, series, 0)])).status_code == 200
        assert not (data / "pg").exists()

        async def count() -> int:
            conn = await asyncpg.connect(dsn)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM instance"))
            finally:
                await conn.close()

        assert asyncio.run(count()) == 1
    finally:
        archive.http.close()
        process.stop()
        external.stop()


def _bare(data: bytes, implicit: bool) -> bytes:
    """The data set of a Part 10 file without preamble and File Meta Information, as
    older systems write them."""
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.file_meta
    ds.preamble = None
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    raw = out.getvalue()
    assert raw[:4] != b"DICM" and raw[128:132] != b"DICM"
    return raw


def test_import_reads_bare_data_sets_zip_files_and_reports_every_failure(
    tmp_path: Path, archive: Archive
) -> None:
    """Issue #19: files without a preamble counted as non-DICOM, only 50 failure
    reasons were shown, and ZIP files were not read."""
    folder = tmp_path / "in"
    folder.mkdir()
    study, series = new_uids()
    implicit = _bare(ct_slice(study, series, 0, rows=32, cols=32), implicit=True)
    explicit = _bare(ct_slice(study, series, 1, rows=32, cols=32), implicit=False)
    (folder / "IMPLICIT").write_bytes(implicit)
    (folder / "EXPLICIT").write_bytes(explicit)
    with zipfile.ZipFile(folder / "export.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(2, 5):
            z.writestr(f"DICOM/S1/IM{i}", ct_slice(study, series, i, rows=32, cols=32))
        z.writestr("DICOM/README.TXT", "not an image")
        z.writestr("DICOMDIR", b"\0" * 128 + b"DICM")
    for i in range(60):  # more than the 50 once shown
        (folder / f"broken{i:02d}.dcm").write_bytes(ct_slice(study, series, 10 + i)[:2000])
    report = tmp_path / "report.tsv"
    out = subprocess.run(
        PICTOR
        + ["import", "--data-dir", str(archive.data_dir), "--report", str(report), str(folder)],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert (
        "stored 5, already present 0, failed 60, skipped 1 non-DICOM files and 1 DICOMDIR"
        in out.stdout
    ), out.stdout
    failed = [line for line in out.stdout.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 60 and all("C000H" in line for line in failed)
    rows = report.read_text().splitlines()
    assert rows[0].split("\t") == ["file", "outcome", "failure reason", "message"]
    assert len(rows) == 1 + 65
    assert any(r.startswith(f"{folder / 'export.zip'}/DICOM/S1/IM3\tstored") for r in rows)
    assert archive.query("SELECT num_instances FROM study WHERE study_uid = $1", study)[0][0] == 5
    # a bare data set is kept byte for byte behind the File Meta Information made for it
    sop = str(pydicom.dcmread(io.BytesIO(implicit), force=True).SOPInstanceUID)
    r = archive.http.get(
        f"{archive.url}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert r.status_code == 200 and implicit in r.content
    stored = pydicom.dcmread(io.BytesIO(r.content[r.content.index(b"\0" * 128) :]))
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
