"""Recovery of the filesystem blob store (DESIGN.md decision 2) on real files.

A crash is simulated by leaving a publish unsettled and giving its temp files the pid
of a process that has exited, exactly as a SIGKILLed server leaves them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.storage import FileBlobStore, instance_key


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def orphan(store: FileBlobStore) -> None:
    """Rename this process's temp files as if their owner had died."""
    pid = dead_pid()
    for path in store.tmp.iterdir():
        host, mine, rest = path.name.split("-", 2)
        assert int(mine) == os.getpid()
        path.rename(path.with_name(f"{host}-{pid}-{rest}"))
    # intents name the parts they cover: rewrite those names too
    for path in store.tmp.glob("*.intent"):
        text = path.read_text().replace(f"-{os.getpid()}-", f"-{pid}-")
        path.write_text(text)


async def _put(store: FileBlobStore, key: str, data: bytes):  # type: ignore[no-untyped-def]
    temp = store.create_temp()
    await temp.write(data)
    await temp.finish()
    temp.release()
    (pub,) = await store.publish([(temp, key)])
    return pub


@pytest.mark.parametrize("committed", [False, True])
def test_sweep_undoes_an_unfinished_publish(tmp_path: Path, committed: bool) -> None:
    store = FileBlobStore(tmp_path / "storage", tmp_path / "tmp")
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    data = os.urandom(10_000)

    async def scenario() -> dict[str, int]:
        pub = await _put(store, key, data)
        assert pub.linked and store.path(key).read_bytes() == data
        orphan(store)  # the process dies before settling
        return await store.sweep(lambda keys: _referenced(keys, {key} if committed else set()))

    swept = asyncio.run(scenario())
    assert store.path(key).exists() is committed
    assert list(store.tmp.iterdir()) == []
    assert swept["unreferenced_files"] == (0 if committed else 1)


def test_sweep_leaves_a_file_linked_by_someone_else(tmp_path: Path) -> None:
    """An intent whose key was already taken (link failed) must not delete that file."""
    store = FileBlobStore(tmp_path / "storage", tmp_path / "tmp")
    key = instance_key("1.2", "1.2.3", "1.2.3.4")

    async def scenario() -> None:
        first = await _put(store, key, b"first writer")
        await store.settle([first])
        second = await _put(store, key, b"second writer")
        assert not second.linked
        orphan(store)
        await store.sweep(lambda keys: _referenced(keys, set()))

    asyncio.run(scenario())
    assert store.path(key).read_bytes() == b"first writer"


def test_sweep_ignores_live_processes_and_finishes_retirement(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "storage", tmp_path / "tmp")
    old, new = instance_key("1", "1.1", "1.1.1"), instance_key("1", "1.1", "1.1.1", "ab12")

    async def scenario() -> None:
        await store.settle([await _put(store, old, b"old")])
        await store.settle([await _put(store, new, b"new")])
        await store.retire([old])  # the row is about to move from old to new
        live = sorted(p.name for p in store.tmp.iterdir())
        assert await store.sweep(lambda keys: _referenced(keys, set())) == {
            "parts": 0,
            "intents": 0,
            "unreferenced_files": 0,
            "health_probes": 0,
        }
        assert sorted(p.name for p in store.tmp.iterdir()) == live  # ours: untouched
        orphan(store)
        await store.sweep(lambda keys: _referenced(keys, {new}))

    asyncio.run(scenario())
    assert not store.path(old).exists()
    assert store.path(new).read_bytes() == b"new"


def test_direct_io_content_and_sizes(tmp_path: Path) -> None:
    """Whatever the alignment, the file holds exactly the bytes written."""
    store = FileBlobStore(tmp_path / "storage", tmp_path / "tmp")

    async def scenario() -> None:
        for size in (0, 1, 4095, 4096, 4097, (4 << 20) - 1, 4 << 20, (4 << 20) + 5, 9_000_001):
            data = os.urandom(size)
            temp = store.create_temp()
            for i in range(0, size, 65_537):
                await temp.write(data[i : i + 65_537])
            await temp.finish()
            if size < 4 << 20:  # a part that filled the buffer went to the file
                assert temp.in_memory is not None and bytes(temp.in_memory) == data
            else:
                assert temp.in_memory is None
            temp.release()
            assert temp.path.read_bytes() == data, size
            import hashlib

            assert temp.sha256 == hashlib.sha256(data).hexdigest()
            temp.discard()

    asyncio.run(scenario())


async def _referenced(keys: list[str], committed: set[str]) -> set[str]:
    return {k for k in keys if k in committed}


def test_sweep_removes_probe_files_of_dead_processes_only(tmp_path: Path) -> None:
    """Issue #19: ``tmp/.health-<pid>`` of a probe that failed half-way (disk full) was
    never swept."""
    store = FileBlobStore(tmp_path / "storage", tmp_path / "tmp")
    dead = store.tmp / f".health-{dead_pid()}"
    mine = store.tmp / f".health-{os.getpid()}"
    dead.write_bytes(b"o")
    mine.write_bytes(b"o")
    swept = asyncio.run(store.sweep(lambda keys: _referenced(keys, set())))
    assert swept["health_probes"] == 1
    assert not dead.exists() and mine.exists()


def test_a_publish_that_fails_half_way_unpublishes_the_batch(tmp_path: Path) -> None:
    """A new directory entry can fail (disk full, here: a file where a directory must
    go): the files already linked are unlinked and the intent removed, so nothing of
    the batch is visible and the caller can report every instance as not stored."""
    store = FileBlobStore(tmp_path / "storage", tmp_path / "tmp")
    good = instance_key("1.2", "1.2.3", "1.2.3.1")
    (store.root / "1.9").write_bytes(b"")  # not a directory: the next link fails
    bad = instance_key("1.9", "1.9.1", "1.9.1.1")

    async def scenario() -> None:
        temps = []
        for data in (b"first", b"second"):
            temp = store.create_temp()
            await temp.write(data)
            await temp.finish()
            temps.append(temp)
        with pytest.raises(OSError):
            await store.publish([(temps[0], good), (temps[1], bad)])
        for temp in temps:
            temp.discard()

    asyncio.run(scenario())
    assert not store.path(good).exists()
    assert list(store.tmp.iterdir()) == []
