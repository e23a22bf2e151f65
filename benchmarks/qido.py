"""QIDO-RS search latency on a seeded index of 100,000 studies / 1,000,000 instances.

Usage: python benchmarks/qido.py [--seed-dir DIR [--keep]] [--studies 100000]
       [--instances 1000000] [--requests 2000 | --seconds S] [--clients 16] [--explain]

1. Seeding. ``--seed-dir`` holds a Pictor data directory (default: a temporary one,
   removed at the end unless ``--keep``). If it is not seeded yet (no ``seeded.json``),
   a server is started once to create the schema, then the index is filled directly in
   its PostgreSQL (no DICOM files): ``--studies`` studies of about 40,000 patients
   (many with several studies; accented and multi-word names), ~3 series per study,
   ``--instances`` instances, with every column, DICOM JSON fragment, aggregate and
   fuzzy-matching word row as ingest would write them. Deterministic (``--seed``);
   rows go in with binary COPY. Then ANALYZE and VACUUM (ANALYZE).
2. Load. A fresh ``pictor serve`` (default workers) on the seeded directory; ``--clients``
   keep-alive clients in this process send, query type after query type, ``--requests``
   requests each (after a short warm-up), with values drawn from the seeded data:
   (a) PatientID, (b) PatientName prefix wildcard, (c) StudyDate range +
   ModalitiesInStudy, (d) AccessionNumber, (e) a study's series, (f) a series'
   instances, (g) OHIF's study list request, (h) includefield=all&limit=100,
   (i) fuzzy PatientName. Every answer must be 200 with a JSON array holding exactly
   the results the seeded data says (count, Warning header when more exist, every
   result matching the query, and the first page's order for (g) and (h)): a fast wrong
   answer does not count. Client-side latency p50 / p95 / p99 and requests/s per type,
   against the targets (p95 < 25 ms; OHIF study list p95 < 50 ms); server and
   PostgreSQL CPU seconds during each type.
3. ``--explain``: EXPLAIN (ANALYZE, BUFFERS) of the SQL the compiler produces for one
   example of each type, on the seeded database, as a generic plan (plan_cache_mode =
   force_generic_plan: what the server's cached prepared statements may use).

Results are also written to benchmarks/results/qido.json.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime as dt
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import asyncpg
import msgspec
import psutil
import uvloop

from app.dicom.levels import name_words
from app.index.compiler import compile_query
from app.index.database import json_codecs
from app.index.query import DEFAULT_LIMIT, Level, parse_query

from _client import Connection
from conftest import embedded_dsn
from server import PictorProcess, postmaster_pid, stop_postgres

#: the server over a seeded index: its rows have no files, so the fixity scrub would
#: find every one missing (and log it) while the searches are measured
SEEDED = {"PICTOR_SCRUB_RATE": "0"}

# --------------------------------------------------------------------------------------
# Names and vocabularies
# --------------------------------------------------------------------------------------

_FAMILY_TEXT = """
MÜLLER SCHMIDT SCHNEIDER FISCHER WEBER MEYER WAGNER BECKER SCHULZ HOFFMANN SCHÄFER KOCH
BAUER RICHTER KLEIN WOLF SCHRÖDER NEUMANN SCHWARZ ZIMMERMANN BRAUN KRÜGER HOFMANN HARTMANN
LANGE SCHMITT WERNER KRAUSE MEIER LEHMANN KÖHLER HERRMANN KÖNIG WALTER HUBER KAISER FUCHS
PETERS SCHOLZ MÖLLER WEISS JUNG HAHN VOGEL KELLER GÜNTHER BERGER WINKLER ROTH LORENZ
BAUMANN ALBRECHT SCHUSTER BÖHM WINTER KRAUS SCHUMACHER KRÄMER VOGT JÄGER SOMMER GROSS
SEIDEL BRANDT HAAS SCHREIBER ZIEGLER KÜHN POHL ENGEL HORN BUSCH BERGMANN PFEIFFER
GARCÍA FERNÁNDEZ GONZÁLEZ RODRÍGUEZ LÓPEZ MARTÍNEZ SÁNCHEZ PÉREZ GÓMEZ JIMÉNEZ RUIZ
HERNÁNDEZ DÍAZ MORENO MUÑOZ ÁLVAREZ ROMERO ALONSO GUTIÉRREZ NAVARRO TORRES DOMÍNGUEZ
VÁZQUEZ RAMOS GIL RAMÍREZ SERRANO BLANCO MOLINA MORALES SUÁREZ ORTEGA DELGADO CASTRO ORTIZ
RUBIO MARÍN SANZ NÚÑEZ IGLESIAS MEDINA GARRIDO CORTÉS CASTILLO LOZANO GUERRERO CANO PRIETO
MÉNDEZ CRUZ
MARTIN BERNARD DUBOIS THOMAS ROBERT RICHARD PETIT DURAND LEROY MOREAU SIMON LAURENT
LEFÈVRE MICHEL FRANÇOIS MERCIER DUPONT LAMBERT BONNET FONTAINE ROUSSEAU VINCENT MULLER
FAURE ANDRÉ GIRARD CHEVALIER BOYER GAUTHIER PERRIN MOREL CLÉMENT HÉBERT GARNIER
ÅSTRÖM JOHANSSON ANDERSSON KARLSSON NILSSON ERIKSSON LARSSON OLSSON PERSSON SVENSSON
GUSTAFSSON LINDSTRÖM LINDQVIST BJÖRK ÅBERG SJÖBERG HANSEN JENSEN NIELSEN PEDERSEN SØRENSEN
JØRGENSEN MØLLER KORHONEN VIRTANEN MÄKINEN NIEMINEN HÄMÄLÄINEN LAINE
NOWAK KOWALSKI WIŚNIEWSKI WÓJCIK KOWALCZYK KAMIŃSKI LEWANDOWSKI ZIELIŃSKI SZYMAŃSKI
WOŹNIAK DĄBROWSKI ŁUKASZEWICZ NOVÁK SVOBODA NOVOTNÝ DVOŘÁK ČERNÝ PROCHÁZKA KUČERA VESELÝ
HORVÁTH NAGY KOVÁCS TÓTH SZABÓ
YILMAZ KAYA DEMİR ŞAHİN ÇELİK YILDIZ ÖZTÜRK AYDIN ÖZDEMİR ARSLAN DOĞAN KILIÇ
JANSEN BAKKER JANSSEN VISSER SMIT MEIJER MULDER BOS VOS HENDRIKS DEKKER BROUWER
SILVA SANTOS FERREIRA PEREIRA OLIVEIRA COSTA RODRIGUES MARTINS SOUSA FERNANDES GONÇALVES
GOMES LOPES MARQUES ALVES ALMEIDA RIBEIRO PINTO CARVALHO
ROSSI RUSSO FERRARI ESPOSITO BIANCHI ROMANO COLOMBO RICCI MARINO GRECO BRUNO GALLO CONTI
MANCINI GIORDANO RIZZO LOMBARDI MORETTI
SMITH JOHNSON WILLIAMS BROWN JONES MILLER DAVIS WILSON ANDERSON TAYLOR MOORE JACKSON WHITE
HARRIS THOMPSON CLARK LEWIS WALKER HALL YOUNG KING WRIGHT SCOTT GREEN BAKER ADAMS NELSON
HILL CAMPBELL MITCHELL O'BRIEN O'CONNOR MURPHY KELLY BYRNE RYAN MCCARTHY MACDONALD
SMITH-JONES NGUYEN TRAN PHAM KIM LEE PARK CHEN WANG LI ZHANG LIU SINGH KUMAR PATEL SHAH
KHAN ALI AHMED HASSAN IVANOV PETROV SMIRNOV KUZNETSOV POPESCU IONESCU PAPADOPOULOS
"""
FAMILY_NAMES = list(dict.fromkeys(_FAMILY_TEXT.split())) + [
    # multi-word family names
    "DE LA CRUZ",
    "DEL RÍO",
    "GARCÍA LÓPEZ",
    "FERNÁNDEZ DE CÓRDOBA",
    "VAN DEN BERG",
    "VAN DIJK",
    "DE JONG",
    "DE VRIES",
    "VAN DER MEER",
    "DE BOER",
    "DE GROOT",
    "VAN LEEUWEN",
    "DOS SANTOS",
    "DA SILVA",
    "DE LUCA",
    "LE GALL",
    "VON BÜLOW",
    "ST. JOHN",
]

_GIVEN_TEXT = """
JOHN MARY JAMES PATRICIA ROBERT JENNIFER MICHAEL LINDA WILLIAM ELIZABETH DAVID BARBARA
RICHARD SUSAN JOSEPH JESSICA THOMAS SARAH CHARLES KAREN PETER ANNA MARIA ANNE CLAIRE EMMA
OLIVIA NOAH LIAM SOPHIE LAURA PAUL MARK LUCAS LEON FELIX JONAS LUKAS MAX HANNAH LEA LENA
JÖRG JÜRGEN UWE KLAUS DIETER GÜNTER BÄRBEL SÖREN BJÖRN ÅSA INGRID LARS SIGRÍÐUR ZOË NOÉMIE
ANDRÉ RENÉ ÉMILE HÉLÈNE CÉLINE FRANÇOIS JÉRÔME AGNÈS ÁLVARO SEBASTIÁN LUCÍA INÉS JOSÉ JOÃO
CONCEIÇÃO ŁUKASZ MAŁGORZATA KRZYSZTOF AGNIESZKA JIŘÍ ZDENĚK MEHMET AYŞE ÇAĞLA FATMA EMINE
MUSTAFA AHMET ALI OMAR YUSUF FATIMA AISHA WEI LEI MING HUA MIN-JUN JI-WOO HIROSHI YUKI
PRIYA RAHUL ARJUN ANIKA IVAN OLGA NATALIA DMITRI SERGEI TATIANA GIORGIO FRANCESCA GIULIA
MATTEO ALESSANDRO CHIARA SOFIA ELENA CARLOS CARMEN PABLO JAVIER DIEGO ISABEL PILAR
MARTA PEDRO RAFAEL GABRIEL SAMUEL DANIEL NATHAN LOUIS JULES ARTHUR HUGO CAMILLE MANON
CHLOÉ INÈS LÉA JULIE THÉO ELLA MIA NORA FREYA ASTRID SVEN NILS ERIK MAGNUS KAJSA LIV
MAJA MILOŠ DRAGAN ZORAN SAOIRSE SEÁN SIOBHÁN NIAMH CIARÁN AOIFE EOIN
"""
GIVEN_NAMES = list(dict.fromkeys(_GIVEN_TEXT.split())) + [
    "ANNA-LENA",
    "JEAN-PIERRE",
    "MARIE-CLAIRE",
    "JOSÉ LUIS",
    "MARÍA JOSÉ",
    "ANNA MARIA",
]

INSTITUTIONS = [
    "GENERAL HOSPITAL",
    "UNIVERSITÄTSKLINIKUM NORD",
    "HÔPITAL SAINT-LOUIS",
    "HOSPITAL UNIVERSITARIO LA PAZ",
    "CITY IMAGING CENTER",
    "SJUKHUSET SÖDER",
]
MANUFACTURERS = {
    "CT": [
        ("SIEMENS", "SOMATOM Force"),
        ("GE MEDICAL SYSTEMS", "Revolution CT"),
        ("Philips", "iCT 256"),
        ("CANON_MEC", "Aquilion ONE"),
    ],
    "MR": [
        ("SIEMENS", "MAGNETOM Vida"),
        ("GE MEDICAL SYSTEMS", "SIGNA Premier"),
        ("Philips", "Ingenia 3.0T"),
    ],
    "CR": [("FUJIFILM Corporation", "FCR PROFECT"), ("Agfa", "CR 30-X")],
    "DX": [
        ("Carestream Health", "DRX-Evolution"),
        ("SIEMENS", "Ysio Max"),
        ("Philips", "DigitalDiagnost"),
    ],
    "US": [("GE Healthcare", "LOGIQ E10"), ("Philips", "EPIQ 7G"), ("SIEMENS", "ACUSON Sequoia")],
    "MG": [("HOLOGIC, Inc.", "Selenia Dimensions"), ("SIEMENS", "MAMMOMAT Revelation")],
    "XA": [("SIEMENS", "AXIOM-Artis"), ("Philips", "Azurion 7")],
    "NM": [("GE MEDICAL SYSTEMS", "Discovery NM/CT 670"), ("SIEMENS", "Symbia Intevo")],
    "PT": [("SIEMENS", "Biograph Vision"), ("GE MEDICAL SYSTEMS", "Discovery MI")],
    "SR": [("PICTOR", "Reporting")],
    "KO": [("PICTOR", "Viewer")],
    "PR": [("PICTOR", "Viewer")],
    "SEG": [("PICTOR", "Segmentation")],
    "OT": [("PICTOR", "Scanner")],
}

# (SOP Class UID, transfer syntax choices, image: (rows/columns choices, bits allocated,
#  bits stored, samples per pixel, photometric) or None)
EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
JPEG_LOSSLESS, JPEG_BASELINE = "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.50"
SOP = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "US-MF": "1.2.840.10008.5.1.4.1.1.3.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "SR": "1.2.840.10008.5.1.4.1.1.88.22",
    "SR-DOSE": "1.2.840.10008.5.1.4.1.1.88.67",
    "SR-CAD": "1.2.840.10008.5.1.4.1.1.88.50",
    "KO": "1.2.840.10008.5.1.4.1.1.88.59",
    "PR": "1.2.840.10008.5.1.4.1.1.11.1",
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",
    "OT": "1.2.840.10008.5.1.4.1.1.7",
    "OT-PDF": "1.2.840.10008.5.1.4.1.1.104.1",
}
IMAGE = {  # (rows, columns) choices, bits allocated, bits stored, samples, photometric
    "CT": ([(512, 512)], 16, 12, 1, "MONOCHROME2"),
    "MR": ([(256, 256), (320, 320), (384, 384), (512, 512)], 16, 12, 1, "MONOCHROME2"),
    "CR": ([(2140, 1760), (2500, 2048), (2964, 2364)], 16, 12, 1, "MONOCHROME1"),
    "DX": ([(3000, 3000), (2836, 2336), (4288, 3524)], 16, 14, 1, "MONOCHROME2"),
    "US": ([(600, 800), (768, 1024), (480, 640)], 8, 8, 3, "YBR_FULL_422"),
    "MG": ([(3328, 2560), (4096, 3328)], 16, 14, 1, "MONOCHROME2"),
    "XA": ([(512, 512), (1024, 1024)], 8, 8, 1, "MONOCHROME2"),
    "NM": ([(128, 128), (256, 256)], 16, 16, 1, "MONOCHROME2"),
    "PT": ([(128, 128), (200, 200), (256, 256)], 16, 16, 1, "MONOCHROME2"),
    "SEG": ([(512, 512)], 1, 1, 1, "MONOCHROME2"),
    "OT": ([(512, 512), (1024, 768)], 8, 8, 3, "RGB"),
}

CT_EXAMS = [
    ("CT HEAD W/O CONTRAST", "HEAD"),
    ("CT CHEST W CONTRAST", "CHEST"),
    ("CT ABDOMEN PELVIS W CONTRAST", "ABDOMEN"),
    ("CT CHEST ABDOMEN PELVIS", "CHEST"),
    ("CT ANGIO PULMONARY", "CHEST"),
    ("CT LUMBAR SPINE", "LSPINE"),
    ("CT SINUS", "HEAD"),
    ("CT THORAX LOW DOSE", "CHEST"),
    ("CT KIDNEY STONE", "ABDOMEN"),
]
MR_EXAMS = [
    ("MR BRAIN W/WO CONTRAST", "BRAIN"),
    ("MR KNEE LEFT", "KNEE"),
    ("MR LUMBAR SPINE", "LSPINE"),
    ("MR SHOULDER RIGHT", "SHOULDER"),
    ("MR PROSTATE", "PROSTATE"),
    ("MR CARDIAC", "HEART"),
    ("MR LIVER", "ABDOMEN"),
    ("MR CERVICAL SPINE", "CSPINE"),
]
XR_EXAMS = [
    ("XR CHEST PA LAT", "CHEST"),
    ("XR HAND LEFT", "HAND"),
    ("XR KNEE RIGHT 2 VIEWS", "KNEE"),
    ("XR PELVIS", "PELVIS"),
    ("XR LUMBAR SPINE", "LSPINE"),
    ("XR ANKLE LEFT", "ANKLE"),
    ("XR ABDOMEN", "ABDOMEN"),
    ("XR CHEST PORTABLE", "CHEST"),
    ("XR SHOULDER RIGHT", "SHOULDER"),
]
US_EXAMS = [
    ("US ABDOMEN COMPLETE", "ABDOMEN"),
    ("US PELVIS TRANSVAGINAL", "PELVIS"),
    ("US THYROID", "NECK"),
    ("US OB 2ND TRIMESTER", "ABDOMEN"),
    ("ECHO TRANSTHORACIC", "HEART"),
    ("US DOPPLER LEG VEINS", "LEG"),
    ("US BREAST RIGHT", "BREAST"),
]
MG_EXAMS = [
    ("MAMMO SCREENING BILATERAL", "BREAST"),
    ("MAMMO DIAGNOSTIC LEFT", "BREAST"),
    ("TOMOSYNTHESIS BILATERAL", "BREAST"),
]
XA_EXAMS = [
    ("CORONARY ANGIOGRAPHY", "HEART"),
    ("PCI", "HEART"),
    ("CEREBRAL ANGIOGRAPHY", "HEAD"),
    ("PERIPHERAL ANGIOGRAPHY", "LEG"),
]
NM_EXAMS = [
    ("NM BONE SCAN WHOLE BODY", "WHOLEBODY"),
    ("NM MYOCARDIAL PERFUSION", "HEART"),
    ("NM THYROID SCAN", "THYROID"),
]
PET_EXAMS = [("PET CT FDG WHOLE BODY", "WHOLEBODY"), ("PET CT PSMA", "WHOLEBODY")]
OT_EXAMS = [("OUTSIDE IMAGES", None), ("SCANNED DOCUMENTS", None), ("PHOTO DERMATOLOGY", "SKIN")]
CT_SERIES = [
    ("AXIAL 5MM", 60),
    ("AXIAL 1MM", 350),
    ("CORONAL 3MM", 110),
    ("SAGITTAL 3MM", 110),
    ("AXIAL 2MM BONE", 180),
    ("MIP 10MM", 40),
]
MR_SERIES = [
    "T1 SAG",
    "T2 AX",
    "FLAIR AX",
    "DWI",
    "ADC",
    "T1 POST GD AX",
    "PD FS COR",
    "T2 TSE SAG",
    "T1 VIBE",
    "SWI",
]

# study kinds: (kind, weight). The primary modalities' shares of studies follow a
# general hospital's mix; SR / KO / PR / SEG come as add-ons below.
KINDS = [
    ("CR", 18),
    ("DX", 13),
    ("CT", 21),
    ("MR", 13),
    ("US", 12),
    ("MG", 7),
    ("XA", 3),
    ("NM", 3),
    ("PTCT", 2),
    ("OT", 2),
    ("SR", 1),
]


# --------------------------------------------------------------------------------------
# Seed data generation
# --------------------------------------------------------------------------------------


def _a(vr: str, *values: Any) -> dict[str, Any]:
    """A DICOM JSON attribute; no value (or None) gives an empty attribute."""
    if not values or values[0] is None:
        return {"vr": vr}
    return {"vr": vr, "Value": list(values)}


def _pn(name: str | None) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]} if name else {"vr": "PN"}


def _uid(rng: random.Random) -> str:
    return f"2.25.{rng.getrandbits(127) | (1 << 126)}"  # 38 digits, no leading zero


_START = dt.date(2010, 1, 1).toordinal()
_END = dt.date(2025, 12, 31).toordinal()


def _da(ordinal: int) -> str:
    return dt.date.fromordinal(ordinal).strftime("%Y%m%d")


@dataclass
class Patient:
    name: str
    pid: str
    issuer: str | None
    birth: int  # ordinal
    sex: str | None


@dataclass
class SeriesPlan:
    modality: str
    description: str
    body_part: str | None
    raw: float  # relative size before scaling to the instance total
    fixed: bool  # not scaled (reports, key objects, presentation states)
    variant: str = ""  # "DOSE", "CAD", "PDF"
    count: int = 0


@dataclass
class StudyPlan:
    patient: Patient
    date: int
    time: str
    description: str
    referring: str | None
    series: list[SeriesPlan]
    accession: str | None = None
    order_key: float = 0.0


def make_patients(rng: random.Random, n: int) -> list[Patient]:
    families = FAMILY_NAMES[:]
    rng.shuffle(families)
    # Zipf-like: a few family names are common (as MÜLLER or GARCÍA are), most are rare
    weights = [1 / (r + 1) ** 0.5 for r in range(len(families))]
    fam = rng.choices(families, weights=weights, k=n)
    ids = rng.sample(range(1, 10_000_000), n)
    patients = []
    for i in range(n):
        family, given = fam[i], rng.choice(GIVEN_NAMES)
        r = rng.random()
        if r < 0.04:
            family = f"{family}-{rng.choices(families, weights=weights)[0]}"
        r = rng.random()
        if r < 0.80:
            name = f"{family}^{given}"
        elif r < 0.92:
            name = f"{family}^{given}^{rng.choice(GIVEN_NAMES)}"
        elif r < 0.96:
            name = f"{family}^{given}^{rng.choice('ABCDEFGHJKLMNPRSTW')}."
        elif r < 0.98:
            name = f"{family}^{given}^^^{rng.choice(['JR', 'SR', 'III'])}"
        elif r < 0.99:
            name = f"{family}^{given}^^{rng.choice(['DR', 'PROF'])}"
        else:
            name = family
        age = min(102, max(0, int(rng.gauss(56, 21))))
        birth = dt.date(2018 - age, 1, 1).toordinal() + rng.randrange(365)
        sex = rng.choices(["M", "F", "O", None], weights=[48, 50, 1, 1])[0]
        issuer = rng.choices(["HOSP-A", "HOSP-B", None], weights=[70, 20, 10])[0]
        patients.append(Patient(name, f"PAT{ids[i]:07d}", issuer, birth, sex))
    return patients


def plan_study(rng: random.Random, kind: str) -> tuple[str, str | None, list[SeriesPlan]]:
    """Description, body part and series of a study of ``kind``."""
    S = SeriesPlan
    series: list[SeriesPlan] = []
    desc: str
    body: str | None
    lu = rng.lognormvariate
    if kind == "CT":
        desc, body = rng.choice(CT_EXAMS)
        series.append(S("CT", "TOPOGRAM", body, rng.choice([1, 1, 2]), False))
        for name, size in rng.sample(CT_SERIES, rng.choice([1, 2, 2, 3, 4])):
            series.append(S("CT", name, body, size * lu(0, 0.35), False))
        if rng.random() < 0.35:
            series.append(S("SR", "DOSE REPORT", body, 1, True, "DOSE"))
        if rng.random() < 0.03:
            series.append(S("SEG", "AI SEGMENTATION", body, 1, True))
    elif kind == "MR":
        desc, body = rng.choice(MR_EXAMS)
        series.append(S("MR", "LOCALIZER", body, 3, False))
        for name in rng.sample(MR_SERIES, rng.randint(2, 7)):
            series.append(S("MR", name, body, 25 * lu(0.6, 0.6), False))
        if rng.random() < 0.01:
            series.append(S("SEG", "AI SEGMENTATION", body, 1, True))
    elif kind in ("CR", "DX"):
        desc, body = rng.choice(XR_EXAMS)
        for i in range(rng.choice([1, 1, 2, 2, 3])):
            series.append(
                S(kind, ["PA", "LAT", "AP", "OBLIQUE"][i], body, rng.choice([1, 1, 2]), False)
            )
    elif kind == "US":
        desc, body = rng.choice(US_EXAMS)
        for i in range(rng.choice([1, 1, 2])):
            series.append(S("US", ["IMAGES", "CINE CLIPS"][i], body, 20 * lu(0, 0.6), False))
        if rng.random() < 0.25:
            series.append(S("SR", "MEASUREMENTS", body, 1, True))
    elif kind == "MG":
        desc, body = rng.choice(MG_EXAMS)
        series.append(S("MG", "MAMMO 4 VIEWS", body, 4, False))
        if desc.startswith("TOMO"):
            series.append(S("MG", "TOMO PROJECTIONS", body, 30, False))
        if rng.random() < 0.5:
            series.append(S("SR", "CAD REPORT", body, 1, True, "CAD"))
    elif kind == "XA":
        desc, body = rng.choice(XA_EXAMS)
        for i in range(rng.randint(2, 8)):
            series.append(S("XA", f"RUN {i + 1}", body, rng.choice([1, 1, 2, 3]), False))
        if rng.random() < 0.5:
            series.append(S("SR", "DOSE REPORT", body, 1, True, "DOSE"))
    elif kind == "NM":
        desc, body = rng.choice(NM_EXAMS)
        for name in rng.sample(["ANTERIOR", "POSTERIOR", "SPECT", "RECON"], rng.randint(1, 4)):
            series.append(S("NM", name, body, rng.choice([1, 1, 2, 3]), False))
    elif kind == "PTCT":
        desc, body = rng.choice(PET_EXAMS)
        series.append(S("CT", "TOPOGRAM", body, 1, False))
        series.append(S("CT", "CT AC 3MM", body, 300 * lu(0, 0.2), False))
        series.append(S("PT", "PET AC", body, 300 * lu(0, 0.2), False))
        series.append(S("PT", "PET NAC", body, 300 * lu(0, 0.2), False))
        if rng.random() < 0.3:
            series.append(S("SR", "DOSE REPORT", body, 1, True, "DOSE"))
    elif kind == "OT":
        desc, body = rng.choice(OT_EXAMS)
        for _ in range(rng.choice([1, 1, 2])):
            pdf = rng.random() < 0.4
            series.append(
                S(
                    "OT",
                    "DOCUMENT" if pdf else "SECONDARY CAPTURE",
                    body,
                    1 if pdf else rng.randint(1, 6),
                    pdf,
                    "PDF" if pdf else "",
                )
            )
    else:  # SR
        desc, body = "OUTSIDE REPORT", None
        series.append(S("SR", "REPORT", None, 1, True))
    # add-ons: key object selections and presentation states of viewers
    if kind in ("CT", "MR", "MG", "PTCT") and rng.random() < 0.05:
        series.append(S("KO", "KEY IMAGES", body, 1, True))
    if kind in ("CR", "DX", "MR", "MG", "CT") and rng.random() < 0.08:
        series.append(S("PR", "ANNOTATIONS", body, rng.choice([1, 1, 1, 2]), True))
    return desc, body, series


def scale_counts(rng: random.Random, plans: list[StudyPlan], target: int) -> None:
    """Instance counts of every series so that they sum to ``target`` exactly: scalable
    series get max(1, round(raw * f)) with f found by bisection, then +-1 here and there."""
    scalable = [s for p in plans for s in p.series if not s.fixed]
    fixed_total = 0
    for p in plans:
        for s in p.series:
            if s.fixed:
                s.count = int(s.raw)
                fixed_total += s.count
    dither = [rng.random() for _ in scalable]
    raws = [s.raw for s in scalable]
    want = target - fixed_total

    def total(f: float) -> int:
        return sum(max(1, int(r * f + u)) for r, u in zip(raws, dither))

    low, high = 0.0, 1.0
    while total(high) < want and high < 1e6:
        high *= 2
    for _ in range(40):
        mid = (low + high) / 2
        if total(mid) < want:
            low = mid
        else:
            high = mid
    for s, r, u in zip(scalable, raws, dither):
        s.count = max(1, int(r * high + u))
    diff = want - sum(s.count for s in scalable)
    while diff != 0:
        s = scalable[rng.randrange(len(scalable))]
        if diff > 0:
            s.count += 1
            diff -= 1
        elif s.count > 1:
            s.count -= 1
            diff += 1


def plan_all(rng: random.Random, n_studies: int, n_instances: int) -> list[StudyPlan]:
    n_patients = min(n_studies, max(1, round(n_studies * 0.4)))
    patients = make_patients(rng, n_patients)
    # every patient has a study; the others go to patients with a heavy-tailed weight
    # (follow-ups, oncology patients with dozens of studies)
    weights = [min(60.0, rng.paretovariate(1.3)) for _ in patients]
    owners = list(range(n_patients)) + rng.choices(
        range(n_patients), weights=weights, k=n_studies - n_patients
    )
    physicians = [f"{rng.choice(FAMILY_NAMES)}^{rng.choice(GIVEN_NAMES)}" for _ in range(150)]
    kinds, kind_weights = zip(*KINDS)
    hours = list(range(24))
    hour_weights = [1, 1, 1, 1, 1, 1, 2, 5, 10, 12, 12, 11, 8, 10, 11, 10, 9, 6, 4, 3, 2, 2, 1, 1]
    plans = []
    for owner in owners:
        patient = patients[owner]
        first = max(_START, patient.birth)
        date = rng.randint(first, max(first, _END))
        time_ = f"{rng.choices(hours, hour_weights)[0]:02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        if rng.random() < 0.2:
            time_ += f".{rng.randrange(1000000):06d}"
        kind = rng.choices(kinds, kind_weights)[0]
        desc, _body, series = plan_study(rng, kind)
        referring = rng.choice(physicians) if rng.random() < 0.9 else None
        plans.append(StudyPlan(patient, date, time_, desc, referring, series))
    # accession numbers follow the order of the studies (gaps: cancelled orders)
    by_date = sorted(plans, key=lambda p: (p.date, p.time))
    number = 1000
    for p in by_date:
        number += rng.randint(1, 20)
        p.accession = f"ACC{number:08d}" if rng.random() >= 0.02 else None
    # row order: mostly as the studies happen; 15% arrive late (priors, migrations)
    for p in plans:
        p.order_key = (
            p.date + rng.random() if rng.random() >= 0.15 else rng.uniform(_START, _END + 365)
        )
    plans.sort(key=lambda p: p.order_key)
    scale_counts(rng, plans, n_instances)
    return plans


_json = msgspec.json.Encoder().encode


def _encode(obj: dict[str, Any]) -> bytes:
    """DICOM JSON with the attributes in tag order and "vr" first, as ingest writes it."""
    return _json(dict(sorted(obj.items())))


@dataclass
class Chunk:
    study: list[tuple[Any, ...]] = field(default_factory=list)
    series: list[tuple[Any, ...]] = field(default_factory=list)
    instance: list[tuple[Any, ...]] = field(default_factory=list)
    word: list[tuple[Any, ...]] = field(default_factory=list)


STUDY_COLUMNS = (
    "pk", "study_uid", "patient_name", "patient_id", "issuer_of_patient_id",
    "patient_birth_date", "patient_sex", "study_date", "study_time", "accession_number",
    "study_id", "referring_physician_name", "study_description", "modalities", "sop_classes",
    "num_series", "num_instances", "size_bytes", "attrs",
)  # fmt: skip
SERIES_COLUMNS = (
    "pk", "study_pk", "series_uid", "modality", "series_number", "series_description",
    "series_date", "series_time", "body_part_examined", "pps_start_date", "pps_start_time",
    "num_instances", "attrs",
)  # fmt: skip
INSTANCE_COLUMNS = (
    "pk", "series_pk", "study_pk", "sop_instance_uid", "sop_class_uid", "instance_number",
    "transfer_syntax_uid", "rows", "columns", "bits_allocated", "bits_stored",
    "samples_per_pixel", "photometric_interpretation", "number_of_frames", "file_key",
    "file_size", "file_sha256", "metadata", "attrs",
)  # fmt: skip
WORD_COLUMNS = ("study_pk", "word")
ZERO_SHA = "0" * 64


def _charset(rng: random.Random, texts: list[str]) -> str | None:
    if rng.random() < 0.75:
        return "ISO_IR 192"
    try:
        for t in texts:
            t.encode("latin-1")
    except UnicodeEncodeError:
        return "ISO_IR 192"
    if all(t.isascii() for t in texts) and rng.random() < 0.25:
        return None  # default repertoire
    return "ISO_IR 100"


def _add_minutes(time_: str, minutes: int) -> str:
    h, m, s = int(time_[:2]), int(time_[2:4]), int(time_[4:6])
    total = min(h * 3600 + m * 60 + s + minutes * 60, 86399)
    return f"{total // 3600:02d}{total // 60 % 60:02d}{total % 60:02d}"


class RowBuilder:
    """Rows of the four tables for study plans, pks assigned in order."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.study_pk = self.series_pk = self.instance_pk = 0

    def chunk(self, plans: list[StudyPlan], first_index: int) -> Chunk:
        out = Chunk()
        for offset, plan in enumerate(plans):
            # one generator per study: the same data whatever the chunking
            rng = random.Random(self.seed * 1_000_003 + first_index + offset)
            self.study(rng, plan, out)
        return out

    def study(self, rng: random.Random, p: StudyPlan, out: Chunk) -> None:
        self.study_pk += 1
        study_pk = self.study_pk
        study_uid = _uid(rng)
        pat = p.patient
        institution = rng.choice(INSTITUTIONS)
        charset = _charset(rng, [pat.name, p.referring or "", institution])
        date = _da(p.date)
        birth = _da(pat.birth)
        age_days = p.date - pat.birth
        age = f"{age_days // 365:03d}Y" if age_days >= 730 else f"{max(0, age_days // 30):03d}M"
        study_id = str(rng.randint(1, 99999))
        sa: dict[str, Any] = {
            "00080020": _a("DA", date),
            "00080030": _a("TM", p.time),
            "00080050": _a("SH", p.accession),
            "00080090": _pn(p.referring),
            "00081030": _a("LO", p.description),
            "00100010": _pn(pat.name),
            "00100020": _a("LO", pat.pid),
            "00100030": _a("DA", birth),
            "00100040": _a("CS", pat.sex),
            "00101010": _a("AS", age),
            "0020000D": _a("UI", study_uid),
            "00200010": _a("SH", study_id),
        }
        if charset:
            sa["00080005"] = _a("CS", charset)
        if pat.issuer:
            sa["00100021"] = _a("LO", pat.issuer)
        if rng.random() < 0.3:
            sa["00101030"] = _a("DS", round(rng.uniform(40, 110), 1))
        study_json = _encode(sa)
        modalities: set[str] = set()
        classes: set[str] = set()
        n_instances = 0
        for number, s in enumerate(p.series, start=1):
            self.series_pk += 1
            series_pk = self.series_pk
            series_uid = _uid(rng)
            manufacturer, model = rng.choice(MANUFACTURERS[s.modality])
            series_time = _add_minutes(p.time[:6], number * rng.randint(0, 4))
            series_number = number if s.modality not in ("SR", "KO", "PR") else 990 + number
            se: dict[str, Any] = {
                "00080021": _a("DA", date),
                "00080031": _a("TM", series_time),
                "00080060": _a("CS", s.modality),
                "00080070": _a("LO", manufacturer),
                "00080080": _a("LO", institution),
                "00081010": _a("SH", f"{s.modality}{rng.randint(1, 4):02d}"),
                "0008103E": _a("LO", s.description),
                "00081090": _a("LO", model),
                "0020000E": _a("UI", series_uid),
                "00200011": _a("IS", series_number),
                "00400244": _a("DA", date),
                "00400245": _a("TM", p.time[:6]),
            }
            if charset:
                se["00080005"] = _a("CS", charset)
            if s.body_part:
                se["00180015"] = _a("CS", s.body_part)
            if s.modality == "MG":
                se["00200060"] = _a("CS", rng.choice(["L", "R"]))
            if rng.random() < 0.6 and p.accession:
                se["00400275"] = {"vr": "SQ", "Value": [{
                    "00080050": _a("SH", p.accession),
                    "00400009": _a("SH", f"SPS{rng.randrange(10**6):06d}"),
                    "00401001": _a("SH", f"RP{rng.randrange(10**6):06d}"),
                }]}  # fmt: skip
            modalities.add(s.modality)
            image = IMAGE.get(s.modality) if s.variant != "PDF" else None
            if image is not None:
                size_choices, bits_alloc, bits_stored, spp, photometric = image
                rows, columns = rng.choice(size_choices)
            if s.modality in ("CR", "DX", "MG") and rng.random() < 0.3:
                ts = JPEG_LOSSLESS
            elif s.modality == "US" and rng.random() < 0.7:
                ts = JPEG_BASELINE
            else:
                ts = EXPLICIT_LE if rng.random() < 0.9 else IMPLICIT_LE
            for inum in range(1, s.count + 1):
                self.instance_pk += 1
                sop_uid = _uid(rng)
                frames: int | None = None
                if s.modality == "US":
                    multi = rng.random() < 0.5
                    cls = SOP["US-MF"] if multi else SOP["US"]
                    frames = rng.randint(20, 300) if multi else None
                elif s.modality == "SR":
                    cls = (
                        SOP["SR-DOSE"]
                        if s.variant == "DOSE"
                        else (SOP["SR-CAD"] if s.variant == "CAD" else SOP["SR"])
                    )
                elif s.modality == "OT" and s.variant == "PDF":
                    cls = SOP["OT-PDF"]
                else:
                    cls = SOP[s.modality]
                if s.modality == "XA":
                    frames = rng.randint(10, 150)
                elif s.modality == "NM":
                    frames = rng.choice([1, 64, 128])
                elif s.modality == "SEG":
                    frames = rng.randint(20, 200)
                classes.add(cls)
                ia: dict[str, Any] = {
                    "00080016": _a("UI", cls),
                    "00080018": _a("UI", sop_uid),
                    "00080023": _a("DA", date),
                    "00080033": _a("TM", series_time),
                    "00200013": _a("IS", inum),
                }
                if charset:
                    ia["00080005"] = _a("CS", charset)
                extra: dict[str, Any] = {}
                if image is not None:
                    image_type = ["ORIGINAL", "PRIMARY"]
                    if s.modality in ("CT", "PT"):
                        image_type.append("LOCALIZER" if s.description == "TOPOGRAM" else "AXIAL")
                    ia["00080008"] = _a("CS", *image_type)
                    ia["00080022"] = _a("DA", date)
                    ia["00080032"] = _a("TM", series_time)
                    ia["00280010"] = _a("US", rows)
                    ia["00280011"] = _a("US", columns)
                    ia["00280100"] = _a("US", bits_alloc)
                    if s.modality in ("CT", "MR", "PT"):
                        ia["00200012"] = _a("IS", 1)
                        extra["00180050"] = _a("DS", rng.choice([1.0, 1.25, 2.5, 3.0, 5.0]))
                        extra["00280030"] = _a("DS", 0.7, 0.7)
                    if frames is not None:
                        ia["00280008"] = _a("IS", frames)
                    extra["00280002"] = _a("US", spp)
                    extra["00280004"] = _a("CS", photometric)
                    extra["00280101"] = _a("US", bits_stored)
                    extra["00280102"] = _a("US", bits_stored - 1)
                    extra["00280103"] = _a("US", 0)
                elif s.modality == "SR":
                    ia["0040A491"] = _a("CS", "COMPLETE")
                    ia["0040A493"] = _a("CS", rng.choice(["VERIFIED", "UNVERIFIED"]))
                    extra["0040A040"] = _a("CS", "CONTAINER")
                elif s.variant == "PDF":
                    ia["00420010"] = _a(
                        "ST", rng.choice(["Referral letter", "Consent form", "Outside report"])
                    )
                    extra["00420012"] = _a("LO", "application/pdf")
                elif s.modality == "PR":
                    extra["00700080"] = _a("CS", "ANNOTATIONS")
                meta = {**sa, **se, **ia, **extra}
                out.instance.append((
                    self.instance_pk, series_pk, study_pk, sop_uid, cls, inum, ts,
                    rows if image else None, columns if image else None,
                    bits_alloc if image else None, bits_stored if image else None,
                    spp if image else None, photometric if image else None,
                    (frames or 1) if image else None,
                    f"seed/{sop_uid}.dcm", 0, ZERO_SHA, _encode(meta), _encode(ia),
                ))  # fmt: skip
            n_instances += s.count
            out.series.append((
                series_pk, study_pk, series_uid, s.modality, series_number, s.description,
                date, series_time, s.body_part, date, p.time[:6], s.count, _encode(se),
            ))  # fmt: skip
        out.study.append((
            study_pk, study_uid, pat.name, pat.pid, pat.issuer, birth, pat.sex, date, p.time,
            p.accession, study_id, p.referring, p.description, sorted(modalities),
            sorted(classes), len(p.series), n_instances, 0, study_json,
        ))  # fmt: skip
        out.word.extend((study_pk, w) for w in name_words(pat.name))


