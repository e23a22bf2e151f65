"""Two storage tiers behind the blob-store port (issue #16): new instances go to the
hot store; the tiering service (app.services.tiering) moves idle studies' blobs to the
cold one and back. Reads are transparent: a key is read from hot, and from cold when
hot does not have it, so a study is readable at every moment of a move (both tiers
hold it during the copy). The index records each instance's tier (``instance.tier``:
0 hot, 1 cold) for status, QIDO's InstanceAvailability and crash recovery; reading
does not depend on it.

Crash safety of a move reuses the stores' retire intents: before copying, both tiers
record the study's keys; the sweep of each tier deletes a listed blob that no row *of
that tier* references. Before the index commit the copy in the target tier is such a
blob, after it the original in the source tier is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Protocol

from app.storage.base import BlobStore, Publication, Upload

HOT, COLD = 0, 1


class ReferencedByTier(Protocol):
    def __call__(self, keys: list[str], tier: int = HOT) -> Awaitable[set[str]]: ...


class TieredBlobStore:
    def __init__(self, hot: BlobStore, cold: BlobStore) -> None:
        self.hot = hot
        self.cold = cold

    def tier(self, number: int) -> BlobStore:
        return self.cold if number == COLD else self.hot

    # -- writes go to hot ----------------------------------------------------------------

    def create_temp(self) -> Upload:
        return self.hot.create_temp()

    async def publish(self, items: Iterable[tuple[Upload, str]]) -> Sequence[Publication]:
        return await self.hot.publish(items)

    async def settle(
        self,
        committed: Iterable[Publication],
        rolled_back: Iterable[Publication] = (),
        intents: Iterable[object] = (),
    ) -> None:
        await self.hot.settle(committed, rolled_back, intents)

    async def retire(self, keys: Iterable[str]) -> object:
        """Blobs about to lose their rows may be in either tier: an intent in each."""
        listed = list(keys)
        return (await self.hot.retire(listed), await self.cold.retire(listed))

    async def delete_retired(self, keys: Iterable[str], intent: object) -> None:
        listed = list(keys)
        hot_intent, cold_intent = intent if isinstance(intent, tuple) else (intent, None)
        await self.hot.delete_retired(listed, hot_intent)
        await self.cold.delete_retired(listed, cold_intent)

    def import_blob(self, key: str, source: Path | IO[bytes]) -> str:
        return self.hot.import_blob(key, source)

    # -- reads: hot, else cold -----------------------------------------------------------

    async def read_into(self, key: str, targets: list[tuple[int, memoryview]]) -> None:
        try:
            await self.hot.read_into(key, targets)
        except FileNotFoundError:
            await self.cold.read_into(key, targets)

    def read_into_blocking(self, key: str, targets: list[tuple[int, memoryview]]) -> None:
        try:
            self.hot.read_into_blocking(key, targets)
        except FileNotFoundError:
            self.cold.read_into_blocking(key, targets)

    async def read_range(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        source = self.hot.read_range(key, offset, length)
        try:
            first = await anext(source)
        except StopAsyncIteration:
            return
        except FileNotFoundError:
            async for chunk in self.cold.read_range(key, offset, length):
                yield chunk
            return
        yield first
        async for chunk in source:
            yield chunk

    async def read(self, key: str) -> bytes:
        try:
            return await self.hot.read(key)
        except FileNotFoundError:
            return await self.cold.read(key)

    def read_blocking(self, key: str) -> bytes:
        try:
            return self.hot.read_blocking(key)
        except FileNotFoundError:
            return self.cold.read_blocking(key)

    async def size(self, key: str) -> int:
        try:
            return await self.hot.size(key)
        except FileNotFoundError:
            return await self.cold.size(key)

    def open_blob(self, key: str) -> IO[bytes]:
        try:
            return self.hot.open_blob(key)
        except FileNotFoundError:
            return self.cold.open_blob(key)

    def hash_blob(self, key: str) -> tuple[int, str]:
        try:
            return self.hot.hash_blob(key)
        except FileNotFoundError:
            return self.cold.hash_blob(key)

    # -- health and recovery -------------------------------------------------------------

    async def probe(self) -> int:
        free = await self.hot.probe()
        await self.cold.probe()
        return free

    def free_bytes(self) -> int:
        return self.hot.free_bytes()

    async def sweep(self, referenced: Callable[..., Awaitable[set[str]]]) -> dict[str, int]:
        """Each tier's sweep, a blob counting as referenced only by rows of its tier."""

        async def hot_rows(keys: list[str]) -> set[str]:
            return await referenced(keys, HOT)

        async def cold_rows(keys: list[str]) -> set[str]:
            return await referenced(keys, COLD)

        swept = await self.hot.sweep(hot_rows)
        for name, count in (await self.cold.sweep(cold_rows)).items():
            swept[f"cold_{name}"] = count
        return swept
