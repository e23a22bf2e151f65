"""Where a received C-STORE data set waits for its handler: in memory while it is small,
in a file of the DIMSE spool directory once it is not.

pynetdicom assembles a C-STORE's data set from its P-DATA fragments (PS3.8 9.3.5,
PS3.7 9.1.1) before the handler runs. By default it keeps the whole data set in memory,
so a 2 GB multi-frame instance would cost 2 GB of the DIMSE process's memory (issue #20).
With ``STORE_RECV_CHUNKED_DATASET`` it writes the fragments to a temporary file instead
(after a preamble and a File Meta Information group of its own, PS3.10 7.1), which
costs a write and a read of the page cache for every instance, large or small.

:func:`install` gives pynetdicom a :class:`Spool` as that file: the fragments stay in
memory up to :data:`MEMORY_LIMIT` bytes (most instances: no disk I/O, as before), and
the rest goes to a file in the spool directory. pynetdicom 3 names the temporary-file
factory in ``pynetdicom.dimse_messages`` and uses of it only ``write``,
``file.flush``, ``name`` and ``close``; tests catch a release that changes this (a
large C-STORE must reach the spool and leave no file behind).

A spool file never takes the disk below ``PICTOR_MIN_FREE_BYTES``: the free space of
the spool's file system is checked when a data set spills to a file and every
:data:`CHECK_EVERY` bytes after that. Below the floor, the file is deleted, the rest of
the data set is read and dropped, and the C-STORE fails with A700 (Refused: Out of
Resources, PS3.4 B.2.3) instead of filling the disk the archive's index and files live on.

A spool's file is deleted when the handler is done with it (pynetdicom closes it),
when an association is aborted or lost mid-transfer (:func:`release_pending`, on
``EVT_CONN_CLOSE``), when the spool is garbage-collected, and at start-up
(:func:`prepare`: files left by a process that was killed).
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

#: bytes of one data set held in memory before the rest goes to the spool file
MEMORY_LIMIT = 8 << 20
#: bytes written to a spool file between two checks of the free space
CHECK_EVERY = 64 << 20
#: why a data set was refused when the disk reached the floor (an Error Comment: LO)
NO_ROOM = "out of resources: the disk is at its free-space floor"
#: bytes read from a spool file at a time when it is handed to ingest
READ_CHUNK = 4 << 20
#: bytes of the start of a data set :func:`data_set_head` gives by default
HEAD_BYTES = 256 << 10
#: where the value of (0002,0000) starts: preamble, "DICM", tag, "UL", length
_META_START = 128 + 4 + 4 + 2 + 2


class Spool:
    """One received data set (preamble and File Meta Information included)."""

    def __init__(self, directory: Path, limit: int = MEMORY_LIMIT, floor: int = 0) -> None:
        self.limit = limit
        #: bytes that must stay free on the spool's file system (PICTOR_MIN_FREE_BYTES)
        self.floor = floor
        #: why the data set is being dropped instead of kept (:data:`NO_ROOM`), or None
        self.refused: str | None = None
        self._directory = directory
        self._unchecked = 0
        #: the spool file's path (pynetdicom unlinks it too; it may not exist)
        self.name = str(directory / f"{os.getpid()}-{secrets.token_hex(8)}.dcm")
        self.size = 0
        self._memory: bytearray | None = bytearray()
        self._file: IO[bytes] | None = None
        self._closed = False
        self._finalizer: weakref.finalize[Any, Spool] | None = None

    # -- what pynetdicom calls, in the association's reading thread --------------------

    @property
    def file(self) -> Spool:
        """pynetdicom flushes ``file`` after each fragment: that is this object."""
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("the spool was closed")
        n = len(data)
        if self.refused is None and self._memory is not None and self.size + n > self.limit:
            self._spill()
        if self.refused is not None:
            pass  # read and dropped: the C-STORE fails once the data set is complete
        elif self._file is not None:
            self._unchecked += n
            if self._unchecked >= CHECK_EVERY and not self._room():
                self._refuse()
            else:
                self._file.write(data)
        else:
            assert self._memory is not None
            self._memory += data
        self.size += n
        return n

    def flush(self) -> None:
        """Nothing to do per fragment: the content is flushed once, when it is read."""

    def close(self) -> None:
        """Forget the content and delete the spool file (idempotent)."""
        self._closed = True
        self._memory = None
        if self._finalizer is not None:
            self._finalizer()  # closes and deletes the file

    # -- what the handler calls ----------------------------------------------------------

    @property
    def spilled(self) -> bool:
        """Whether the content is in a file (it outgrew :attr:`limit`)."""
        return self._file is not None

    def in_memory(self) -> memoryview | None:
        """The whole content, when it is in memory."""
        return None if self._memory is None else memoryview(self._memory)

    @contextmanager
    def chunks(self) -> Iterator[Iterator[memoryview]]:
        """The content as it was received, :data:`READ_CHUNK` bytes at a time (a reused
        buffer: each chunk is valid until the next one is read)."""
        if self._memory is not None:
            yield iter([memoryview(self._memory)])
            return
        assert self._file is not None
        self._file.flush()
        with open(self.name, "rb") as f:
            yield _read_chunks(f)

    def head(self, n: int, start: int = 0) -> bytes:
        """``n`` bytes of the content from ``start`` (fewer where it ends; none of a
        refused data set)."""
        if self.refused is not None:
            return b""
        if self._memory is not None:
            return bytes(self._memory[start : start + n])
        assert self._file is not None
        self._file.flush()
        with open(self.name, "rb") as f:
            f.seek(start)
            return f.read(n)

    # -- internals ------------------------------------------------------------------------

    def _room(self) -> bool:
        """Whether the spool's file system keeps the floor with :data:`CHECK_EVERY`
        bytes more written (an unknown free space does not refuse: the write says)."""
        self._unchecked = 0
        try:
            st = os.statvfs(self._directory)
        except OSError:
            return True
        return st.f_bavail * st.f_frsize - CHECK_EVERY >= self.floor

    def _refuse(self) -> None:
        self.refused = NO_ROOM
        self._memory = None
        self._file = None
        if self._finalizer is not None:
            self._finalizer()  # closes and deletes what was written

    def _spill(self) -> None:
        assert self._memory is not None
        if not self._room():
            self._refuse()
            return
        f = open(self.name, "xb")  # noqa: SIM115 - lives as long as the spool
        self._finalizer = weakref.finalize(self, _delete, f, self.name)
        f.write(self._memory)
        self._file, self._memory = f, None


def _read_chunks(f: io.BufferedReader) -> Iterator[memoryview]:
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    while n := f.readinto(buffer):
        yield view[:n]


def _delete(f: IO[bytes], name: str) -> None:
    try:
        f.close()
    finally:
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def prepare(directory: Path) -> None:
    """Empty the spool directory (what a killed process left) and create it."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


