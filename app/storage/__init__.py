"""Blob storage: where the stored DICOM files live (filesystem now; the interface admits S3)."""

from app.storage.fs import FileBlobStore, TempBlob, instance_key

__all__ = ["FileBlobStore", "TempBlob", "instance_key"]
