"""Blob storage: where the stored DICOM files live, behind the :class:`BlobStore` port
(app.storage.base): the file system (app.storage.fs), an S3-compatible bucket
(app.storage.s3), memory for tests (app.storage.memory)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from app.storage.base import BlobStore, Publication, Upload, instance_key, is_instance_key
from app.storage.fs import FileBlobStore, TempBlob

__all__ = [
    "BlobStore",
    "FileBlobStore",
    "Publication",
    "TempBlob",
    "Upload",
    "instance_key",
    "is_instance_key",
    "open_blob_store",
]


def open_blob_store(url: str, default_dir: Path, tmp: Path, s3_endpoint: str = "") -> BlobStore:
    """The store ``url`` names (checked by the settings): ``s3://bucket[/prefix]``, a
    ``file:///path``, or, empty, the directory ``default_dir``. ``tmp`` is the node's
    own directory for uploads in flight."""
    parts = urlsplit(url)  # the scheme as the settings read it: case-insensitive
    if parts.scheme == "s3":
        from app.storage.s3 import S3BlobStore  # obstore only where a bucket is used

        return S3BlobStore(parts.netloc, parts.path.strip("/"), s3_endpoint, tmp)
    root = Path(unquote(parts.path)) if url else default_dir
    return FileBlobStore(root, tmp)
