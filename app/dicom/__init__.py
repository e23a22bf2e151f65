"""Pure DICOM helpers: no I/O beyond reading a given file, no framework imports."""