def install(directory: Path, limit: int = MEMORY_LIMIT, floor: int = 0) -> None:
    """Make pynetdicom receive every C-STORE data set into a :class:`Spool` of
    ``directory`` that keeps ``floor`` bytes free (for this process; call
    :func:`prepare` first)."""
    from pynetdicom import _config, dimse_messages

    def factory(*_args: object, **_kwargs: object) -> Spool:
        return Spool(directory, limit, floor)

    setattr(dimse_messages, "NamedTemporaryFile", factory)  # noqa: B010 - a module global
    _config.STORE_RECV_CHUNKED_DATASET = True


def data_set_head(request: Any, n: int = HEAD_BYTES) -> bytes:
    """The first ``n`` bytes (about) of a received C-STORE's data set as sent, without
    the File Meta Information pynetdicom put before it in a spool (PS3.10 7.1: the
    group's length is the value of its first element, (0002,0000) UL)."""
    spool = getattr(request, "_dataset_file", None)
    if not isinstance(spool, Spool):
        data = request.DataSet
        return bytes(data.getbuffer()[:n]) if data is not None else b""
    start = spool.head(_META_START + 4)
    if len(start) < _META_START + 4 or start[128:132] != b"DICM":
        return b""
    skip = _META_START + 4 + int.from_bytes(start[_META_START : _META_START + 4], "little")
    return spool.head(n, skip)


def release_pending(event: Any) -> None:
    """EVT_CONN_CLOSE: a data set still being received when the connection ended (an
    A-ABORT, a peer that went away) is given up and its spool file deleted."""
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    spool = getattr(message, "_data_set_file", None)
    if isinstance(spool, Spool):
        spool.close()
