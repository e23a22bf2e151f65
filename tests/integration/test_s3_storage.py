"""The S3 blob store against a real S3 protocol server (moto in server mode on loopback):
what the contract tests (tests/unit/storage) cannot show. Large uploads go as multipart
uploads and never overwrite; a publisher SIGKILLed between publish and commit leaves
objects that the next start's sweep deletes, unless a row references them or another
writer made them; the spool and the memory budget bound what a process holds."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.storage import s3 as s3_module
from app.storage.s3 import S3BlobStore

from s3server import MotoServer


@pytest.fixture
def bucket(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)  # the clients read the AWS_* variables themselves
    return moto.new_bucket()


def _store(moto: MotoServer, bucket: str, tmp: Path) -> S3BlobStore:
    return S3BlobStore(bucket, "archive", moto.endpoint, tmp)


async def _upload(store: S3BlobStore, data: bytes, chunk: int = 1 << 20) -> s3_module.SpoolUpload:
    up = store.create_temp()
    for i in range(0, len(data), chunk):
        await up.write(data[i : i + chunk])
    await up.finish()
    return up


def test_a_large_instance_goes_as_a_multipart_upload_and_never_overwrites(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    big = os.urandom(19 << 20)  # three parts of 8 MiB
    other = os.urandom(9 << 20)
    store = _store(moto, bucket, tmp_path / "tmp")

    async def run() -> None:
        up = await _upload(store, big)
        assert up.in_memory is None and up.path is not None and up.path.exists()
        assert up.sha256 == hashlib.sha256(big).hexdigest()
        with up.content() as content:  # analysed from the spool file
            assert bytes(content[:4096]) == big[:4096] and len(content) == len(big)
        pubs = await store.publish([(up, "1.2/1.2.3/1.2.3.4.dcm")])
        assert [p.linked for p in pubs] == [True]
        await store.settle(pubs)
        assert not up.path.exists()  # the spool is gone once published
        # a second large upload to the same key is refused by the server
        # (If-None-Match: * on CompleteMultipartUpload) and leaves the first untouched
        second = await _upload(store, other)
        again = await store.publish([(second, "1.2/1.2.3/1.2.3.4.dcm")])
        assert [p.linked for p in again] == [False]
        await store.settle([], again)
        assert await store.read("1.2/1.2.3/1.2.3.4.dcm") == big

    asyncio.run(run())
    s3 = moto.client()
    head = s3.head_object(Bucket=bucket, Key="archive/1.2/1.2.3/1.2.3.4.dcm")
    assert head["ContentLength"] == len(big) and head["ContentType"] == "application/dicom"
    assert "-3" in head["ETag"]  # a multipart upload of three parts
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert moto.keys(bucket) == {"archive/1.2/1.2.3/1.2.3.4.dcm"}  # no intent left
    assert list((tmp_path / "tmp").iterdir()) == []


def test_uploads_past_the_memory_budget_spool_to_disk(
    moto: MotoServer, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "_BUDGET", s3_module._Budget(3 << 20))
    store = _store(moto, bucket, tmp_path / "tmp")
    blobs = [os.urandom(1 << 20) for _ in range(5)]

    async def run() -> None:
        ups = [await _upload(store, b, chunk=256 << 10) for b in blobs]
        assert [u.in_memory is not None for u in ups] == [True, True, True, False, False]
        assert s3_module._BUDGET.used == 3 << 20
        keys = [f"9.9/9.9.9/9.9.9.{i}.dcm" for i in range(5)]
        await store.settle(await store.publish(list(zip(ups, keys, strict=True))))
        assert s3_module._BUDGET.used == 0  # given back once published
        assert [await store.read(k) for k in keys] == blobs

    asyncio.run(run())


_PUBLISHER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from app.storage.s3 import S3BlobStore

    async def main():
        bucket, endpoint, tmp = sys.argv[1:4]
        store = S3BlobStore(bucket, "archive", endpoint, Path(tmp))
        ups = []
        for i, size in enumerate((1000, 2000, 12 << 20)):
            up = store.create_temp()
            await up.write(bytes([i + 1]) * size)
            await up.finish()
            ups.append(up)
        keys = [f"1.1/1.1.1/1.1.1.{i}.dcm" for i in range(3)]
        pubs = await store.publish(list(zip(ups, keys)))
        print("published", [p.linked for p in pubs], flush=True)
        await asyncio.sleep(3600)  # killed here: before the index commit and the settle

    asyncio.run(main())
    """
)


