"""Several stateless nodes serve one archive (issue #16, DESIGN.md decision 8).

Two ``pictor serve`` processes, each with a data directory of its own (only its spool,
lock and metrics), share one PostgreSQL (Debian's, standalone on 127.0.0.1 with a
password: not the embedded one) and one S3 bucket (moto's server), with access control
on; nginx (Debian's) balances between them. Nobody here wrote PostgreSQL, nginx, moto
or dicomweb-client. What is stored, deleted or corrected through one node is seen
through the other at the next request (LISTEN/NOTIFY empties the other's caches);
tokens and study links made on one work on the other; both nodes starting at once on
an empty database apply the migrations once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.filebase import DicomBytesIO

from conftest import content_type, multipart, pictor_cli
from nginx_proxy import Nginx
from s3server import MotoServer
from server import PictorProcess
from standalone_pg import StandalonePostgres
from synth import ct_slice, new_uids


@pytest.fixture(scope="module")
def postgres() -> Iterator[StandalonePostgres]:
    server = StandalonePostgres().start()
    try:
        yield server
    finally:
        server.stop()


def _start_together(nodes: list[PictorProcess]) -> None:
    """Start every node at once (both find an empty database: one migrates, the other
    waits for it)."""
    errors: list[BaseException] = []

    def start(node: PictorProcess) -> None:
        try:
            node.start(timeout=90)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_two_nodes_behind_nginx_serve_one_archive(
    tmp_path: Path, postgres: StandalonePostgres, moto: MotoServer
) -> None:
    dsn = asyncio.run(postgres.new_database())
    bucket = moto.new_bucket()
    env = {
        **moto.env,
        "DATABASE_URL": dsn,
        "PICTOR_STORAGE_URL": f"s3://{bucket}/site",
        "PICTOR_AUTH": "true",
        "PICTOR_TRASH_DAYS": "0",
    }
    a = PictorProcess(tmp_path / "node-a", workers=2, env=env)
    b = PictorProcess(tmp_path / "node-b", workers=2, env=env)
    nginx: Nginx | None = None
    try:
        _start_together([a, b])

        async def migrations() -> list[int]:
            import asyncpg

            conn = await asyncpg.connect(dsn)
            try:
                return [r[0] for r in await conn.fetch("SELECT version FROM schema_migration")]
            finally:
                await conn.close()

        versions = asyncio.run(migrations())
        assert versions == sorted(set(versions)) and versions[-1] >= 10
        assert not (tmp_path / "node-a" / "pg").exists()  # no embedded database anywhere

        # a token made with one node's command works on both nodes
        made = pictor_cli(
            "token", "create", "--name", "integration", "--scopes", "read,write,delete,admin",
            data_dir=tmp_path / "node-a", env=env,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        auth = {"Authorization": f"Bearer {token}"}
        via_a = DICOMwebClient(url=a.dicomweb, headers=auth)
        via_b = DICOMwebClient(url=b.dicomweb, headers=auth)

        # stored through A: found and retrieved through B at once
        study, series = new_uids()
        blobs = [ct_slice(study, series, i, rows=64, cols=64) for i in range(3)]
        datasets = [pydicom.dcmread(DicomBytesIO(x)) for x in blobs]
        via_a.store_instances(datasets=datasets)
        assert len(via_b.search_for_instances(study_instance_uid=study)) == 3
        sop = datasets[0].SOPInstanceUID
        got = via_b.retrieve_instance(study, series, sop)
        assert got.PixelData == datasets[0].PixelData
        assert len(via_b.retrieve_series_metadata(study, series)) == 3  # B caches it now

        # corrected through B: A's search and metadata say so at once
        changed = httpx.post(
            f"{b.base}/admin/studies/{study}/update",
            json={"PatientName": {"vr": "PN", "Value": [{"Alphabetic": "Renamed^OnB"}]}},
            headers=auth,
        )
        assert changed.status_code == 200, changed.text
        (found,) = via_a.search_for_studies(search_filters={"StudyInstanceUID": study})
        assert found["00100010"]["Value"][0]["Alphabetic"] == "Renamed^OnB"
        meta = via_a.retrieve_series_metadata(study, series)
        assert {m["00100010"]["Value"][0]["Alphabetic"] for m in meta} == {"Renamed^OnB"}

        # deleted through A: gone through B at once, its cache included
        via_a.delete_instance(study, series, sop)
        for path in (
            f"/studies/{study}/series/{series}/instances/{sop}/metadata",
            f"/studies/{study}/series/{series}/instances/{sop}",
        ):
            assert httpx.get(b.dicomweb + path, headers=auth).status_code == 404, path
        assert len(via_b.retrieve_series_metadata(study, series)) == 2

        # a study link made on A opens on B
        link = httpx.post(
            f"{a.base}/admin/links", json={"study": study, "ttl": "10m"}, headers=auth
        )
        assert link.status_code == 201, link.text
        link_token = link.json()["token"]
        opened = httpx.get(
            f"{b.dicomweb}/studies/{study}/metadata",
            headers={"Authorization": f"Bearer {link_token}"},
        )
        assert opened.status_code == 200 and len(opened.json()) == 2

        # behind nginx: every store is visible to the next search, whichever node
        # answers each request
        nginx = Nginx([a.port, b.port])
        front = f"http://127.0.0.1:{nginx.port}/dicom-web"
        answered_by: set[str] = set()
        s2, r2 = new_uids()
        with httpx.Client(headers=auth, timeout=60) as http:
            for i in range(12):
                stored = http.post(
                    f"{front}/studies",
                    content=multipart([ct_slice(s2, r2, i, rows=32, cols=32)]),
                    headers={"Content-Type": content_type()},
                )
                assert stored.status_code == 200, stored.text
                assert stored.json()["00081190"]["Value"][0].startswith(front)  # X-Forwarded
                found_now = http.get(f"{front}/studies/{s2}/instances")
                assert found_now.status_code == 200 and len(found_now.json()) == i + 1
                answered_by |= {stored.headers["x-upstream"], found_now.headers["x-upstream"]}
        assert answered_by == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
    finally:
        if nginx is not None:
            nginx.stop()
        for node in (a, b):
            if node.proc is not None:
                node.stop()
