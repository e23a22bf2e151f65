"""The blob-store port: what the services need of the place stored DICOM files live.

A blob is an instance's bytes exactly as received, under a key a person can read
(:func:`instance_key`: ``<study>/<series>/<sop>.dcm``, a version suffix when one
replaces another). Storing is two-phase (DESIGN.md decision 2): an upload streams into
a :class:`Upload`; :meth:`BlobStore.publish` makes a batch durable and visible under
its keys; the caller commits the index rows and then :meth:`BlobStore.settle` drops
what publishing left (or unpublishes what was not committed). A crash at any point is
undone by :meth:`BlobStore.sweep` at start-up. Reads are byte ranges (frames, bulk
data) or streams (whole instances).

Implementations: :class:`app.storage.fs.FileBlobStore` (a directory),
:class:`app.storage.memory.MemoryBlobStore` (tests). No caller sees a path or an object
key's location: only keys.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Protocol, TypeVar

#: what :func:`instance_key` makes: three UIDs (a digit first, then digits and dots) and
#: an optional hex version; never "..", never absolute
_KEY = re.compile(r"(?:[0-9][0-9.]{0,63}/){2}[0-9][0-9.]{0,63}(?:\.[0-9a-f]{1,32})?\.dcm")


_T = TypeVar("_T")


def of_this_store(value: object, kind: type[_T], what: str) -> _T:
    """``value`` as this store's own ``kind`` (an upload or a publication handed back by
    the caller was made by this store)."""
    assert isinstance(value, kind), f"{what} of another store"
    return value


def is_instance_key(key: str) -> bool:
    """Whether ``key`` is one :func:`instance_key` could have made: a key read from
    outside (a backup's manifest) must be, before it becomes a file name."""
    return _KEY.fullmatch(key) is not None


def instance_key(study_uid: str, series_uid: str, sop_uid: str, version: str = "") -> str:
    """``<study>/<series>/<sop>.dcm`` (UIDs are digits and dots only, PS3.5 9.1, so
    they are safe names); ``version`` distinguishes a replacement from its original."""
    suffix = f".{version}" if version else ""
    return f"{study_uid}/{series_uid}/{sop_uid}{suffix}.dcm"


class Upload(Protocol):
    """An instance being received."""

    size: int

    @property
    def sha256(self) -> str: ...

    @property
    def in_memory(self) -> memoryview | None:
        """The whole content while it is still in memory (small instances)."""

    async def write(self, data: bytes | memoryview) -> None: ...

    async def finish(self) -> None:
        """All bytes received: make them durable."""

    def content(self) -> AbstractContextManager[memoryview]:
        """The whole content (after :meth:`finish`), to analyse."""

    def release(self) -> None:
        """Give back memory held for the content."""

    def discard(self) -> None:
        """Forget the upload (no write in flight)."""

    async def abort(self) -> None:
        """Abandon the upload mid-way."""


class Publication(Protocol):
    """One upload published under one key."""

    @property
    def key(self) -> str: ...

    @property
    def linked(self) -> bool:
        """False: the key already existed, nothing was published."""

    @property
    def intent(self) -> object:
        """What the store recorded to undo this publish after a crash (given back to
        :meth:`BlobStore.settle` when an attempt is abandoned); None when nothing."""


class BlobStore(Protocol):
    def create_temp(self) -> Upload: ...

    async def publish(self, items: Iterable[tuple[Upload, str]]) -> Sequence[Publication]:
        """Make each upload durable and visible under its key; an existing key is left
        alone (``linked`` False)."""

    async def settle(
        self,
        committed: Iterable[Publication],
        rolled_back: Iterable[Publication] = (),
        intents: Iterable[object] = (),
    ) -> None:
        """After the index transaction: keep ``committed``, unpublish ``rolled_back``."""

    async def retire(self, keys: Iterable[str]) -> object:
        """Record that these blobs are about to lose their index rows (replacement,
        deletion); the token is given back to :meth:`delete_retired`."""

    async def delete_retired(self, keys: Iterable[str], intent: object) -> None: ...

    async def read_into(self, key: str, targets: list[tuple[int, memoryview]]) -> None:
        """Fill each buffer with the blob's bytes at its offset."""

    def read_into_blocking(self, key: str, targets: list[tuple[int, memoryview]]) -> None:
        """:meth:`read_into` in the calling thread: for a codec worker process that
        reads only the parts of a blob it works on (a frame and the header before it)."""

    def read_range(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset`` (``length`` of them, or to the end)."""

    async def read(self, key: str) -> bytes:
        """The whole blob."""

    def read_blocking(self, key: str) -> bytes:
        """The whole blob, read in the calling thread: for a codec worker process, which
        reads what it works on itself instead of receiving it through a pipe. The store
        object is sent to the worker, so it holds no open resources."""

    async def size(self, key: str) -> int: ...

    async def sweep(self, referenced: Callable[[list[str]], Awaitable[set[str]]]) -> dict[str, int]:
        """Start-up recovery: undo what interrupted publishes left."""

    async def probe(self) -> int:
        """Raise OSError unless a blob can be written; the free bytes."""

    def free_bytes(self) -> int:
        """Bytes still available to new blobs (cheap: called per request)."""

    def open_blob(self, key: str) -> IO[bytes]:
        """The blob, to read through (a backup copies it; FileNotFoundError if absent)."""

    def import_blob(self, key: str, source: Path | IO[bytes]) -> str:
        """Store the file ``source`` (or what a file object reads) as the blob ``key``,
        replacing it (a restore, a tier move); its SHA-256."""

    def hash_blob(self, key: str) -> tuple[int, str]:
        """The blob's size and SHA-256, read through (FileNotFoundError if absent)."""
