"""The DIMSE shim against peers nobody here wrote: dcmtk's tools and pynetdicom.

A real ``pictor serve`` with DIMSE on a loopback port (PS3.8 associations), its known
peers two dcmtk ``storescp`` processes started here as C-MOVE destinations. Statuses are
those of PS3.4 B.2.3 (C-STORE) and C.4 (C-FIND, C-MOVE, C-GET).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from app.dimse.spool import MEMORY_LIMIT as SPOOL_MEMORY_LIMIT

from conftest import Archive, Pictor, multipart, until
from corpus import get_ref, make_patched_copy, reference_files
from server import PictorProcess, free_port, status_kib
from synth import MF_GRAYSCALE_WORD_SC_STORAGE, big_multiframe, ct_slice, new_uids, rejection_note

DCMTK = Path("/usr/bin")
pytestmark = pytest.mark.skipif(
    not (DCMTK / "storescu").exists(), reason="dcmtk is not installed (apt-get install dcmtk)"
)
#: files dcmtk's storescu refuses to read as storable (it finds no SOP Instance UID)
NOT_FOR_STORESCU = {"rtdose_rle.dcm"}
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
CT = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Dimse:
    archive: Archive
    port: int
    dest_dir: Path  # storescp DEST: uncompressed syntaxes only (its default)
    all_dir: Path  # storescp DESTALL: every syntax it knows (+xa)
    work: Path

    def tool(
        self, name: str, *args: str, files: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run a dcmtk tool against the archive (absolute path: PATH may hold shims)."""
        return subprocess.run(
            [
                str(DCMTK / name),
                "-aet",
                "TESTSCU",
                "-aec",
                "PICTOR",
                *args,
                "127.0.0.1",
                str(self.port),
                *files,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def associate(self, *contexts: str, ae_title: str = "PYNETDICOM", **kw: object) -> object:
        ae = AE(ae_title=ae_title)
        for cx in contexts:
            ae.add_requested_context(cx)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="PICTOR", **kw)  # type: ignore[arg-type]
        assert assoc.is_established
        return assoc


def _storescp(port: int, directory: Path, aet: str, *extra: str) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True)
    proc = subprocess.Popen(
        [str(DCMTK / "storescp"), "-aet", aet, "-od", str(directory), *extra, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_port(port)
    return proc


def _wait_port(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@pytest.fixture(scope="module")
def dimse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dimse]:
    root = tmp_path_factory.mktemp("dimse")
    port, dest_port, all_port = free_port(), free_port(), free_port()
    peers = f"DEST@127.0.0.1:{dest_port},DESTALL@127.0.0.1:{all_port},DOWN@127.0.0.1:{free_port()}"
    scps = [
        _storescp(dest_port, root / "dest", "DEST"),
        _storescp(all_port, root / "destall", "DESTALL", "+xa"),
    ]
    process = PictorProcess(
        root / "data",
        env={"PICTOR_DIMSE_PORT": str(port), "PICTOR_DIMSE_PEERS": peers},
    )
    try:
        process.start()
        archive = Archive(process)
        yield Dimse(archive, port, root / "dest", root / "destall", root)
        archive.http.close()
    finally:
        process.stop()
        for scp in scps:
            scp.terminate()
            scp.wait(10)


def _db_syntax(d: Dimse, sop_uid: str) -> str | None:
    rows = d.archive.query(
        "SELECT transfer_syntax_uid FROM instance WHERE sop_instance_uid = $1", sop_uid
    )
    return rows[0][0] if rows else None


def _ct_series(n: int, **kw: object) -> tuple[str, str, list[bytes]]:
    study, series = new_uids()
    return study, series, [ct_slice(study, series, i, rows=32, cols=32, **kw) for i in range(n)]  # type: ignore[arg-type]


def _dataset(data: bytes, **changes: object) -> Dataset:
    ds = pydicom.dcmread(io.BytesIO(data))
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


def _multipart_first(body: bytes, content_type: str) -> bytes:
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    part = body.split(b"--" + boundary.encode())[1]
    return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]


# -- verification -------------------------------------------------------------------------


def test_echoscu(dimse: Dimse) -> None:
    """PS3.4 A.4: C-ECHO answers Success."""
    done = dimse.tool("echoscu", "-v")
    assert done.returncode == 0, done.stderr
    assert "Received Echo Response (Success)" in done.stderr


def test_dimse_is_its_own_process_and_port_0_turns_it_off(dimse: Dimse, archive: Archive) -> None:
    assert len(dimse.archive.process.children("app.dimse")) == 1
    assert archive.process.children("app.dimse") == []  # the default fixture: PICTOR_DIMSE_PORT=0


# -- storage --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(dimse: Dimse) -> dict[str, tuple[Path, str]]:
    """The reference files and a JPEG-LS near-lossless one, stored by one ``storescu``
    association offering each file's own transfer syntax (a config profile with one
    presentation context per SOP class and syntax), and an HTJ2K one."""
    folder = dimse.work / "corpus"
    folder.mkdir()
    for ref in reference_files():
        if ref.name not in NOT_FOR_STORESCU:
            shutil.copy(ref.path, folder / ref.name)
    make_patched_copy("JPEGLSNearLossless_08.dcm", folder)
    files: dict[str, tuple[Path, str]] = {}
    pairs: dict[tuple[str, str], None] = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        files[str(ds.SOPInstanceUID)] = (path, str(ds.file_meta.TransferSyntaxUID))
        pairs[(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))] = None
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Files]"]
    for n, (sop_class, ts) in enumerate(pairs, 1):
        lines.append(f"PresentationContext{n} = {sop_class}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", "[Mixed]", "PresentationContexts = Files"]
    config = dimse.work / "storescu.cfg"
    config.write_text("\n".join(lines) + "\n")
    done = dimse.tool(
        "storescu", "-v", "-nh", "-xf", str(config), "Mixed", "+sd", "+r", files=(str(folder),)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("Received Store Response (Success)") == len(files), done.stderr

    # HTJ2K (dcmtk 3.6.7 does not know it) from a second client, pynetdicom: a lossless
    # JPEG 2000 code stream is a valid one to carry as HTJ2K lossless (PS3.5 A.4.6); what
    # is checked is that the syntax is accepted and kept
    ht = pydicom.dcmread(get_ref("MR2_J2KR.dcm").path)
    ht.file_meta.TransferSyntaxUID = HTJ2K_LOSSLESS
    ht.SOPInstanceUID = ht.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ht.save_as(dimse.work / "htj2k.dcm", enforce_file_format=True)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(ht.SOPClassUID, [HTJ2K_LOSSLESS])
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title="PICTOR")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ht).Status == 0x0000
    finally:
        assoc.release()
    files[str(ht.SOPInstanceUID)] = (dimse.work / "htj2k.dcm", HTJ2K_LOSSLESS)
    return files


