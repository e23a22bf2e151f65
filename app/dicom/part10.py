"""What a file is before it is read (PS3.10 7.1), and a File Meta Information for a bare
data set, so that ``pictor import`` can store files written without one."""

from __future__ import annotations

import io
from typing import IO

#: VRs of PS3.5 Table 6.2-1: an explicit VR data set starts with one after its first tag
EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC "
    b"UI UL UN UR US UT UV".split()
)


def dicom_kind(head: bytes) -> str:
    """``"part10"`` (PS3.10 7.1: 'DICM' after the 128-byte preamble, or rarely at the
    start), ``"dataset"`` (a bare data set, no preamble nor File Meta Information: its
    first element is a little-endian tag of group 0008 or above), or ``""``."""
    if head[128:132] == b"DICM" or head[:4] == b"DICM":
        return "part10"
    if len(head) < 12:
        return ""
    group = int.from_bytes(head[0:2], "little")
    element = int.from_bytes(head[2:4], "little")
    if group < 0x0008 or group > 0x00FF or group % 2:  # an early standard group
        return ""
    if head[4:6] in EXPLICIT_VRS:
        return "dataset"  # explicit VR
    length = int.from_bytes(head[4:8], "little")
    if element <= 0x0020 and length < 1024:  # implicit VR: a short first element
        return "dataset"
    return ""


def file_meta_for(f: IO[bytes], explicit: bool) -> bytes | None:
    """Preamble, 'DICM' and the File Meta Information (PS3.10 7.1) for the bare data set
    in ``f``, or None when its SOP Class and Instance UIDs cannot be read."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        UID,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    try:
        ds = pydicom.dcmread(
            f, force=True, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
        )
        sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except Exception:  # noqa: BLE001 - any failure: stored as is, and refused with a reason
        return None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue()
