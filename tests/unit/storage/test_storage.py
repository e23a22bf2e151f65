"""The BlobStore contract (app.storage.base), run on every implementation: the file
system (real files in a temporary directory), an S3 bucket (moto's S3 server on
loopback) and memory. Crash recovery of the file
system (sweep after SIGKILL) is in tests/integration/test_blob_store.py and
test_crash.py."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from app.config import load_settings
from app.storage import BlobStore, FileBlobStore, instance_key, open_blob_store
from app.storage.memory import MemoryBlobStore
from app.storage.s3 import S3BlobStore

from s3server import MotoServer

Factory = Callable[[Path], BlobStore]
STORES: dict[str, Factory] = {
    "fs": lambda tmp: FileBlobStore(tmp / "storage", tmp / "tmp"),
    "memory": lambda tmp: MemoryBlobStore(),
}


@pytest.fixture(params=[*sorted(STORES), "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto")
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        for name, value in moto.env.items():
            monkeypatch.setenv(name, value)  # the client reads the AWS_* variables itself
        return S3BlobStore(moto.new_bucket(), "site/a", moto.endpoint, tmp_path / "tmp")
    return STORES[request.param](tmp_path)


async def _upload(store: BlobStore, data: bytes, chunk: int = 65536):  # type: ignore[no-untyped-def]
    up = store.create_temp()
    for i in range(0, len(data), chunk):
        await up.write(data[i : i + chunk])
    await up.finish()
    return up


async def _collect(it) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([chunk async for chunk in it])


def test_publish_settle_and_read_back(store: BlobStore) -> None:
    data = bytes(range(256)) * 4000  # ~1 MB
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    assert key == "1.2/1.2.3/1.2.3.4.dcm"

    async def run() -> None:
        up = await _upload(store, data)
        assert up.size == len(data) and up.sha256 == hashlib.sha256(data).hexdigest()
        with up.content() as content:
            assert bytes(content) == data
        pubs = await store.publish([(up, key)])
        assert [p.linked for p in pubs] == [True]
        await store.settle(pubs)
        assert await store.read(key) == data
        assert await store.size(key) == len(data)
        assert await _collect(store.read_range(key)) == data
        assert await _collect(store.read_range(key, 1000, 5000)) == data[1000:6000]
        a, b = bytearray(10), bytearray(300)
        await store.read_into(key, [(5, memoryview(a)), (70000, memoryview(b))])
        assert bytes(a) == data[5:15] and bytes(b) == data[70000:70300]
        # what a codec worker process reads (a header and a frame), in its own thread
        c, d = bytearray(7), bytearray(4000)
        targets = [(0, memoryview(c)), (len(data) - 4000, memoryview(d))]
        await asyncio.to_thread(store.read_into_blocking, key, targets)
        assert bytes(c) == data[:7] and bytes(d) == data[-4000:]
        with pytest.raises(OSError):  # past the end
            await asyncio.to_thread(
                store.read_into_blocking, key, [(len(data) - 2, memoryview(bytearray(4)))]
            )

    asyncio.run(run())


def test_an_upload_larger_than_memory_buffers_reads_back_whole(store: BlobStore) -> None:
    data = hashlib.sha256(b"x").digest() * (6 << 20 >> 5)  # 6 MB: past the 4 MB buffer

    async def run() -> None:
        up = await _upload(store, data, chunk=1 << 20)
        up.release()
        with up.content() as content:
            assert len(content) == len(data) and bytes(content[-64:]) == data[-64:]
        pubs = await store.publish([(up, "a/b/c.dcm")])
        await store.settle(pubs)
        assert await store.read("a/b/c.dcm") == data

    asyncio.run(run())


def test_an_error_raised_while_the_content_is_read_is_the_one_that_surfaces(
    store: BlobStore,
) -> None:
    """A parser that rejects an instance raises while slices of the content are still
    referenced (by the exception's traceback): that rejection must reach the caller,
    not a BufferError from unmapping the file under them (found with a deflate bomb
    over DIMSE: the C-STORE failed with 0110 instead of saying why)."""
    import numpy as np

    data = hashlib.sha256(b"y").digest() * (6 << 20 >> 5)  # 6 MB: read from the file

    async def run() -> None:
        up = await _upload(store, data, chunk=1 << 20)
        up.release()
        kept = []
        with pytest.raises(LookupError, match="rejected"), up.content() as content:
            kept += [content[100:200], np.frombuffer(content, dtype=np.uint8)]
            raise LookupError("rejected")
        assert bytes(kept[0]) == data[100:200]
        kept.clear()
        await up.abort()

    asyncio.run(run())


def test_an_existing_key_is_left_alone(store: BlobStore) -> None:
    async def run() -> None:
        first = await _upload(store, b"first")
        await store.settle(await store.publish([(first, "k/k/k.dcm")]))
        second = await _upload(store, b"second")
        pubs = await store.publish([(second, "k/k/k.dcm")])
        assert [p.linked for p in pubs] == [False]
        await store.settle([], pubs)  # abandoned: the stored blob is untouched
        assert await store.read("k/k/k.dcm") == b"first"

    asyncio.run(run())


def test_a_rolled_back_publish_leaves_nothing(store: BlobStore) -> None:
    async def run() -> None:
        up = await _upload(store, b"doomed")
        pubs = await store.publish([(up, "r/r/r.dcm")])
        await store.settle([], pubs)
        with pytest.raises(FileNotFoundError):
            await store.read("r/r/r.dcm")

    asyncio.run(run())


def test_retired_blobs_are_deleted(store: BlobStore) -> None:
    async def run() -> None:
        up = await _upload(store, b"old")
        await store.settle(await store.publish([(up, "o/o/o.dcm")]))
        intent = await store.retire(["o/o/o.dcm"])
        assert await store.read("o/o/o.dcm") == b"old"  # still there until deleted
        await store.delete_retired(["o/o/o.dcm"], intent)
        with pytest.raises(FileNotFoundError):
            await store.size("o/o/o.dcm")

    asyncio.run(run())


def test_an_aborted_upload_is_gone(store: BlobStore) -> None:
    async def run() -> None:
        up = store.create_temp()
        await up.write(b"half")
        await up.abort()
        assert await store.probe() > 0

    asyncio.run(run())
    if isinstance(store, FileBlobStore | S3BlobStore):
        assert list(store.tmp.iterdir()) == []
    else:
        assert isinstance(store, MemoryBlobStore) and not store.uploads


@pytest.mark.parametrize(
    ("url", "kind", "where"),
    [
        ("", FileBlobStore, "default"),
        ("file://{tmp}/pacs", FileBlobStore, "{tmp}/pacs"),
        ("FILE://{tmp}/pacs%20a", FileBlobStore, "{tmp}/pacs a"),
        ("s3://pacs-archive/site/a", S3BlobStore, "s3://pacs-archive/site/a"),
        ("S3://pacs-archive", S3BlobStore, "s3://pacs-archive"),  # RFC 3986 3.1: any case
    ],
)
def test_the_storage_url_names_the_store_the_settings_checked(
    tmp_path: Path, url: str, kind: type, where: str
) -> None:
    """The store is chosen on the URL as the settings validated it (urlsplit), so a
    spelling they accept never falls through to a directory named after it."""
    url, where = url.format(tmp=tmp_path), where.format(tmp=tmp_path)
    load_settings({"data_dir": str(tmp_path)}, {"PICTOR_STORAGE_URL": url})  # accepted
    store = open_blob_store(url, tmp_path / "default", tmp_path / "tmp")
    assert isinstance(store, kind)
    if isinstance(store, S3BlobStore):
        assert store.describe() == where
    else:
        assert store.root == (tmp_path / "default" if where == "default" else Path(where))