def test_storescu_mixed_syntaxes_kept_and_visible_to_qido_and_wado(
    dimse: Dimse, corpus: dict[str, tuple[Path, str]]
) -> None:
    syntaxes = {ts for _, ts in corpus.values()}
    # the corpus spans native, big endian, deflated, JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE
    for needed in (
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        HTJ2K_LOSSLESS,
        "1.2.840.10008.1.2.5",
    ):
        assert needed in syntaxes
    http = dimse.archive.http
    for sop, (path, ts) in corpus.items():
        # stored as the modality sent it: in the file's own transfer syntax
        assert _db_syntax(dimse, sop) == ts, path.name
        found = http.get("/instances", params={"SOPInstanceUID": sop})
        assert found.status_code == 200 and len(found.json()) == 1, path.name
        item = found.json()[0]
        study, series = item["0020000D"]["Value"][0], item["0020000E"]["Value"][0]
        got = http.get(
            f"/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert got.status_code == 200, (path.name, got.text[:300])
        back = pydicom.dcmread(
            io.BytesIO(_multipart_first(got.content, got.headers["content-type"]))
        )
        original = pydicom.dcmread(path)
        assert back.SOPInstanceUID == sop
        assert str(back.file_meta.TransferSyntaxUID) == ts
        if "PixelData" in original:
            assert back.PixelData == original.PixelData, path.name


def test_the_readme_store_commands_send_compressed_folders_as_they_are(dimse: Dimse) -> None:
    """The README's two storescu lines, as written (issue #19: dcmtk's storescu on a
    folder of JPEG 2000 files proposed only uncompressed syntaxes, and in a venv
    pynetdicom's storescu shadows it)."""
    j2k = dimse.work / "readme-j2k"
    mixed = dimse.work / "readme-mixed"
    j2k.mkdir()
    mixed.mkdir()
    sops: dict[str, str] = {}
    for name, folder in (
        ("MR2_J2KR.dcm", j2k),
        ("MR2_J2KR.dcm", mixed),
        ("OBXXXX1A_rle_2frame.dcm", mixed),
        ("SC_rgb_jpeg_dcmtk.dcm", mixed),
        ("emri_small_jpeg_ls_lossless.dcm", mixed),
        ("CT_small.dcm", mixed),
    ):
        ds = pydicom.dcmread(get_ref(name).path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / name, enforce_file_format=True)
        sops[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
    done = subprocess.run(
        [
            "/usr/bin/storescu",
            "-aec",
            "PICTOR",
            "-xv",
            "+sd",
            "+r",
            "127.0.0.1",
            str(dimse.port),
            str(j2k),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pynetdicom",
            "storescu",
            "-aec",
            "PICTOR",
            "-cx",
            "-r",
            "127.0.0.1",
            str(dimse.port),
            str(mixed),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for sop, syntax in sops.items():
        assert _db_syntax(dimse, sop) == syntax  # kept as sent, not decompressed


def test_store_duplicates_follow_the_stow_rules(
    dimse: Dimse, corpus: dict[str, tuple[Path, str]]
) -> None:
    """The same object again: success, nothing duplicated; a different object under a
    stored SOP Instance UID: 0111H with an Error Comment (as STOW's 409 reason)."""
    path = get_ref("CT_small.dcm").path
    sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert sop in corpus
    before = len(dimse.archive.storage_files())
    again = dimse.tool("storescu", "-v", files=(str(path),))
    assert again.returncode == 0 and "Received Store Response (Success)" in again.stderr
    assoc = dimse.associate(CT)
    try:
        ds = pydicom.dcmread(path)
        ds.PatientName = "SOMEONE^ELSE"
        status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert status.Status == 0x0111
    assert "different object" in status.ErrorComment
    assert len(dimse.archive.storage_files()) == before
    rows = dimse.archive.query("SELECT count(*) FROM instance WHERE sop_instance_uid = $1", sop)
    assert rows[0][0] == 1


def test_a_resend_through_another_door_or_syntax_is_already_stored(dimse: Dimse) -> None:
    """Issue #19: STOW then C-STORE of the same file (the DIMSE side writes its own File
    Meta Information), or the same instance in another transfer syntax, was refused
    with 0111H because "identical" meant identical bytes. The same data set apart from
    its encoding is the same instance (app.dicom.equivalence): success, nothing
    duplicated, the stored object kept byte for byte."""
    study, series = new_uids()
    original = ct_slice(study, series, 0, rows=64, cols=64)
    assert dimse.archive.stow(multipart([original])).status_code == 200
    path = dimse.work / "resend.dcm"
    path.write_bytes(original)
    sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    before = dimse.archive.storage_files()
    again = dimse.tool("storescu", "-v", files=(str(path),))
    assert again.returncode == 0 and "Received Store Response (Success)" in again.stderr
    rle = pydicom.dcmread(path)
    rle.compress(RLELossless, generate_instance_uid=False)
    assert str(rle.SOPInstanceUID) == sop
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CT, [RLELossless])
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title="PICTOR")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(rle)
    finally:
        assoc.release()
    assert status.Status == 0x0000
    buffer = io.BytesIO()
    rle.save_as(buffer, enforce_file_format=True)
    stowed = dimse.archive.stow(multipart([buffer.getvalue()]))
    assert stowed.status_code == 200 and "00081198" not in stowed.json()
    assert dimse.archive.storage_files() == before  # nothing duplicated
    r = dimse.archive.http.get(
        f"{dimse.archive.url}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert r.status_code == 200 and original in r.content  # the first object, as stored
    # a different data set under the UID is still refused
    changed = pydicom.dcmread(path)
    changed.PatientName = "SOMEONE^ELSE"
    assoc = dimse.associate(CT)
    try:
        assert assoc.send_c_store(changed).Status == 0x0111  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]


def test_store_failures_have_statuses_and_comments(dimse: Dimse) -> None:
    """PS3.4 B.2.3: a data set without a Study Instance UID: A900H, with a comment."""
    _, _, files = _ct_series(1)
    no_study = _dataset(files[0])
    del no_study.StudyInstanceUID
    assoc = dimse.associate(CT)
    try:
        status = assoc.send_c_store(no_study)  # type: ignore[attr-defined]
        assert status.Status == 0xA900, status
        assert "Study Instance UID" in status.ErrorComment
    finally:
        assoc.release()  # type: ignore[attr-defined]


def test_c_store_of_a_rejected_instance_fails_saying_why(dimse: Dimse) -> None:
    """IOCM: once a rejection note (stored here over DIMSE) rejects an instance, a
    C-STORE of it fails (PS3.4 B.2.3 Cxxx, "cannot understand": not worth a retry) with
    an Error Comment naming the note."""
    study, series, files = _ct_series(1)
    sop = str(pydicom.dcmread(io.BytesIO(files[0])).SOPInstanceUID)
    note = _dataset(rejection_note(study, new_uids()[1], [(series, sop)], "113001"))
    assoc = dimse.associate(CT, "1.2.840.10008.5.1.4.1.1.88.59")
    try:
        assert assoc.send_c_store(_dataset(files[0])).Status == 0x0000  # type: ignore[attr-defined]
        assert assoc.send_c_store(note).Status == 0x0000  # type: ignore[attr-defined]
        again = _dataset(files[0])
        again.InstanceNumber = 7  # another object under the rejected UID, still refused
        status = assoc.send_c_store(again)  # type: ignore[attr-defined]
        assert status.Status == 0xC000, status
        assert status.ErrorComment == f"rejected by note {note.SOPInstanceUID} (IHE IOCM"[:64]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    hidden = dimse.archive.http.get(f"/studies/{study}/series/{series}/instances/{sop}")
    assert hidden.status_code == 404


def test_pynetdicom_client_stores_deflated_and_several_associations_at_once(dimse: Dimse) -> None:
    """A second client (pynetdicom): four associations storing at once, one of them in
    Deflated Explicit VR Little Endian on the wire (PS3.5 A.5)."""
    study, series, files = _ct_series(24, patient_id="PAR0001")

    def send(chunk: list[bytes], syntax: str) -> list[int]:
        ae = AE(ae_title="PARALLEL")
        ae.add_requested_context(CT, [syntax])
        assoc = ae.associate("127.0.0.1", dimse.port, ae_title="PICTOR")
        assert assoc.is_established
        try:
            return [int(assoc.send_c_store(_dataset(f)).Status) for f in chunk]
        finally:
            assoc.release()

    syntaxes = [
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        "1.2.840.10008.1.2",
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(send, [files[i::4] for i in range(4)], syntaxes))
    assert all(s == 0 for chunk in results for s in chunk), results
    got = dimse.archive.http.get(f"/studies/{study}/series/{series}/instances")
    assert len(got.json()) == 24
    deflated = [
        s
        for (s,) in dimse.archive.query(
            "SELECT transfer_syntax_uid FROM instance i JOIN series se ON se.pk = i.series_pk"
            " WHERE se.series_uid = $1",
            series,
        )
    ]
    assert deflated.count(DeflatedExplicitVRLittleEndian) == 6


def _data_set_digest(path: Path) -> tuple[str, int]:
    """SHA-256 and length of a DICOM file's data set: what follows its File Meta
    Information (PS3.10 7.1), read in chunks."""
    import hashlib

    with path.open("rb") as f:
        f.seek(128 + 4 + 8)  # preamble, "DICM", (0002,0000) UL: the group's length
        f.seek(128 + 4 + 12 + int.from_bytes(f.read(4), "little"))
        digest, n = hashlib.sha256(), 0
        while chunk := f.read(1 << 22):
            digest.update(chunk)
            n += len(chunk)
    return digest.hexdigest(), n


class _SpoolWatch:
    """The largest file seen in the DIMSE spool directory while it runs."""

    def __init__(self, directory: Path) -> None:
        import threading

        self.directory = directory
        self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for entry in list(self.directory.glob("*")):
                try:
                    self.largest = max(self.largest, entry.stat().st_size)
                except FileNotFoundError:
                    pass

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.largest


def _spool_files(dimse: Dimse) -> list[Path]:
    return list((dimse.archive.data_dir / "dimse-spool").glob("*"))


def test_a_large_c_store_streams_through_a_spool_file_not_memory(dimse: Dimse) -> None:
    """Issue #20: a data set far larger than memory should hold is received into a
    spool file and streamed into the archive, so the DIMSE process's peak RSS grows by
    under 100 MB for a 300 MB instance (in memory it would grow by 300 MB at least,
    twice over when copied); the spool file is gone once the C-STORE is answered, and
    the stored data set is the one sent, byte for byte."""
    big = big_multiframe(dimse.work / "spool-big.dcm", 300 << 20)
    sop = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    [pid] = dimse.archive.process.children("app.dimse")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak RSS starts again from now
    before = status_kib(pid, "VmHWM")
    watch = _SpoolWatch(dimse.archive.data_dir / "dimse-spool")
    try:
        sent = dimse.tool("storescu", files=(str(big),))
    finally:
        largest = watch.stop()
    grown_mib = (status_kib(pid, "VmHWM") - before) / 1024
    assert sent.returncode == 0, sent.stderr
    assert grown_mib < 100, f"the DIMSE process grew by {grown_mib:.0f} MiB"
    assert largest > SPOOL_MEMORY_LIMIT  # it went through the spool file
    assert _spool_files(dimse) == []
    [(key,)] = dimse.archive.query("SELECT file_key FROM instance WHERE sop_instance_uid = $1", sop)
    stored = _data_set_digest(dimse.archive.data_dir / "storage" / key)
    assert stored == _data_set_digest(big)
    big.unlink()


def test_a_c_store_cut_off_mid_transfer_leaves_nothing(dimse: Dimse) -> None:
    """A peer that dies while sending a large data set (the association is lost, PS3.8
    9.1.4): the spool file it filled is deleted, nothing is indexed, no upload is left
    in the archive's tmp/, and the next C-STORE works."""
    big = big_multiframe(dimse.work / "spool-cut.dcm", 400 << 20)
    sop = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    tmp_before = set((dimse.archive.data_dir / "tmp").glob("*.part"))
    sender = subprocess.Popen(
        [
            str(DCMTK / "storescu"),
            "-aet",
            "TESTSCU",
            "-aec",
            "PICTOR",
            "127.0.0.1",
            str(dimse.port),
            str(big),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > SPOOL_MEMORY_LIMIT for p in _spool_files(dimse)):
            assert time.monotonic() < deadline, "the data set never reached the spool"
            assert sender.poll() is None, "storescu ended before it was cut off"
            time.sleep(0.02)
    finally:
        sender.kill()
        sender.wait(10)
    until(lambda: _spool_files(dimse) == [], 10, "the cut-off data set's spool file is deleted")
    assert dimse.archive.query("SELECT 1 FROM instance WHERE sop_instance_uid = $1", sop) == []
    assert set((dimse.archive.data_dir / "tmp").glob("*.part")) <= tmp_before
    _, _, files = _ct_series(1)
    assoc = dimse.associate(CT)
    try:
        assert assoc.send_c_store(_dataset(files[0])).Status == 0x0000  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    big.unlink()


@pytest.mark.slow
def test_a_c_store_that_would_fill_the_disk_below_the_floor_fails_with_a700(
    tmp_path: Path, pictor: Pictor
) -> None:
    """PICTOR_MIN_FREE_BYTES holds for DIMSE too: a 300 MB data set arriving with room
    for less is dropped as it arrives (its spool file deleted), the C-STORE fails with
    A700 Refused: Out of Resources (PS3.4 B.2.3) and an Error Comment saying why, nothing
    is indexed, the disk stays above the floor, and a small C-STORE then works."""
    big = big_multiframe(tmp_path / "floor-big.dcm", 300 << 20)
    sop = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    floor = shutil.disk_usage(tmp_path).free - (250 << 20)
    port = free_port()
    archive = Archive(
        pictor(
            tmp_path / "data",
            env={"PICTOR_DIMSE_PORT": str(port), "PICTOR_MIN_FREE_BYTES": str(floor)},
        )
    )
    ae = AE(ae_title="PYNETDICOM")
    # as the file is (not deflated by pynetdicom on the way: a deflate bomb is another test)
    ae.add_requested_context(MF_GRAYSCALE_WORD_SC_STORAGE, ExplicitVRLittleEndian)
    ae.add_requested_context(CT)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title="PICTOR")
    assert assoc.is_established
    lowest = shutil.disk_usage(tmp_path).free
    try:
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(assoc.send_c_store, big)
            while not sending.done():
                lowest = min(lowest, shutil.disk_usage(tmp_path).free)
                time.sleep(0.01)
            status = sending.result()
        assert status.Status == 0xA700, status
        assert "free-space floor" in status.ErrorComment
        assert lowest >= floor
        spool = tmp_path / "data" / "dimse-spool"
        assert list(spool.glob("*")) == []
        assert archive.query("SELECT 1 FROM instance WHERE sop_instance_uid = $1", sop) == []
        _, _, files = _ct_series(1)
        assert assoc.send_c_store(_dataset(files[0])).Status == 0x0000
    finally:
        assoc.release()
    big.unlink()


# -- query ------------------------------------------------------------------------------------


@dataclass
class Seeded:
    patients: dict[str, list[str]]  # patient id -> study UIDs
    series: dict[str, str]  # study -> series
    count: int  # instances per series


@pytest.fixture(scope="module")
def seeded(dimse: Dimse) -> Seeded:
    """Two patients named FINDME^*, three studies on three dates, stored with STOW."""
    plan = [
        ("FIND001", "FINDME^ALPHA", "20230105", "CT"),
        ("FIND001", "FINDME^ALPHA", "20230610", "CT"),
        ("FIND002", "FINDME^BRAVO", "20231120", "MR"),
    ]
    seeded = Seeded({}, {}, 3)
    for pid, name, date, modality in plan:
        study, series, files = _ct_series(3, patient_id=pid, patient_name=name)
        parts = []
        for f in files:
            ds = _dataset(f, StudyDate=date, SeriesDate=date, Modality=modality)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            parts.append(out.getvalue())
        assert dimse.archive.stow(multipart(parts)).status_code == 200
        seeded.patients.setdefault(pid, []).append(study)
        seeded.series[study] = series
    return seeded


def _findscu(dimse: Dimse, model: str, *keys: str) -> list[Dataset]:
    out = dimse.work / f"find-{time.monotonic_ns()}"
    out.mkdir()
    args = [model, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    done = dimse.tool("findscu", *args)
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_findscu_patient_level_patient_root(dimse: Dimse, seeded: Seeded) -> None:
    found = _findscu(
        dimse,
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "PatientName=FINDME^*",
        "PatientID",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
        "PatientBirthDate",
    )
    by_id = {str(ds.PatientID): ds for ds in found}
    assert set(by_id) == {"FIND001", "FIND002"}
    assert int(by_id["FIND001"].NumberOfPatientRelatedStudies) == 2
    assert int(by_id["FIND001"].NumberOfPatientRelatedInstances) == 6
    assert str(by_id["FIND002"].PatientName) == "FINDME^BRAVO"
    assert by_id["FIND002"].PatientBirthDate == "19700101"
    # only the requested keys come back (PS3.4 C.4.1.1.3.2)
    assert {e.keyword for e in by_id["FIND002"]} == {
        "QueryRetrieveLevel",
        "PatientName",
        "PatientID",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
        "PatientBirthDate",
    }


def test_findscu_study_level_wildcard_and_date_range_study_root(
    dimse: Dimse, seeded: Seeded
) -> None:
    found = _findscu(
        dimse,
        "-S",
        "QueryRetrieveLevel=STUDY",
        "PatientName=FIND?E^*",
        "StudyDate=20230601-20231231",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "StudyDescription",
        "RetrieveAETitle",
    )
    assert sorted(str(ds.StudyDate) for ds in found) == ["20230610", "20231120"]
    for ds in found:
        assert int(ds.NumberOfStudyRelatedInstances) == 3
        assert ds.RetrieveAETitle == "PICTOR"
        assert ds.StudyDescription == "CT CHEST SYNTHETIC"
    mr = [ds for ds in found if ds.StudyDate == "20231120"][0]
    assert mr.ModalitiesInStudy == "MR"
    assert mr.StudyInstanceUID == seeded.patients["FIND002"][0]
    # open-ended range
    early = _findscu(
        dimse, "-S", "QueryRetrieveLevel=STUDY", "PatientID=FIND001", "StudyDate=-20230131"
    )
    assert [ds.StudyInstanceUID for ds in early] == [seeded.patients["FIND001"][0]]


def test_findscu_study_level_patient_root_by_patient_id(dimse: Dimse, seeded: Seeded) -> None:
    found = _findscu(
        dimse, "-P", "QueryRetrieveLevel=STUDY", "PatientID=FIND001", "StudyInstanceUID"
    )
    assert sorted(ds.StudyInstanceUID for ds in found) == sorted(seeded.patients["FIND001"])


def test_findscu_series_and_image_levels(dimse: Dimse, seeded: Seeded) -> None:
    study = seeded.patients["FIND002"][0]
    series = _findscu(
        dimse,
        "-S",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
        "SeriesDescription",
    )
    assert len(series) == 1
    assert series[0].SeriesInstanceUID == seeded.series[study]
    assert series[0].Modality == "MR" and int(series[0].NumberOfSeriesRelatedInstances) == 3
    images = _findscu(
        dimse,
        "-S",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={seeded.series[study]}",
        "SOPInstanceUID",
        "InstanceNumber",
        "SliceLocation",
    )
    assert sorted(int(ds.InstanceNumber) for ds in images) == [1, 2, 3]
    assert all(ds.QueryRetrieveLevel == "IMAGE" and "SliceLocation" in ds for ds in images)
    # wildcard on a series attribute over all studies, matched like QIDO
    by_modality = _findscu(
        dimse, "-S", "QueryRetrieveLevel=SERIES", "Modality=M?", "SeriesInstanceUID"
    )
    assert seeded.series[study] in {ds.SeriesInstanceUID for ds in by_modality}


def test_pynetdicom_find_with_unicode_names(dimse: Dimse, seeded: Seeded) -> None:
    """pynetdicom as a second C-FIND client; a name outside ASCII comes back in UTF-8
    with Specific Character Set ISO_IR 192."""
    _, _, files = _ct_series(1, patient_id="UNI0001", patient_name="MÜLLER^JÖRG")
    assert dimse.archive.stow(multipart(files)).status_code == 200
    assoc = dimse.associate(PatientRootQueryRetrieveInformationModelFind)
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = "UNI0001"
        query.PatientName = ""
        answers = list(assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind))  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    pending = [ident for status, ident in answers if status.Status == 0xFF00]
    assert [answers[-1][0].Status] == [0x0000] and len(pending) == 1
    assert str(pending[0].PatientName) == "MÜLLER^JÖRG"
    assert pending[0].SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.parametrize(
    ("keys", "comment"),
    [
        ({"QueryRetrieveLevel": "FOO"}, "QueryRetrieveLevel"),
        ({"PatientID": "X"}, "QueryRetrieveLevel"),  # no level at all
        ({"QueryRetrieveLevel": "PATIENT"}, "Study Root has no PATIENT"),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2023-01"}, "StudyDate"),
        ({"QueryRetrieveLevel": "STUDY", "SeriesInstanceUID": "1.2.3"}, "SeriesInstanceUID"),
    ],
)
def test_malformed_find_identifiers_fail_with_a900(
    dimse: Dimse, keys: dict[str, str], comment: str
) -> None:
    assoc = dimse.associate(StudyRootQueryRetrieveInformationModelFind)
    try:
        query = Dataset()
        for key, value in keys.items():
            setattr(query, key, value)
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert len(answers) == 1
    status = answers[0][0]
    assert status.Status == 0xA900, status
    assert comment in status.ErrorComment


# -- retrieve -----------------------------------------------------------------------------------


def _received(directory: Path) -> dict[str, Dataset]:
    return {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(p) for p in directory.rglob("*") if p.is_file())
    }


def test_movescu_to_storescp_stored_syntax_or_transcoded(
    dimse: Dimse, corpus: dict[str, tuple[Path, str]]
) -> None:
    """C-MOVE a study holding a JPEG Baseline instance: DEST (uncompressed only) gets it
    decoded to Explicit VR Little Endian, DESTALL (+xa) as stored; sub-operation counts."""
    path = get_ref("SC_rgb_jpeg_dcmtk.dcm").path
    original = pydicom.dcmread(path)
    study, sop = str(original.StudyInstanceUID), str(original.SOPInstanceUID)
    assert corpus[sop][1] == JPEGBaseline8Bit
    n = len(dimse.archive.http.get(f"/studies/{study}/instances").json())
    for dest, directory, syntax in (
        ("DEST", dimse.dest_dir, ExplicitVRLittleEndian),
        ("DESTALL", dimse.all_dir, JPEGBaseline8Bit),
    ):
        done = dimse.tool(
            "movescu",
            "-v",
            "-S",
            "-aem",
            dest,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
        )
        assert done.returncode == 0, done.stderr
        assert "Received Final Move Response (Success)" in done.stderr
        # one pending response per completed sub-operation (PS3.4 C.4.2.1.4)
        assert done.stderr.count("(Pending)") == n
        got = _received(directory)[sop]
        assert got.file_meta.TransferSyntaxUID == syntax
        assert got.pixel_array.shape == original.pixel_array.shape
        if syntax == JPEGBaseline8Bit:
            assert got.PixelData == original.PixelData


def test_pynetdicom_move_statuses(dimse: Dimse, seeded: Seeded) -> None:
    """Unknown destination: A801H; a destination that does not answer: A801H; identifier
    without the level's unique key: A900H; a series to DEST: pending then success."""
    study = seeded.patients["FIND001"][0]
    assoc = dimse.associate(StudyRootQueryRetrieveInformationModelMove)
    try:

        def move(dest: str, **keys: str) -> list[Dataset]:
            query = Dataset()
            for key, value in keys.items():
                setattr(query, key, value)
            return [
                s
                for s, _ in assoc.send_c_move(
                    query, dest, StudyRootQueryRetrieveInformationModelMove
                )
            ]  # type: ignore[attr-defined]

        assert [
            s.Status for s in move("NOBODY", QueryRetrieveLevel="STUDY", StudyInstanceUID=study)
        ] == [0xA801]
        assert [
            s.Status for s in move("DOWN", QueryRetrieveLevel="STUDY", StudyInstanceUID=study)
        ] == [0xA801]
        bad = move("DEST", QueryRetrieveLevel="SERIES", StudyInstanceUID=study)
        assert bad[-1].Status == 0xA900 and "SeriesInstanceUID" in bad[-1].ErrorComment
        not_unique = move(
            "DEST", QueryRetrieveLevel="STUDY", StudyInstanceUID=study, PatientName="X*"
        )
        assert not_unique[-1].Status == 0xA900
        good = move(
            "DEST",
            QueryRetrieveLevel="SERIES",
            StudyInstanceUID=study,
            SeriesInstanceUID=seeded.series[study],
        )
        assert [s.Status for s in good] == [0xFF00] * 3 + [0x0000]
        assert (
            good[-1].NumberOfCompletedSuboperations == 3
            and good[-1].NumberOfFailedSuboperations == 0
        )
    finally:
        assoc.release()  # type: ignore[attr-defined]
    received = _received(dimse.dest_dir)
    assert all(
        s in received
        for s in [
            r["00080018"]["Value"][0]
            for r in dimse.archive.http.get(
                f"/studies/{study}/series/{seeded.series[study]}/instances"
            ).json()
        ]
    )


def test_getscu_series(dimse: Dimse, seeded: Seeded) -> None:
    study = seeded.patients["FIND002"][0]
    out = dimse.work / "get"
    out.mkdir()
    done = dimse.tool(
        "getscu",
        "-v",
        "-S",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"StudyInstanceUID={study}",
        "-k",
        f"SeriesInstanceUID={seeded.series[study]}",
    )
    assert done.returncode == 0, done.stderr
    assert "Number of Completed Suboperations : 3" in done.stderr
    got = _received(out)
    assert len(got) == 3 and all(ds.Modality == "MR" for ds in got.values())


def test_corrections_and_deletes_reach_find_get_and_move(dimse: Dimse) -> None:
    """Issue #15: after a correction C-FIND matches and returns the new values and C-GET
    / C-MOVE send Part 10 files carrying them (pixel data as stored); after a delete
    none of them sees the instances."""
    import httpx

    study, series, files = _ct_series(2, patient_id="LC-OLD", patient_name="OLD^NAME")
    archive = dimse.archive
    assert archive.stow(multipart(files)).status_code == 200
    r = httpx.post(
        f"{archive.process.base}/admin/studies/{study}/update",
        json={
            "PatientID": {"vr": "LO", "Value": ["LC-NEW"]},
            "PatientName": {"vr": "PN", "Value": [{"Alphabetic": "NEW^NAME"}]},
        },
    )
    assert r.status_code == 200, r.text
    assert _findscu(dimse, "-S", "QueryRetrieveLevel=STUDY", "PatientID=LC-OLD") == []
    [found] = _findscu(dimse, "-S", "QueryRetrieveLevel=STUDY", "PatientID=LC-NEW", "PatientName")
    assert str(found.PatientName) == "NEW^NAME" and found.StudyInstanceUID == study
    out = dimse.work / "lifecycle-get"
    out.mkdir()
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    done = dimse.tool("getscu", "-S", "-od", str(out), *keys)
    assert done.returncode == 0, done.stderr
    got = _received(out)
    assert len(got) == 2
    originals = {str(pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID): f for f in files}
    for sop, ds in got.items():
        assert ds.PatientID == "LC-NEW" and str(ds.PatientName) == "NEW^NAME"
        assert ds.PixelData == pydicom.dcmread(io.BytesIO(originals[sop])).PixelData
    done = dimse.tool("movescu", "-v", "-S", "-aem", "DEST", *keys)
    assert "Received Final Move Response (Success)" in done.stderr
    moved = {k: v for k, v in _received(dimse.dest_dir).items() if k in originals}
    assert {ds.PatientID for ds in moved.values()} == {"LC-NEW"}
    # merged into another patient: C-FIND by the target's ID finds both studies
    target_study, target_series, target_files = _ct_series(
        1, patient_id="LC-TARGET", patient_name="TARGET^PATIENT"
    )
    assert archive.stow(multipart(target_files)).status_code == 200
    merged = httpx.post(
        f"{archive.process.base}/admin/patients/merge",
        json={"source": {"PatientID": "LC-NEW"}, "target": {"PatientID": "LC-TARGET"}},
    )
    assert merged.status_code == 200, merged.text
    found = _findscu(dimse, "-S", "QueryRetrieveLevel=STUDY", "PatientID=LC-TARGET", "PatientName")
    assert sorted(ds.StudyInstanceUID for ds in found) == sorted([study, target_study])
    assert {str(ds.PatientName) for ds in found} == {"TARGET^PATIENT"}
    # deleted: C-FIND finds nothing, C-GET retrieves nothing
    assert archive.http.delete(f"/studies/{study}").status_code == 204
    assert _findscu(dimse, "-S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}") == []
    empty = dimse.work / "lifecycle-get-deleted"
    empty.mkdir()
    done = dimse.tool("getscu", "-S", "-od", str(empty), *keys)
    assert _received(empty) == {}


def test_pynetdicom_get_reencodes_for_a_peer_taking_only_jpeg2000(
    dimse: Dimse, seeded: Seeded
) -> None:
    """C-GET with the storage context offered in JPEG 2000 lossless only: the native CT
    instances are re-encoded losslessly; a compressed-only peer never gets lossy data."""
    study = seeded.patients["FIND001"][1]
    received: list[Dataset] = []

    def on_store(event: object) -> int:
        ds = event.dataset  # type: ignore[attr-defined]
        ds.file_meta = event.file_meta  # type: ignore[attr-defined]
        received.append(ds)
        return 0

    from pynetdicom import evt

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CT, ["1.2.840.10008.1.2.4.90"])
    assoc = ae.associate(
        "127.0.0.1",
        dimse.port,
        ae_title="PICTOR",
        ext_neg=[build_role(CT, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        statuses = [
            s.Status for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
        ]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000 and len(received) == 3
    for ds in received:
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
        original = pydicom.dcmread(
            io.BytesIO(
                ct_slice(
                    study,
                    seeded.series[study],
                    int(ds.InstanceNumber) - 1,
                    rows=32,
                    cols=32,
                    patient_id="FIND001",
                    patient_name="FINDME^ALPHA",
                )
            )
        )
        assert (ds.pixel_array == original.pixel_array).all()


# -- restriction ---------------------------------------------------------------------------------


def test_restricted_calling_ae_titles(tmp_path: Path, pictor: Pictor) -> None:
    """PICTOR_DIMSE_RESTRICT: an unknown calling AE title gets A-ASSOCIATE-RJ (PS3.8
    9.3.4, reason 3); a known one associates. Ctrl-C stops the DIMSE process too."""
    port = free_port()
    process = pictor(
        tmp_path / "data",
        env={
            "PICTOR_DIMSE_PORT": str(port),
            "PICTOR_DIMSE_RESTRICT": "1",
            "PICTOR_DIMSE_PEERS": f"KNOWN@127.0.0.1:{free_port()}",
        },
    )
    pids = process.children("app.dimse")
    assert len(pids) == 1

    def echo(aet: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(DCMTK / "echoscu"),
                "-v",
                "-aet",
                aet,
                "-aec",
                "PICTOR",
                "127.0.0.1",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )

    stranger = echo("STRANGER")
    assert stranger.returncode != 0
    assert (
        "Association Rejected" in stranger.stderr
        and "Calling AE Title Not Recognized" in stranger.stderr
    )
    known = echo("KNOWN")
    assert known.returncode == 0, known.stderr
    process.stop()  # Ctrl-C
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(
        psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids
    ):
        time.sleep(0.1)
    assert not any(
        psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids
    )


def test_restrict_without_peers_refuses_to_start(tmp_path: Path) -> None:
    process = PictorProcess(
        tmp_path / "data",
        env={"PICTOR_DIMSE_PORT": str(free_port()), "PICTOR_DIMSE_RESTRICT": "1"},
    )
    with pytest.raises(RuntimeError, match="PICTOR_DIMSE_PEERS is empty"):
        process.start(timeout=30)
    assert process.proc is None or process.proc.poll() is not None


def test_metrics_count_associations_operations_and_failure_reasons(dimse: Dimse) -> None:
    """Issue #19: /metrics adds DIMSE associations and operations and ingest failures by
    reason; the DIMSE process counts into the same place as the HTTP workers."""

    def metric(name: str, **labels: str) -> float:
        text = dimse.archive.http.get(f"{dimse.archive.process.base}/metrics").text
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        line = f"{name}{{{wanted}}}" if labels else name
        values = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(line + " ")]
        return sum(values)

    established = metric("pictor_dimse_associations_total", outcome="established")
    echoes = metric("pictor_dimse_operations_total", service="c-echo")
    duplicates = metric("pictor_ingest_failures_total", reason="0111")
    assert dimse.tool("echoscu").returncode == 0
    study, series = new_uids()
    original = pydicom.dcmread(io.BytesIO(ct_slice(study, series, 0, rows=16, cols=16)))
    assert (
        dimse.archive.stow(multipart([ct_slice(study, series, 0, rows=16, cols=16)])).status_code
        == 200
    )
    original.PatientName = "SOMEONE^ELSE"
    assoc = dimse.associate(CT)
    try:
        assert assoc.send_c_store(original).Status == 0x0111  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert metric("pictor_dimse_associations_total", outcome="established") >= established + 2
    assert metric("pictor_dimse_operations_total", service="c-echo") >= echoes + 1
    assert metric("pictor_ingest_failures_total", reason="0111") >= duplicates + 1
    assert (
        "pictor_dimse_connections"
        in dimse.archive.http.get(f"{dimse.archive.process.base}/metrics").text
    )
