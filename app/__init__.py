"""Pictor: a DICOMweb-first imaging archive."""

__version__ = "0.1.0"
