"""Blob storage: where the stored DICOM files live, behind the :class:`BlobStore` port
(app.storage.base): the file system (app.storage.fs), memory for tests
(app.storage.memory); S3-compatible object storage is to come."""

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
]
