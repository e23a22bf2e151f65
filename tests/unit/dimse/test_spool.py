"""app.dimse.spool: where pynetdicom puts a received C-STORE data set (issue #20)."""

from __future__ import annotations

import gc
import io
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import _config, dimse_messages

from app.dimse import spool as spool_module
from app.dimse.spool import Spool, data_set_head, install, prepare, release_pending


def _content(spool: Spool) -> bytes:
    with spool.chunks() as chunks:
        return b"".join(bytes(c) for c in chunks)


def test_a_small_data_set_stays_in_memory(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit=100)
    for piece in (b"a" * 40, b"b" * 60):  # exactly the limit
        spool.write(piece)
    spool.file.flush()  # what pynetdicom calls after each fragment
    assert not spool.spilled and list(tmp_path.iterdir()) == []
    assert spool.in_memory() == b"a" * 40 + b"b" * 60 and spool.size == 100
    assert _content(spool) == b"a" * 40 + b"b" * 60


def test_a_large_one_spills_to_a_file_that_close_deletes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit=100)
    pieces = [os.urandom(70) for _ in range(5)]
    for piece in pieces:
        spool.write(piece)
    assert spool.spilled and spool.in_memory() is None
    assert [p.name for p in tmp_path.iterdir()] == [Path(spool.name).name]
    assert _content(spool) == b"".join(pieces)
    assert spool.head(10) == pieces[0][:10]
    assert spool.head(5, 68) == b"".join(pieces)[68:73]
    assert spool.head(100, 340) == b"".join(pieces)[340:]  # fewer where it ends
    spool.close()
    spool.close()  # idempotent, as pynetdicom and the abort handler may both close
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        spool.write(b"x")


def test_chunks_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "READ_CHUNK", 64)
    spool = Spool(tmp_path, limit=10)
    data = os.urandom(1000)
    spool.write(data)
    with spool.chunks() as chunks:
        sizes = [len(c) for c in chunks]
    assert max(sizes) == 64 and sum(sizes) == 1000
    spool.close()


def test_a_forgotten_spool_deletes_its_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit=1)
    spool.write(b"more than one byte")
    assert len(list(tmp_path.iterdir())) == 1
    del spool
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def _with_meta(data_set: bytes) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)  # type: ignore[arg-type]
    return buffer.getvalue() + data_set


@pytest.mark.parametrize("limit", [1 << 20, 16], ids=["in memory", "spilled"])
def test_data_set_head_skips_the_file_meta(tmp_path: Path, limit: int) -> None:
    data_set = os.urandom(5000)
    spool = Spool(tmp_path, limit=limit)
    spool.write(_with_meta(data_set))
    request = SimpleNamespace(_dataset_file=spool)
    assert data_set_head(request, 100) == data_set[:100]
    assert data_set_head(request, 10_000) == data_set
    spool.close()
    # not chunked: pynetdicom's own BytesIO of the data set
    assert data_set_head(SimpleNamespace(DataSet=io.BytesIO(data_set)), 7) == data_set[:7]


def test_release_pending_closes_a_data_set_cut_off_mid_transfer(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit=1)
    spool.write(b"half a data set")
    event = SimpleNamespace(assoc=SimpleNamespace(dimse=SimpleNamespace(message=None)))
    release_pending(event)  # nothing being received: nothing happens
    event.assoc.dimse.message = SimpleNamespace(_data_set_file=spool)
    release_pending(event)
    assert list(tmp_path.iterdir()) == []


def test_prepare_empties_the_directory_and_install_hooks_pynetdicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "left-by-a-killed-process.dcm").write_bytes(b"x")
    prepare(directory)
    assert directory.is_dir() and list(directory.iterdir()) == []
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    install(directory, limit=5)
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    made = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    assert isinstance(made, Spool) and made.limit == 5
    assert Path(made.name).parent == directory


def test_association_contexts_copy_cheaply_and_still_deeply() -> None:
    """pynetdicom deep-copies the supported contexts for every association it accepts:
    with the UIDs shared (they are immutable strings) the copy is still a copy, each
    context and its list of transfer syntaxes new, holding equal values."""
    import copy

    from pydicom.uid import UID

    from app.config import Settings
    from app.dimse.server import build_ae

    contexts = build_ae(Settings()).supported_contexts  # build_ae shares UIDs in copies
    copies = copy.deepcopy(contexts)
    assert copy.deepcopy(UID("1.2.3")) == "1.2.3"
    for original, copied in zip(contexts, copies, strict=True):
        assert copied is not original
        assert copied.abstract_syntax is original.abstract_syntax  # shared, not rebuilt
        assert copied.transfer_syntax == original.transfer_syntax
        assert copied.transfer_syntax is not original.transfer_syntax
        assert (copied.scu_role, copied.scp_role) == (original.scu_role, original.scp_role)
    copies[0].transfer_syntax.append("1.2.3.4")  # a copy's changes stay its own
    assert "1.2.3.4" not in contexts[0].transfer_syntax


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_spool_refuses_to_spill_below_the_floor(tmp_path: Path) -> None:
    """The disk already at PICTOR_MIN_FREE_BYTES: nothing is written to a file, the data
    set is read and dropped, and the spool says why (its C-STORE fails with A700)."""
    spool = Spool(tmp_path, limit=100, floor=_free(tmp_path))
    for _ in range(5):
        assert spool.write(b"x" * 70) == 70
    assert spool.refused == spool_module.NO_ROOM and len(spool.refused) <= 64  # LO
    assert list(tmp_path.iterdir()) == [] and not spool.spilled and spool.size == 350
    assert spool.head(10) == b"" and spool.in_memory() is None
    spool.close()


def test_a_spool_stops_writing_when_the_disk_reaches_the_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A floor 4 MiB below today's free space, checked every MiB: the spool writes a few
    MiB, then deletes its file and drops the rest, rather than fill the disk."""
    monkeypatch.setattr(spool_module, "CHECK_EVERY", 1 << 20)
    spool = Spool(tmp_path, limit=1 << 20, floor=_free(tmp_path) - (4 << 20))
    piece = os.urandom(256 << 10)
    refused_at = None
    for n in range(1, 48):  # 12 MiB offered
        spool.write(piece)
        if spool.refused is not None and refused_at is None:
            refused_at = n * len(piece)
            assert list(tmp_path.iterdir()) == []  # what it had written is deleted
    assert refused_at is not None and (2 << 20) <= refused_at <= (6 << 20), refused_at
    assert spool.size == 47 * len(piece)
    spool.close()