def test_sigkill_between_publish_and_commit_is_undone_by_the_sweep(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    """The S3 equivalent of a temp file renamed into place: an intent object written
    before the objects, the token in each object's metadata, the sweep after a crash."""
    tmp = tmp_path / "tmp"
    s3 = moto.client()
    # another writer's object under a key the dead publisher also listed: never touched
    s3.put_object(
        Bucket=bucket, Key="archive/1.1/1.1.1/1.1.1.1.dcm", Body=b"theirs",
        Metadata={"pictor-upload": "someone-else"},
    )  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-c", _PUBLISHER, bucket, moto.endpoint, str(tmp)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **moto.env},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.strip() == "published [True, False, True]", line
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    listed = moto.keys(bucket)
    assert {k for k in listed if "/.pictor/intents/" in k}, listed  # the intent is there
    assert list(tmp.glob("*.part")), "the large upload's spool file was left"

    asked: list[list[str]] = []

    async def referenced(keys: list[str]) -> set[str]:
        asked.append(keys)
        return {"1.1/1.1.1/1.1.1.2.dcm"}  # as if its row had been committed

    store = _store(moto, bucket, tmp)
    swept = asyncio.run(store.sweep(referenced))
    assert asked == [[f"1.1/1.1.1/1.1.1.{i}.dcm" for i in range(3)]]
    assert swept["intents"] == 1 and swept["unreferenced_files"] == 1 and swept["parts"] == 1
    assert moto.objects(bucket) == {
        "archive/1.1/1.1.1/1.1.1.1.dcm": b"theirs",  # not its object
        "archive/1.1/1.1.1/1.1.1.2.dcm": bytes([3]) * (12 << 20),  # referenced: kept
    }
    assert list(tmp.iterdir()) == []
    # a second sweep finds nothing to do
    assert not any(asyncio.run(store.sweep(referenced)).values())


def test_the_sweep_passes_over_objects_a_dead_publisher_never_created(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    """A publisher killed after writing its intent and before its PUTs: the keys the
    intent lists are absent. The sweep (run before ``pictor serve`` starts serving)
    must not fail on them, or the archive would not start again."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    token = f"{s3_module._HOST}-{dead.stdout.strip()}-00112233aabbccdd"
    s3 = moto.client()
    s3.put_object(
        Bucket=bucket, Key=f"archive/.pictor/intents/{token}",
        Body=f"4.4/4.4.4/4.4.4.1.dcm\t{token}\n4.4/4.4.4/4.4.4.2.dcm\t\n".encode(),
    )  # fmt: skip
    swept = asyncio.run(_store(moto, bucket, tmp_path / "tmp").sweep(lambda keys: _none()))
    assert swept["intents"] == 1
    assert moto.keys(bucket) == set()


def test_the_sweep_leaves_a_live_publisher_alone(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    store = _store(moto, bucket, tmp_path / "tmp")

    async def run() -> None:
        up = await _upload(store, b"in flight")
        pubs = await store.publish([(up, "2.2/2.2.2/2.2.2.2.dcm")])
        swept = await store.sweep(lambda keys: _none())  # this process is alive
        assert not any(swept.values())
        assert await store.read("2.2/2.2.2/2.2.2.2.dcm") == b"in flight"
        await store.settle(pubs)

    asyncio.run(run())
    assert moto.keys(bucket) == {"archive/2.2/2.2.2/2.2.2.2.dcm"}


async def _none() -> set[str]:
    return set()


def test_a_missing_object_is_file_not_found_and_an_unreachable_server_an_os_error(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    store = _store(moto, bucket, tmp_path / "tmp")
    with pytest.raises(FileNotFoundError):
        asyncio.run(store.read("3.3/3.3.3/3.3.3.3.dcm"))
    with pytest.raises(FileNotFoundError):
        store.hash_blob("3.3/3.3.3/3.3.3.3.dcm")
    gone = S3BlobStore(bucket, "", "http://127.0.0.1:9", tmp_path / "tmp")  # nobody listens
    with pytest.raises(OSError, match="object storage: probe") as raised:
        asyncio.run(gone.probe())
    assert len(str(raised.value)) < 400  # one line, not the client's debug dump
