"""Where backups go (issue #19): a directory, or an S3-compatible bucket
(``s3://bucket/prefix``; the endpoint from ``PICTOR_S3_ENDPOINT_URL`` for MinIO, Ceph,
Garage, ..., empty for AWS; credentials and region from the standard ``AWS_*``
variables). Both hold the same layout (app.services.backup), by name:
``files/<key>``, ``backups/<name>/...``.

A name is complete or absent: a directory writes through a temporary name, fsyncs and
renames; S3 makes an object visible only once its upload (multipart for large ones)
has completed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlsplit


class BackupTarget(Protocol):
    def has(self, name: str, size: int) -> bool:
        """Whether ``name`` exists with ``size`` bytes (files never change: enough)."""

    def put(self, name: str, source: IO[bytes]) -> None:
        """Store what ``source`` reads as ``name``, durably, all or nothing."""

    def read(self, name: str) -> bytes: ...

    @contextlib.contextmanager
    def local(self, name: str) -> Iterator[Path]:
        """``name`` as a local file, for as long as the block runs."""
        raise NotImplementedError
        yield Path()

    def listing(self, prefix: str) -> list[str]:
        """The names under ``prefix`` (a "folder": ends with ``/``)."""

    def describe(self) -> str: ...


def client_errors() -> tuple[type[Exception], ...]:
    """The errors the S3 client (boto3) raises, for callers that report them."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def open_target(location: str, endpoint: str = "") -> BackupTarget:
    """The target of ``location``: ``s3://bucket[/prefix]``, else a directory path."""
    if location.startswith("s3://"):
        parts = urlsplit(location)
        if not parts.netloc:
            raise ValueError(f"{location!r} names no bucket (s3://bucket/prefix)")
        return S3Target(parts.netloc, parts.path.strip("/"), endpoint)
    return DirectoryTarget(Path(location).expanduser().resolve())


class DirectoryTarget:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def has(self, name: str, size: int) -> bool:
        path = self.root / name
        return path.is_file() and path.stat().st_size == size

    def put(self, name: str, source: IO[bytes]) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
        try:
            with open(temp, "wb", buffering=0) as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    @contextlib.contextmanager
    def local(self, name: str) -> Iterator[Path]:
        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(name)
        yield path

    def listing(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())


class S3Target:
    """An S3-compatible bucket through boto3 (its transfer manager does multipart
    uploads of large objects, with bounded memory)."""

    def __init__(self, bucket: str, prefix: str, endpoint: str = "") -> None:
        import boto3  # only backups to S3 need it
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.client: Any = boto3.client("s3", endpoint_url=endpoint or None)
        self.transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, name: str) -> str:
        return self.prefix + name

    def has(self, name: str, size: int) -> bool:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return int(head["ContentLength"]) == size

    def put(self, name: str, source: IO[bytes]) -> None:
        self.client.upload_fileobj(source, self.bucket, self._key(name), Config=self.transfer)

    def read(self, name: str) -> bytes:
        answer = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        data: bytes = answer["Body"].read()
        return data

    @contextlib.contextmanager
    def local(self, name: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="pictor-restore-") as folder:
            path = Path(folder) / "object"
            self.client.download_file(self.bucket, self._key(name), str(path), Config=self.transfer)
            yield path

    def listing(self, prefix: str) -> list[str]:
        names: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        )
        for page in pages:
            for item in page.get("Contents", []):
                names.append(item["Key"][len(self.prefix) :])
        return sorted(names)
