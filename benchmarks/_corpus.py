"""A deterministic, varied synthetic corpus for ``compare.py`` (Pictor vs Orthanc).

Patients with varied names (a few accented), IDs, birth dates and sexes; studies with
dates over ten years, accession numbers, descriptions, referring physicians and one to
three series of several modalities. Four groups, each ingested and measured apart:

* ``ct``: CT series of 512 x 512 16-bit slices, Explicit VR Little Endian;
* ``j2k``: CT series of the same kind of slices, JPEG 2000 lossless;
* ``mf``: multi-frame 512 x 512 16-bit instances (Multi-frame Grayscale Word SC), most
  native, one JPEG 2000 lossless;
* ``views``: single-frame images of other modalities at their native sizes, for the
  rendered rows: MR 256 x 256 16-bit, CR 2,140 x 1,760 12-bit MONOCHROME1 and US
  480 x 640 RGB, Explicit VR Little Endian;
* ``small``: many small (64 x 64 by default) single-frame instances in many studies,
  the bulk of the index for the QIDO rows.

Every instance is a complete Part-10 file built with pydicom; the same ``Spec`` and seed
always give the same bytes and UIDs. The corpus also keeps, for checking answers, every
study's searchable attributes and the exact bytes of every frame of the image groups.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import random
import sys
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synth import _ct_pixels  # noqa: E402 - the CT phantom of the other benchmarks

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "MF": "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}


def _words(text: str) -> list[str]:
    return text.split()


FAMILY = _words(
    "SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS MARTINEZ WILSON ANDERSON "
    "TAYLOR THOMAS MOORE JACKSON MARTIN LEE THOMPSON WHITE HARRIS CLARK LEWIS ROBINSON "
    "WALKER YOUNG ALLEN KING WRIGHT SCOTT HILL GREEN ADAMS NELSON BAKER HALL CAMPBELL "
    "MÜLLER SCHMIDT SCHNEIDER FISCHER WEBER MEYER WAGNER BECKER HOFFMANN KOCH RICHTER "
    "DUBOIS DURAND LEROY MOREAU LAURENT LEFÈVRE GIRARD ROSSI RUSSO FERRARI BIANCHI "
    "GONZÁLEZ RODRÍGUEZ FERNÁNDEZ LÓPEZ PÉREZ SÁNCHEZ JANSEN DE-VRIES BAKKER NOWAK "
    "KOWALSKI NOVAK SVOBODA NAGY HANSEN JENSEN NIELSEN JOHANSSON ANDERSSON NGUYEN TRAN "
    "KIM PARK CHEN WANG ZHANG SINGH PATEL KHAN IVANOV PETROV O'BRIEN MURPHY KELLY"
)
GIVEN = _words(
    "JAMES MARY JOHN PATRICIA ROBERT JENNIFER MICHAEL LINDA WILLIAM ELIZABETH DAVID "
    "BARBARA RICHARD SUSAN JOSEPH JESSICA THOMAS SARAH CHARLES KAREN ANNA MARIA PETER "
    "CLAIRE EMMA LUCAS HANNAH LENA JÖRG RENÉ HÉLÈNE JOSÉ LUCÍA ÅSA WEI MIN-JUN PRIYA OLGA"
)
REFERRING = ["SMITH^JOHN^^DR", "NGUYEN^LAN", "WEBER^KLAUS^^DR", "", "GARCIA^ANA", "KIM^JI-WOO"]
STUDY_KINDS = {  # modality of the first series -> (study descriptions, other series modalities)
    "CT": (["CT CHEST W CONTRAST", "CT HEAD W/O CONTRAST", "CT ABDOMEN PELVIS"], ["CT", "SR"]),
    "MR": (["MR BRAIN W/WO CONTRAST", "MR KNEE LEFT", "MR LUMBAR SPINE"], ["MR"]),
    "CR": (["XR CHEST PA LAT", "XR HAND LEFT"], ["CR"]),
    "DX": (["XR KNEE RIGHT 2 VIEWS", "XR PELVIS"], ["DX"]),
    "MG": (["MAMMO SCREENING BILATERAL"], ["MG"]),
    "PT": (["PET CT FDG WHOLE BODY"], ["CT"]),
    "NM": (["NM BONE SCAN WHOLE BODY"], ["NM"]),
    "US": (["US ABDOMEN COMPLETE", "US THYROID"], ["US"]),
}
KIND_WEIGHTS = {"CT": 30, "MR": 18, "CR": 18, "DX": 14, "MG": 8, "PT": 6, "NM": 6}
_FIRST_DAY = dt.date(2015, 1, 1).toordinal()
_LAST_DAY = dt.date(2024, 12, 31).toordinal()


@dataclass(frozen=True)
class Spec:
    ct_studies: int = 6
    ct_slices: int = 50
    j2k_studies: int = 4
    j2k_slices: int = 50
    mf_instances: int = 4
    mf_frames: int = 40
    mf_j2k_frames: int = 16  # one JPEG 2000 multi-frame instance (0: none)
    mr_instances: int = 30  # the views group (0: none)
    cr_instances: int = 8
    us_instances: int = 30
    small_instances: int = 3000
    small_size: int = 64
    seed: int = 7


@dataclass
class SeriesRec:
    uid: str
    modality: str
    number: int
    description: str
    instances: list[str] = field(default_factory=list)


@dataclass
class StudyRec:
    uid: str
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    date: str
    time: str
    accession: str
    description: str
    referring: str
    series: list[SeriesRec] = field(default_factory=list)

    @property
    def modalities(self) -> set[str]:
        return {s.modality for s in self.series}

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)


@dataclass
class ImageRec:
    """An instance of an image group, with what a correct WADO answer holds."""

    study: str
    series: str
    sop: str
    transfer_syntax: str
    rows: int
    cols: int
    native_frames: list[bytes]  # Explicit VR LE frame bytes
    stored_frames: list[bytes]  # the frames as stored (the J2K codestreams for J2K)
    kind: str = ""  # the series' modality


@dataclass
class Corpus:
    spec: Spec
    studies: list[StudyRec] = field(default_factory=list)
    groups: dict[str, list[bytes]] = field(default_factory=dict)  # group -> Part-10 files
    images: dict[str, list[ImageRec]] = field(default_factory=dict)  # group -> instances

    def group_bytes(self, group: str) -> int:
        return sum(map(len, self.groups[group]))


def _uid(*parts: object) -> str:
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '|'.join(map(str, parts))).int}"


def fold(text: str) -> str:
    """Upper case without accents (what a lenient name match compares)."""
    decomposed = unicodedata.normalize("NFKD", text.upper())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _view_pixels(kind: str, rows: int, cols: int, seed: int, index: int) -> bytes:
    """Pixel Data of a smooth phantom (a body with structures and a little noise, so a
    JPEG of it is of a realistic size): MR and CR unsigned 12-bit, US 8-bit RGB."""
    rng = np.random.default_rng([seed, index])
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows / 2 + 3 * index, cols / 2
    r = np.hypot((y - cy) / (rows * 0.42), (x - cx) / (cols * 0.36))
    body = np.clip(1.2 - r, 0, 1) * (0.7 + 0.3 * np.cos(x / (cols / 9)) * np.sin(y / (rows / 7)))
    noise = rng.normal(0, 0.02, (rows, cols)).astype(np.float32)
    base = np.clip(body + noise, 0, 1)
    if kind == "US":
        gray = (base * 220).astype(np.uint8)
        rgb = np.stack([gray, gray, gray], axis=-1)
        rgb[rows // 10 : rows // 10 + 12, cols // 4 : cols // 4 + 120] = (
            255,
            200,
            0,
        )  # a caliper label
        return rgb.tobytes()
    return (base * 4095).astype("<u2").tobytes()


class _Builder:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.corpus = Corpus(spec)
        self.patients: list[tuple[str, str, str, str]] = []
        self.study_count = 0

    def patient(self) -> tuple[str, str, str, str]:
        """A new patient one time in two (while few), else one seen before."""
        rng = self.rng
        if not self.patients or rng.random() < 0.55:
            family, given = rng.choice(FAMILY), rng.choice(GIVEN)
            r = rng.random()
            name = f"{family}^{given}" if r < 0.8 else f"{family}^{given}^{rng.choice(GIVEN)}"
            birth = dt.date.fromordinal(
                dt.date(1930, 1, 1).toordinal() + rng.randrange(90 * 365)
            ).strftime("%Y%m%d")
            pid = f"P{len(self.patients) + 100001:06d}{rng.choice('ABCDEFGH')}"
            self.patients.append((pid, name, birth, rng.choice("MF")))
            return self.patients[-1]
        return rng.choice(self.patients)

    def study(self, kind: str, n_series: int) -> StudyRec:
        rng = self.rng
        pid, name, birth, sex = self.patient()
        self.study_count += 1
        descriptions, others = STUDY_KINDS[kind]
        day = dt.date.fromordinal(rng.randrange(_FIRST_DAY, _LAST_DAY + 1))
        rec = StudyRec(
            uid=_uid(self.spec.seed, "study", self.study_count),
            patient_id=pid,
            patient_name=name,
            birth_date=birth,
            sex=sex,
            date=day.strftime("%Y%m%d"),
            time=f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
            accession=f"ACC{day:%y%m}{self.study_count:07d}",
            description=rng.choice(descriptions),
            referring=rng.choice(REFERRING),
        )
        for k in range(n_series):
            modality = kind if k == 0 else rng.choice(others)
            if modality == "SR":
                modality = kind
            rec.series.append(
                SeriesRec(
                    uid=_uid(rec.uid, "series", k),
                    modality=modality,
                    number=k + 1,
                    description=f"{modality} SERIES {k + 1}",
                )
            )
        self.corpus.studies.append(rec)
        return rec

    # ------------------------------------------------------------------ instances

    def header(self, st: StudyRec, se: SeriesRec, sop_class: str, rows: int, cols: int) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = sop_class
        ds.StudyDate, ds.StudyTime = st.date, st.time
        ds.SeriesDate, ds.SeriesTime = st.date, st.time
        ds.AccessionNumber = st.accession
        ds.Modality = se.modality
        ds.Manufacturer = "Pictor Synthetic"
        ds.InstitutionName = "Pictor Benchmark Hospital"
        ds.ReferringPhysicianName = st.referring
        ds.StudyDescription = st.description
        ds.SeriesDescription = se.description
        ds.PatientName = st.patient_name
        ds.PatientID = st.patient_id
        ds.PatientBirthDate = st.birth_date
        ds.PatientSex = st.sex
        ds.BodyPartExamined = "CHEST"
        ds.StudyInstanceUID = st.uid
        ds.SeriesInstanceUID = se.uid
        ds.StudyID = st.accession[-6:]
        ds.SeriesNumber = se.number
        ds.FrameOfReferenceUID = _uid(st.uid, "for")
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 1.25
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        return ds

    def instance(
        self,
        template: Dataset,
        st: StudyRec,
        se: SeriesRec,
        index: int,
        frames: list[bytes],
        j2k: bool,
    ) -> tuple[bytes, ImageRec]:
        ds = copy.deepcopy(template)
        sop = _uid(se.uid, "instance", index)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [-179.2, -179.2, -1.25 * index]
        ds.SliceLocation = -1.25 * index
        if len(frames) > 1:
            ds.NumberOfFrames = len(frames)
        ds.PixelData = b"".join(frames)
        stored = frames
        if j2k:
            ds.compress(J2K_LOSSLESS, generate_instance_uid=False)
            stored = list(generate_frames(ds.PixelData, number_of_frames=len(frames)))
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        se.instances.append(sop)
        rec = ImageRec(
            st.uid,
            se.uid,
            sop,
            str(ds.file_meta.TransferSyntaxUID),
            int(ds.Rows),
            int(ds.Columns),
            frames,
            stored,
            se.modality,
        )
        return out.getvalue(), rec

    def image_series(self, group: str, studies: int, slices: int, j2k: bool) -> None:
        files, recs = (
            self.corpus.groups.setdefault(group, []),
            self.corpus.images.setdefault(group, []),
        )
        for _ in range(studies):
            st = self.study("CT", 1)
            se = st.series[0]
            template = self.header(st, se, SOP_CLASS["CT"], 512, 512)
            template.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            seed = self.study_count
            for i in range(slices):
                data, rec = self.instance(template, st, se, i, [_ct_pixels(512, 512, seed, i)], j2k)
                files.append(data)
                recs.append(rec)

    def multiframes(self) -> None:
        spec = self.spec
        files, recs = (
            self.corpus.groups.setdefault("mf", []),
            self.corpus.images.setdefault("mf", []),
        )
        plans = [(spec.mf_frames, False)] * spec.mf_instances
        if spec.mf_j2k_frames:
            plans.append((spec.mf_j2k_frames, True))
        for n, j2k in plans:
            st = self.study("CT", 1)
            se = st.series[0]
            se.description = f"MULTIFRAME {n}"
            template = self.header(st, se, SOP_CLASS["MF"], 512, 512)
            template.ImageType = ["DERIVED", "SECONDARY"]
            template.ConversionType = "WSD"
            template.PixelRepresentation = 0
            template.FrameIncrementPointer = 0x00181063
            template.FrameTime = 40
            frames = [
                (np.frombuffer(_ct_pixels(512, 512, self.study_count, i), "<i2") + 1024)
                .astype("<u2")
                .tobytes()
                for i in range(n)
            ]
            data, rec = self.instance(template, st, se, 0, frames, j2k)
            files.append(data)
            recs.append(rec)

    def views(self) -> None:
        """The ``views`` group: MR, CR and US single frames (see the module's docstring)."""
        spec = self.spec
        files, recs = (
            self.corpus.groups.setdefault("views", []),
            self.corpus.images.setdefault("views", []),
        )
        for kind, count in (
            ("MR", spec.mr_instances),
            ("CR", spec.cr_instances),
            ("US", spec.us_instances),
        ):
            if not count:
                continue
            st = self.study(kind, 1)
            se = st.series[0]
            se.modality = kind
            rows, cols = {"MR": (256, 256), "CR": (2140, 1760), "US": (480, 640)}[kind]
            template = self.header(st, se, SOP_CLASS[kind], rows, cols)
            template.ImageType = ["ORIGINAL", "PRIMARY"]
            if kind == "MR":
                template.PixelRepresentation = 0
                template.WindowCenter, template.WindowWidth = 600, 1200
                del template.RescaleIntercept, template.RescaleSlope
            elif kind == "CR":
                template.PhotometricInterpretation = "MONOCHROME1"
                template.PixelRepresentation = 0
                template.WindowCenter, template.WindowWidth = 2048, 4096
                template.PixelSpacing = [0.2, 0.2]
            else:
                for keyword in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope"):
                    delattr(template, keyword)
                template.SamplesPerPixel = 3
                template.PhotometricInterpretation = "RGB"
                template.PlanarConfiguration = 0
                template.BitsAllocated, template.BitsStored, template.HighBit = 8, 8, 7
                template.PixelRepresentation = 0
            seed = self.study_count
            for i in range(count):
                data, rec = self.instance(
                    template, st, se, i, [_view_pixels(kind, rows, cols, seed, i)], False
                )
                files.append(data)
                recs.append(rec)

    def small(self) -> None:
        spec, rng = self.spec, self.rng
        files = self.corpus.groups.setdefault("small", [])
        size = spec.small_size
        pixels = [_ct_pixels(size, size, 1, i) for i in range(50)]
        left = spec.small_instances
        kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
        while left > 0:
            kind = rng.choices(kinds, weights)[0]
            st = self.study(kind, rng.choice([1, 1, 2, 2, 3]))
            for se in st.series:
                count = min(left, rng.randrange(1, 13) if kind in ("CT", "MR", "PT") else 2)
                if count <= 0:
                    break
                template = self.header(st, se, SOP_CLASS[se.modality], size, size)
                for i in range(count):
                    data, _ = self.instance(template, st, se, i, [pixels[i % 50]], False)
                    files.append(data)
                left -= count
            st.series = [s for s in st.series if s.instances]


def build(spec: Spec) -> Corpus:
    """The corpus of ``spec`` (deterministic)."""
    b = _Builder(spec)
    b.image_series("ct", spec.ct_studies, spec.ct_slices, False)
    b.image_series("j2k", spec.j2k_studies, spec.j2k_slices, True)
    b.multiframes()
    b.small()
    b.views()  # last: the other groups keep the bytes and UIDs they had before it
    return b.corpus


def warmup(spec: Spec, count: int = 20) -> list[bytes]:
    """CT slices of a study that no benchmark query matches (patient ZZWARMUP, 1999),
    stored before measuring so that neither server's first row pays its cold start."""
    b = _Builder(Spec(seed=spec.seed + 1000))
    b.image_series("ct", 1, count, False)
    files = []
    for data in b.corpus.groups["ct"]:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PatientID, ds.PatientName, ds.StudyDate = "ZZWARMUP", "ZZWARMUP^BENCH", "19990101"
        ds.AccessionNumber = "ZZWARMUP"
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        files.append(out.getvalue())
    return files