async def seed(dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    plans = plan_all(rng, args.studies, args.instances)
    n_series = sum(len(p.series) for p in plans)
    print(
        f"  planned {len(plans):,} studies, {n_series:,} series, "
        f"{sum(s.count for p in plans for s in p.series):,} instances "
        f"({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    conn = await asyncpg.connect(dsn)
    try:
        await json_codecs(conn)
        await conn.execute("TRUNCATE study, series, instance, study_word")
        # the rows are consistent by construction: skip the per-row foreign key triggers
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("SET synchronous_commit = off")
        builder = RowBuilder(args.seed)
        loop = asyncio.get_running_loop()
        step = 2000
        starts = list(range(0, len(plans), step))

        def build(i: int) -> Chunk:
            return builder.chunk(plans[i : i + step], i)

        done = {"study": 0, "series": 0, "instance": 0}
        pending = loop.run_in_executor(None, build, starts[0])
        for k in range(len(starts)):
            chunk = await pending
            if k + 1 < len(starts):  # build the next chunk while this one is copied
                pending = loop.run_in_executor(None, build, starts[k + 1])
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "study", records=chunk.study, columns=STUDY_COLUMNS
                )
                await conn.copy_records_to_table(
                    "series", records=chunk.series, columns=SERIES_COLUMNS
                )
                await conn.copy_records_to_table(
                    "instance", records=chunk.instance, columns=INSTANCE_COLUMNS
                )
                await conn.copy_records_to_table(
                    "study_word", records=chunk.word, columns=WORD_COLUMNS
                )
            done["study"] += len(chunk.study)
            done["series"] += len(chunk.series)
            done["instance"] += len(chunk.instance)
            if k % 5 == 4 or k + 1 == len(starts):
                el = time.perf_counter() - t0
                print(
                    f"  {done['study']:>9,} studies {done['series']:>9,} series "
                    f"{done['instance']:>10,} instances  {el:6.1f} s",
                    flush=True,
                )
        await conn.execute("RESET session_replication_role")
        # the replica role also skipped the trigger that stores each study's QIDO
        # answers (app/index/fragments.py): fill them as ingest would have
        print("  storing the studies' QIDO answers ...", flush=True)
        await conn.execute("UPDATE study SET qido = NULL")
        for table in ("study", "series", "instance"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'),"
                f" (SELECT max(pk) FROM {table}))"
            )
        t_load = time.perf_counter() - t0
        print("  checking aggregates against the rows ...", flush=True)
        bad = await conn.fetchval(
            """
            SELECT count(*) FROM study st LEFT JOIN (
                SELECT se.study_pk, count(*) AS n_series, sum(se.n) AS n_inst,
                       array_agg(DISTINCT se.modality ORDER BY se.modality) AS mods
                FROM (SELECT s.pk, s.study_pk, s.modality, count(i.pk) AS n
                      FROM series s LEFT JOIN instance i ON i.series_pk = s.pk
                      GROUP BY s.pk) se
                GROUP BY se.study_pk) a ON a.study_pk = st.pk
            WHERE a.study_pk IS NULL OR st.num_series <> a.n_series
               OR st.num_instances <> a.n_inst OR st.modalities <> a.mods
            """
        )
        bad_series = await conn.fetchval(
            "SELECT count(*) FROM series s WHERE num_instances <>"
            " (SELECT count(*) FROM instance i WHERE i.series_pk = s.pk)"
        )
        bad_classes = await conn.fetchval(
            """SELECT count(*) FROM study st WHERE sop_classes IS DISTINCT FROM
               (SELECT array_agg(DISTINCT sop_class_uid ORDER BY sop_class_uid)
                FROM instance WHERE study_pk = st.pk)"""
        )
        if bad or bad_series or bad_classes:
            raise RuntimeError(
                f"seeded aggregates inconsistent: {bad} studies, {bad_series} series, "
                f"{bad_classes} studies' SOP classes"
            )
        print("  ANALYZE; VACUUM (ANALYZE) ...", flush=True)
        await conn.execute("ANALYZE")
        await conn.execute("VACUUM (ANALYZE)")
        counts = {
            t: await conn.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("study", "series", "instance", "study_word")
        }
        counts["patients"] = await conn.fetchval("SELECT count(DISTINCT patient_id) FROM study")
        sizes = await conn.fetch(
            "SELECT relname, pg_total_relation_size(oid) AS bytes FROM pg_class"
            " WHERE relname IN ('study', 'series', 'instance', 'study_word')"
        )
    finally:
        await conn.close()
    total = time.perf_counter() - t0
    return {
        "parameters": {"studies": args.studies, "instances": args.instances, "seed": args.seed},
        "counts": counts,
        "table_mb": {r["relname"]: round(r["bytes"] / 1e6, 1) for r in sizes},
        "seconds": {"load": round(t_load, 1), "total": round(total, 1)},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# --------------------------------------------------------------------------------------
# Queries drawn from the seeded data, and what their answers must be
# --------------------------------------------------------------------------------------

OHIF_QUERY = (
    "limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030"
)
TYPES: list[tuple[str, str, float]] = [  # key, label, p95 target (ms)
    ("a", "PatientID exact", 25),
    ("b", "PatientName prefix MUL*", 25),
    ("c", "StudyDate range + ModalitiesInStudy", 25),
    ("d", "AccessionNumber", 25),
    ("e", "study's series", 25),
    ("f", "series' instances", 25),
    ("g", "OHIF study list (limit=101)", 50),
    ("h", "includefield=all&limit=100", 25),
    ("i", "fuzzy PatientName (limit=101)", 25),
]


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


Check = Callable[[dict[str, Any]], bool]


def _equals(tag: str, value: str, present: str | None = None) -> Check:
    def check(item: dict[str, Any]) -> bool:
        return _value(item, tag) == value and (present is None or _value(item, present) is not None)

    return check


def _alphabetic(item: dict[str, Any]) -> str:
    name = _value(item, "00100010") or {}
    return str(name.get("Alphabetic", ""))


def _name_prefix(prefix: str) -> Check:
    return lambda item: _alphabetic(item).startswith(prefix)


def _fuzzy_name(prefix: str) -> Check:
    return lambda item: any(w.startswith(prefix) for w in name_words(_alphabetic(item)))


def _date_and_modality(first: str, last: str, modality: str) -> Check:
    def check(item: dict[str, Any]) -> bool:
        modalities = item.get("00080061", {}).get("Value") or []
        return first <= (_value(item, "00080020") or "") <= last and modality in modalities

    return check


@dataclass
class Spec:
    """One request and what its answer must be."""

    kind: str
    level: Level
    query: str  # the query string as sent
    study_uid: str | None = None
    series_uid: str | None = None
    expected: int = 0  # number of results in the answer
    more: bool = False  # Warning: more results exist
    check: Check | None = None  # every result must pass
    first_uids: list[str] | None = None  # exact order of the results (study UIDs)

    @property
    def path(self) -> str:
        p = "/dicom-web/studies"
        if self.level is Level.SERIES:
            p += f"/{self.study_uid}/series"
        elif self.level is Level.INSTANCE:
            p += f"/{self.study_uid}/series/{self.series_uid}/instances"
        return p + (f"?{self.query}" if self.query else "")


def _capped(count: int, limit: int) -> tuple[int, bool]:
    return min(count, limit), count > limit


async def build_specs(dsn: str, rng: random.Random, n: int) -> dict[str, list[Spec]]:
    """``n`` requests per type with their expected answers, computed here from the rows
    (in Python, not with the compiler's SQL)."""
    conn = await asyncpg.connect(dsn)
    try:
        studies = await conn.fetch(
            "SELECT pk, study_uid, patient_id, patient_name, accession_number, study_date,"
            " modalities FROM study ORDER BY pk"
        )
        series_per_study = dict(
            await conn.fetch("SELECT study_pk, count(*) FROM series GROUP BY study_pk")
        )
        series_pks = [r[0] for r in await conn.fetch("SELECT pk FROM series ORDER BY pk")]
        picked_series = rng.sample(series_pks, min(n, len(series_pks)))
        series_rows = await conn.fetch(
            """SELECT se.pk, se.series_uid, st.study_uid,
                      (SELECT count(*) FROM instance i WHERE i.series_pk = se.pk) AS n
               FROM series se JOIN study st ON st.pk = se.study_pk
               WHERE se.pk = ANY($1::bigint[])""",
            picked_series,
        )
    finally:
        await conn.close()
    by_pid = Counter(r["patient_id"] for r in studies)
    by_acc = Counter(r["accession_number"] for r in studies)
    names = sorted(Counter(r["patient_name"] for r in studies if r["patient_name"]).items())
    name_keys = [k for k, _ in names]
    name_cum = [0]
    for _, c in names:
        name_cum.append(name_cum[-1] + c)
    dates_by_modality: dict[str, list[str]] = defaultdict(list)
    for r in studies:
        for m in r["modalities"]:
            dates_by_modality[m].append(r["study_date"])
    for v in dates_by_modality.values():
        v.sort()
    word_studies: dict[str, set[int]] = defaultdict(set)
    for r in studies:
        for w in name_words(r["patient_name"]):
            word_studies[w].add(r["pk"])
    words = sorted(word_studies)

    def pick() -> asyncpg.Record:
        return studies[rng.randrange(len(studies))]

    specs: dict[str, list[Spec]] = {k: [] for k, _, _ in TYPES}
    for _ in range(n):
        # (a) PatientID
        s = pick()
        pid = s["patient_id"]
        count, more = _capped(by_pid[pid], DEFAULT_LIMIT)
        specs["a"].append(
            Spec(
                "a",
                Level.STUDY,
                f"PatientID={quote(pid)}",
                expected=count,
                more=more,
                check=_equals("00100020", pid),
            )
        )
        # (b) PatientName prefix of a real family name
        family = pick()["patient_name"].split("^")[0]
        prefix = family[: rng.randint(3, 5)]
        lo = bisect.bisect_left(name_keys, prefix)
        hi = bisect.bisect_left(name_keys, prefix + "\U0010ffff")
        count, more = _capped(name_cum[hi] - name_cum[lo], DEFAULT_LIMIT)
        specs["b"].append(Spec(
            "b", Level.STUDY, f"PatientName={quote(prefix)}*", expected=count, more=more,
            check=_name_prefix(prefix),
        ))  # fmt: skip
        # (c) a date range around a real study, one of its modalities
        s = pick()
        modality = rng.choice(s["modalities"])
        day = dt.datetime.strptime(s["study_date"], "%Y%m%d").date().toordinal()
        start = day - rng.randint(0, 30)
        first, last = _da(start), _da(start + rng.randint(0, 91))
        dates = dates_by_modality[modality]
        count = bisect.bisect_right(dates, last) - bisect.bisect_left(dates, first)
        count, more = _capped(count, DEFAULT_LIMIT)
        specs["c"].append(Spec(
            "c", Level.STUDY, f"StudyDate={first}-{last}&ModalitiesInStudy={modality}",
            expected=count, more=more,
            check=_date_and_modality(first, last, modality),
        ))  # fmt: skip
        # (d) AccessionNumber
        s = pick()
        while s["accession_number"] is None:
            s = pick()
        acc = s["accession_number"]
        specs["d"].append(
            Spec(
                "d",
                Level.STUDY,
                f"AccessionNumber={acc}",
                expected=by_acc[acc],
                check=_equals("00080050", acc),
            )
        )
        # (e) the series of a study
        s = pick()
        uid = s["study_uid"]
        count, more = _capped(series_per_study.get(s["pk"], 0), DEFAULT_LIMIT)
        specs["e"].append(
            Spec(
                "e",
                Level.SERIES,
                "",
                study_uid=uid,
                expected=count,
                more=more,
                check=_equals("0020000D", uid, present="0020000E"),
            )
        )
        # (g), (h) fixed first pages
        specs["g"].append(
            Spec(
                "g",
                Level.STUDY,
                OHIF_QUERY,
                expected=min(101, len(studies)),
                more=len(studies) > 101,
                first_uids=[r["study_uid"] for r in studies[:101]],
            )
        )
        specs["h"].append(
            Spec(
                "h",
                Level.STUDY,
                "includefield=all&limit=100",
                expected=min(100, len(studies)),
                more=len(studies) > 100,
                first_uids=[r["study_uid"] for r in studies[:100]],
            )
        )
        # (i) fuzzy: the first letters of a word of a real name, lower case, no accents
        word = rng.choice(name_words(pick()["patient_name"]))
        fuzzy = word[: rng.randint(3, 5)]
        lo = bisect.bisect_left(words, fuzzy)
        hi = bisect.bisect_left(words, fuzzy + "\U0010ffff")
        matched: set[int] = set()
        for w in words[lo:hi]:
            matched |= word_studies[w]
        count, more = _capped(len(matched), 101)
        specs["i"].append(Spec(
            "i", Level.STUDY, f"PatientName={quote(fuzzy)}&fuzzymatching=true&limit=101",
            expected=count, more=more,
            check=_fuzzy_name(fuzzy),
        ))  # fmt: skip
    # (f) the instances of a series
    for r in series_rows:
        count, more = _capped(r["n"], DEFAULT_LIMIT)
        specs["f"].append(Spec(
            "f", Level.INSTANCE, "", study_uid=r["study_uid"], series_uid=r["series_uid"],
            expected=count, more=more,
            check=_equals("0020000E", r["series_uid"], present="00080018"),
        ))  # fmt: skip
    rng.shuffle(specs["f"])
    return specs


_decoder = msgspec.json.Decoder()


def verify(spec: Spec, status: int, headers: dict[str, str], body: bytes) -> str | None:
    """None when the answer is right, else what is wrong."""
    if status != 200:
        return f"status {status}: {body[:300]!r}"
    try:
        items = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return "not a JSON array of objects"
    if len(items) != spec.expected:
        return f"{len(items)} results, expected {spec.expected}"
    warned = "additional results" in headers.get("warning", "")
    if warned != spec.more:
        return f"Warning header {'present' if warned else 'missing'} (more results: {spec.more})"
    if spec.check is not None:
        for item in items:
            if not spec.check(item):
                return f"a result does not match the query: {json.dumps(item)[:300]}"
    if spec.first_uids is not None:
        uids = [_value(i, "0020000D") for i in items]
        if uids != spec.first_uids[: len(uids)]:
            return "results not in the stable (primary key) order"
    return None


# --------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds of the server's processes and of PostgreSQL's, per process, so that
    processes starting or ending between two readings do not distort the difference."""

    def __init__(self, server: PictorProcess) -> None:
        self.server = server

    def _procs(self) -> dict[str, list[psutil.Process]]:
        groups: dict[str, list[psutil.Process]] = {"server": [], "postgres": []}
        for pid in self.server.pids():
            try:
                groups["server"].append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        pm = postmaster_pid(self.server.data_dir)
        if pm is not None:
            try:
                root = psutil.Process(pm)
                groups["postgres"] = [root, *root.children(recursive=True)]
                pg = {p.pid for p in groups["postgres"]}
                groups["server"] = [p for p in groups["server"] if p.pid not in pg]
            except psutil.NoSuchProcess:
                pass
        return groups

    def read(self) -> dict[str, dict[tuple[int, float], float]]:
        t = psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        out: dict[str, dict[tuple[int, float], float]] = {"machine": {(0, 0.0): busy}}
        for group, procs in self._procs().items():
            out[group] = {}
            for p in procs:
                try:
                    t = p.cpu_times()
                    out[group][(p.pid, p.create_time())] = t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        return out

    @staticmethod
    def diff(a: dict[str, dict[Any, float]], b: dict[str, dict[Any, float]]) -> dict[str, float]:
        return {g: sum(v - a.get(g, {}).get(k, 0.0) for k, v in b[g].items()) for g in b}


async def run_type(
    conns: list[Connection], specs: list[Spec], count: int | None, seconds: float | None
) -> tuple[list[float], list[tuple[int, Spec, int, dict[str, str], bytes]], float]:
    """Send the requests with every connection busy; (latencies, answers, wall seconds)."""
    latencies: list[float] = []
    answers: list[tuple[int, Spec, int, dict[str, str], bytes]] = []
    next_index = 0
    start = time.perf_counter()
    deadline = start + seconds if seconds else None

    async def client(conn: Connection) -> None:
        nonlocal next_index
        while True:
            i = next_index
            if deadline is not None:
                if time.perf_counter() >= deadline:
                    return
            elif i >= (count or 0):
                return
            next_index += 1
            spec = specs[i % len(specs)]
            t0 = time.perf_counter()
            status, headers, body = await conn.get(spec.path)
            latencies.append(time.perf_counter() - t0)
            answers.append((i, spec, status, headers, body))

    await asyncio.gather(*(client(c) for c in conns))
    return latencies, answers, time.perf_counter() - start


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


async def load(
    server: PictorProcess,
    specs: dict[str, list[Spec]],
    warm: dict[str, list[Spec]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    conns = [Connection("127.0.0.1", server.port) for _ in range(args.clients)]
    meter = CpuMeter(server)
    results: dict[str, Any] = {}
    try:
        for key, label, target in TYPES:
            if key not in args.types:
                continue
            # warm-up (other values), and every connection open and fresh before timing
            if warm[key]:
                await run_type(conns, warm[key], len(warm[key]), None)
            await asyncio.gather(*(c.get("/health", "application/json") for c in conns))
            cpu0, client0 = meter.read(), time.process_time()
            latencies, answers, wall = await run_type(
                conns, specs[key], args.requests if not args.seconds else None, args.seconds
            )
            cpu = CpuMeter.diff(cpu0, meter.read())
            client_cpu = time.process_time() - client0
            # anything else running on the machine meanwhile distorts the figures
            other = cpu["machine"] - cpu["server"] - cpu["postgres"] - client_cpu
            errors: list[str] = []
            rows = 0
            for _, spec, status, headers, body in answers:
                problem = verify(spec, status, headers, body)
                rows += spec.expected
                if problem is not None:
                    errors.append(f"{spec.path}: {problem}")
            n = len(latencies)
            lat = sorted(x * 1000 for x in latencies)
            p95 = percentile(lat, 95)
            res = {
                "label": label,
                "example": specs[key][0].path,
                "requests": n,
                "wrong": len(errors),
                "mean_results": round(rows / max(1, n), 1),
                "mean_kb": round(sum(len(a[4]) for a in answers) / max(1, n) / 1000, 1),
                "p50_ms": round(percentile(lat, 50), 2),
                "p95_ms": round(p95, 2),
                "p99_ms": round(percentile(lat, 99), 2),
                "max_ms": round(lat[-1], 2) if lat else None,
                "req_per_s": round(n / wall, 1),
                "target_p95_ms": target,
                "cpu_s": {
                    "server": round(cpu["server"], 2),
                    "postgres": round(cpu["postgres"], 2),
                    "client": round(client_cpu, 2),
                    "other": round(other, 2),
                },
                "pass": not errors and p95 < target,
                "errors": errors[:5],
            }
            results[key] = res
            print(
                f"  ({key}) {label:<38} {n:>5} req  p95 {p95:8.1f} ms  {res['req_per_s']:7.1f}/s"
                f"  {len(errors)} wrong  (CPU s: server {cpu['server']:.1f}, PostgreSQL "
                f"{cpu['postgres']:.1f}, client {client_cpu:.1f}, other {other:.1f})",
                flush=True,
            )
            for e in errors[:3]:
                print(f"      WRONG {e}", flush=True)
            del answers
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return results


def print_table(results: dict[str, Any]) -> None:
    head = (
        f"{'query':<42} {'n':>5} {'rows':>6} {'KB':>7} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'req/s':>7} {'srv CPU':>8} {'pg CPU':>7} {'target':>12}  result"
    )
    print(head)
    print("-" * len(head))
    for key, label, _ in TYPES:
        if key not in results:
            continue
        r = results[key]
        verdict = "PASS" if r["pass"] else ("WRONG" if r["wrong"] else "FAIL")
        print(
            f"({key}) {label:<38} {r['requests']:>5} {r['mean_results']:>6} {r['mean_kb']:>7} "
            f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['req_per_s']:>7.1f} "
            f"{r['cpu_s']['server']:>7.1f}s {r['cpu_s']['postgres']:>6.1f}s "
            f"{'p95 < ' + str(r['target_p95_ms']) + ' ms':>12}  {verdict}"
        )
    print(
        "rows: mean results per answer; KB: mean body size; CPU: seconds of the server's "
        "processes and of PostgreSQL's during that query type's requests"
    )


# --------------------------------------------------------------------------------------
# EXPLAIN
# --------------------------------------------------------------------------------------


async def explain(
    dsn: str, specs: dict[str, list[Spec]], base: str, full_sql: bool
) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    out: dict[str, Any] = {}
    try:
        # the plan a cached prepared statement may settle on (PostgreSQL switches to a
        # generic plan after five executions unless custom ones are cheaper)
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for key, label, _ in TYPES:
            if not specs.get(key):
                continue
            # a typical request (median number of results) and the largest one
            by_size = sorted(specs[key], key=lambda s: s.expected)
            examples = [("typical", by_size[len(by_size) // 2])]
            if by_size[-1].expected > by_size[len(by_size) // 2].expected:
                examples.append(("largest", by_size[-1]))
            for which, spec in examples:
                out[f"{key}-{which}"] = await _explain_one(
                    conn, key, label, which, spec, base, full_sql
                )
    finally:
        await conn.close()
    return out


def _literal(value: object) -> str:
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


async def _explain_one(
    conn: asyncpg.Connection,
    key: str,
    label: str,
    which: str,
    spec: Spec,
    base: str,
    full_sql: bool,
) -> dict[str, Any]:
    params = parse_qsl(spec.query, keep_blank_values=True)
    query = parse_query(spec.level, params, study_uid=spec.study_uid, series_uid=spec.series_uid)
    compiled = compile_query(query, base)
    # EXPLAIN of a statement with parameters plans it with their values; a prepared
    # statement run through EXECUTE gets the plan cache's choice (here: generic)
    await conn.execute("DEALLOCATE ALL")
    await conn.execute("PREPARE q AS " + compiled.sql)
    values = ", ".join(_literal(a) for a in compiled.args)  # EXECUTE takes no parameters
    rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE q({values})")
    plan = [r[0] for r in rows]
    sql = compiled.sql
    if not full_sql:
        select_end = sql.find(")::text FROM ")
        if select_end > 200:
            sql = f"{sql[:120]} ...[{select_end - 120} chars of select list]... {sql[select_end:]}"
    print(f"\n=== ({key}) {label}, {which} ({spec.expected} results): {spec.path}")
    print(f"SQL: {sql}")
    print(f"args: {[a for a in compiled.args if not str(a).startswith('http')]}")
    for line in plan:
        print("   " + line)
    return {
        "request": spec.path,
        "results": spec.expected,
        "sql": compiled.sql,
        "args": [str(a) for a in compiled.args],
        "plan": plan,
    }


# --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed-dir", type=Path, help="seeded data directory (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary seed directory")
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1, help="random seed of the data")
    # 2,000: at 1,500 requests/s, 400 were a quarter of a second, and their p95 moved by
    # 10 ms from one run to the next
    parser.add_argument("--requests", type=int, default=2000, help="requests per query type")
    parser.add_argument("--seconds", type=float, help="time budget per query type instead")
    parser.add_argument("--warmup", type=int, default=48, help="warm-up requests per type")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--types", default="abcdefghi", help="query types to run, e.g. abg")
    parser.add_argument("--workers", type=int, default=0, help="server processes (0: default)")
    parser.add_argument(
        "--explain", action="store_true", help="EXPLAIN (ANALYZE, BUFFERS) each type"
    )
    parser.add_argument(
        "--full-sql", action="store_true", help="print the whole SQL with --explain"
    )
    parser.add_argument("--no-load", action="store_true", help="seed (and explain) only")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "qido.json"
    )
    args = parser.parse_args()

    temporary = args.seed_dir is None
    root = (
        Path(tempfile.mkdtemp(prefix="pictor-qido-", dir=os.environ.get("PICTOR_BENCH_DIR")))
        if temporary
        else args.seed_dir.resolve()
    )
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    marker = root / "seeded.json"
    server: PictorProcess | None = None
    try:
        if marker.exists():
            info = json.loads(marker.read_text())
            print(
                f"seeded directory {root}: {info['counts']} (seeded {info['date']}, "
                f"{info['seconds']['total']} s)"
            )
            if info["parameters"] != {
                "studies": args.studies,
                "instances": args.instances,
                "seed": args.seed,
            }:
                print(f"  note: seeded with {info['parameters']}, not the parameters given")
        else:
            print(
                f"seeding {root}: {args.studies:,} studies, {args.instances:,} instances",
                flush=True,
            )
            server = PictorProcess(
                data, workers=0, env=SEEDED, log_path=root / "server.log"
            ).start()
            info = uvloop.run(seed(embedded_dsn(data), args))
            server.stop()
            server = None
            marker.write_text(json.dumps(info, indent=2) + "\n")
            print(
                f"seeded in {info['seconds']['total']} s (rows loaded in "
                f"{info['seconds']['load']} s): {info['counts']}; MB: {info['table_mb']}",
                flush=True,
            )

        server = PictorProcess(
            data, workers=args.workers, env=SEEDED, log_path=root / "server.log"
        ).start()
        dsn = embedded_dsn(data)
        rng = random.Random(args.seed + 7)
        per_type = args.requests + args.warmup
        all_specs = uvloop.run(build_specs(dsn, rng, per_type))
        warm = {k: v[args.requests :] for k, v in all_specs.items()}
        specs = {k: v[: args.requests] for k, v in all_specs.items()}
        results: dict[str, Any] = {}
        if not args.no_load:
            print(
                f"load: {args.clients} clients, "
                + (f"{args.seconds} s" if args.seconds else f"{args.requests} requests")
                + f" per type (after {args.warmup} warm-up requests), "
                f"{server.workers or 'default'} workers",
                flush=True,
            )
            results = uvloop.run(load(server, specs, warm, args))
            print()
            print_table(results)
        plans: dict[str, Any] = {}
        if args.explain:
            plans = uvloop.run(explain(dsn, specs, server.dicomweb, args.full_sql))
    finally:
        if server is not None:
            server.stop()
            stop_postgres(data)  # only if the server left it running
        if temporary and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif temporary:
            print(f"kept {root}")

    if results or plans:
        out = {
            "date": time.strftime("%Y-%m-%d"),
            "cpus": os.cpu_count(),
            "seed": info,
            "clients": args.clients,
            "requests_per_type": None if args.seconds else args.requests,
            "seconds_per_type": args.seconds,
            "warmup_per_type": args.warmup,
            "results": results,
            "explain": plans,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
        print(f"results written to {args.json}")
    if any(not r["pass"] for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
