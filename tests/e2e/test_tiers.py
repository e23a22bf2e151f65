"""Storage tiers (issue #16): hot on the file system, cold in an S3 bucket (moto's
server on loopback). Idle studies move to cold with ``pictor tier run``, read ones stay;
reads of a cold study are the same answers; QIDO says NEARLINE (PS3.4 C.4.1.1.3.2);
``pictor tier status`` and ``/metrics`` say where everything is; a read brings a cold
study back when ``PICTOR_TIER_RECALL`` is on, and ``pictor tier recall`` does on
demand; deleting a cold instance deletes its object."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pydicom
from pydicom.filebase import DicomBytesIO

from app.index.tiering import TIER_LOCK

from conftest import Archive, embedded_dsn, multipart, pictor_cli
from s3server import MotoServer
from server import PictorProcess, stop_postgres
from synth import ct_slice, new_uids


def _wait(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_idle_studies_move_to_cold_and_come_back(tmp_path: Path, moto: MotoServer) -> None:
    bucket = moto.new_bucket()
    data = tmp_path / "data"
    env = {
        **moto.env,
        "PICTOR_COLD_STORAGE_URL": f"s3://{bucket}/cold",
        "PICTOR_TIER_RECALL": "true",
        "PICTOR_TIER_INTERVAL": "0",  # moves only when asked, here
        "PICTOR_TRASH_DAYS": "0",
    }
    server = PictorProcess(data, workers=1, env=env).start()
    archive = Archive(server)

    def cli(*args: str) -> str:
        done = pictor_cli("tier", *args, data_dir=data, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    def tiers(study: str) -> list[int]:
        return sorted(
            r[0]
            for r in archive.query(
                "SELECT i.tier FROM instance i JOIN study s ON s.pk = i.study_pk"
                " WHERE s.study_uid = $1",
                study,
            )
        )

    def cold_objects() -> dict[str, bytes]:
        return {
            k.removeprefix("cold/"): v
            for k, v in moto.objects(bucket, "cold/").items()
            if "/.pictor/" not in k
        }

    def availability(path: str, **query: str) -> set[str]:
        answer = archive.http.get(path, params={**query, "includefield": "00080056"})
        assert answer.status_code == 200, answer.text
        return {r["00080056"]["Value"][0] for r in answer.json()}

    try:
        idle, idle_series = new_uids()
        busy, busy_series = new_uids()
        sent = [ct_slice(idle, idle_series, i, rows=64, cols=64) for i in range(3)]
        assert archive.stow(multipart(sent)).status_code == 200
        busy_part = ct_slice(busy, busy_series, 0, rows=64, cols=64)
        assert archive.stow(multipart([busy_part])).status_code == 200
        # both were received 40 days ago and not read since; then one is read
        archive.query(
            "UPDATE study SET created_at = now() - interval '40 days',"
            " updated_at = now() - interval '40 days'"
        )
        busy_sop = pydicom.dcmread(DicomBytesIO(busy_part)).SOPInstanceUID
        path = f"/studies/{busy}/series/{busy_series}/instances/{busy_sop}"
        assert (
            archive.http.get(
                path, headers={"Accept": "multipart/related; type=application/dicom"}
            ).status_code
            == 200
        )
        _wait(
            lambda: (
                archive.query("SELECT last_read_at FROM study WHERE study_uid = $1", busy)[0][0]
                is not None
            ),
            20,
            "the read was never noted",
        )

        # a dry run lists, moves nothing
        listed = cli("run", "--dry-run")
        assert idle in listed and busy not in listed and "would move 1 studies" in listed
        assert tiers(idle) == [0, 0, 0] and cold_objects() == {}
        # one mover in the archive: while another holds the lock, the command says so
        busy_mover = asyncio.run(_while_moving(data, env))
        assert busy_mover.returncode == 1, busy_mover.stdout + busy_mover.stderr
        assert "a tier move is running" in busy_mover.stderr
        assert tiers(idle) == [0, 0, 0]
        unknown = pictor_cli("tier", "recall", "1.2.3.999", data_dir=data, env=env)
        assert unknown.returncode == 1 and "no study 1.2.3.999" in unknown.stderr
        hostile = pictor_cli("tier", "status", "--study", "1.2.3;DROP", data_dir=data, env=env)
        assert hostile.returncode == 1 and "the UID" in hostile.stderr
        # a study newer than PICTOR_TIER_MIN_AGE_DAYS never moves
        young = pictor_cli(
            "tier", "run", "--dry-run", data_dir=data,
            env={**env, "PICTOR_TIER_MIN_AGE_DAYS": "41"},
        )  # fmt: skip
        assert "would move 0 studies" in young.stderr, young.stderr

        hot_files = {
            key: (data / "storage" / key).read_bytes()
            for (key,) in archive.query(
                "SELECT i.file_key FROM instance i JOIN study s ON s.pk = i.study_pk"
                " WHERE s.study_uid = $1",
                idle,
            )
        }
        moved = cli("run")
        assert "moved 1 studies (3 instances" in moved, moved
        assert tiers(idle) == [1, 1, 1] and tiers(busy) == [0]
        assert cold_objects() == hot_files  # byte for byte, same keys
        assert not any((data / "storage" / key).exists() for key in hot_files)
        assert not [k for k in moto.keys(bucket) if "/.pictor/intents/" in k]

        # where things are: QIDO, the CLI, /metrics
        assert availability("/studies", StudyInstanceUID=idle) == {"NEARLINE"}
        assert availability("/studies", StudyInstanceUID=busy) == {"ONLINE"}
        assert availability(f"/studies/{idle}/series") == {"NEARLINE"}
        assert availability(f"/studies/{idle}/instances") == {"NEARLINE"}
        status = json.loads(cli("status", "--json"))
        assert status["tiers"]["cold"]["instances"] == 3
        assert status["tiers"]["hot"]["instances"] == 1
        assert status["studies"] == {"hot": 1, "cold": 1, "mixed": 0}
        one = json.loads(cli("status", "--study", idle, "--json"))
        assert one["tiers"]["cold"]["bytes"] == sum(map(len, hot_files.values()))
        metrics = httpx.get(f"{server.base}/metrics").text
        assert re.search(r"^pictor_tier_cold_instances 3(\.0)?$", metrics, re.M), metrics
        assert re.search(r"^pictor_tier_cold_studies 1(\.0)?$", metrics, re.M)
        assert re.search(r"^pictor_tier_hot_bytes [1-9]", metrics, re.M)

        # a manual recall, then a move again
        assert "recalled 3 instances" in cli("recall", idle)
        assert tiers(idle) == [0, 0, 0] and cold_objects() == {}
        assert availability("/studies", StudyInstanceUID=idle) == {"ONLINE"}
        assert all((data / "storage" / key).read_bytes() == b for key, b in hot_files.items())
        archive.query(
            "UPDATE study SET last_read_at = now() - interval '40 days' WHERE study_uid = $1", idle
        )
        assert "moved 1 studies (3 instances" in cli("run")

        # reads from cold: the same answers (the codec workers read it too)
        first = pydicom.dcmread(DicomBytesIO(sent[0]))
        inst = f"/studies/{idle}/series/{idle_series}/instances/{first.SOPInstanceUID}"
        got = archive.http.get(
            inst, headers={"Accept": "multipart/related; type=application/dicom"}
        )
        assert got.status_code == 200 and sent[0] in got.content
        frame = archive.http.get(
            f"{inst}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert frame.status_code == 200 and first.PixelData in frame.content
        rendered = archive.http.get(f"{inst}/rendered", headers={"Accept": "image/png"})
        assert rendered.status_code == 200 and rendered.content[:4] == b"\x89PNG"
        # ... and with PICTOR_TIER_RECALL the read brings the study back to hot
        _wait(lambda: tiers(idle) == [0, 0, 0], 40, "the read study was not recalled")
        assert cold_objects() == {}

        # deleting an instance that is in the cold tier deletes its object
        archive.query(
            "UPDATE study SET last_read_at = now() - interval '40 days' WHERE study_uid = $1", idle
        )
        assert "moved 1 studies (3 instances" in cli("run")
        gone = f"{idle}/{idle_series}/{first.SOPInstanceUID}.dcm"
        assert gone in cold_objects()
        deleted = archive.http.delete(inst)
        assert deleted.status_code == 204, deleted.text
        _wait(lambda: gone not in cold_objects(), 20, "the cold object stayed")
        assert len(cold_objects()) == 2
        remaining = {k: hashlib.sha256(v).hexdigest() for k, v in cold_objects().items()}
        rows = archive.query("SELECT file_key, file_sha256 FROM instance WHERE tier = 1")
        assert remaining == {r[0]: r[1] for r in rows}
    finally:
        archive.http.close()
        server.stop()
        stop_postgres(data)


async def _while_moving(data: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``pictor tier run`` while another session holds the mover's lock."""
    conn = await asyncpg.connect(embedded_dsn(data))
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", TIER_LOCK)
        return await asyncio.to_thread(pictor_cli, "tier", "run", data_dir=data, env=env)
    finally:
        await conn.close()


def test_tier_commands_without_a_cold_storage_say_so(tmp_path: Path) -> None:
    done = pictor_cli("tier", "run", data_dir=tmp_path / "d")
    assert done.returncode != 0
    assert "no cold storage is configured (PICTOR_COLD_STORAGE_URL)" in done.stderr
    bad = pictor_cli(
        "tier", "status", data_dir=tmp_path / "d", env={"PICTOR_COLD_STORAGE_URL": "ftp://x/y"}
    )
    assert bad.returncode != 0 and "PICTOR_COLD_STORAGE_URL='ftp://x/y'" in bad.stderr
    assert not (tmp_path / "d" / "pg").exists()  # a configuration error starts no database
    same = pictor_cli(
        "tier", "run", data_dir=tmp_path / "d",
        env={"PICTOR_STORAGE_URL": "s3://b-1/x", "PICTOR_COLD_STORAGE_URL": "s3://b-1/x"},
    )  # fmt: skip
    assert same.returncode != 0 and "another place than the hot storage" in same.stderr
