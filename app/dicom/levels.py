"""Which attributes belong to which query level, and what QIDO returns by default.

The levels follow the Study Root information model (PS3.4 C.6.2.1): Patient and Study
attributes at the study level, Series attributes at the series level, everything else
at the instance level. The default return attributes are PS3.18 Table 10.6.3-3
(study), 10.6.3-4 (series) and 10.6.3-5 (instance).
"""

from __future__ import annotations

import unicodedata

# -- attributes stored per level (the fragments kept on study / series / instance rows) --

STUDY_TAGS = frozenset(
    {
        0x00080005,  # SpecificCharacterSet
        0x00080020,  # StudyDate
        0x00080030,  # StudyTime
        0x00080050,  # AccessionNumber
        0x00080051,  # IssuerOfAccessionNumberSequence
        0x00080090,  # ReferringPhysicianName
        0x00080201,  # TimezoneOffsetFromUTC
        0x00081030,  # StudyDescription
        0x00081032,  # ProcedureCodeSequence
        0x00081060,  # NameOfPhysiciansReadingStudy
        0x00081080,  # AdmittingDiagnosesDescription
        0x00200010,  # StudyID
        0x0020000D,  # StudyInstanceUID
        0x00321032,  # RequestingPhysician
        0x00321060,  # RequestedProcedureDescription
    }
)
#: Patient module attributes (group 0010) live on the study row
STUDY_GROUPS = frozenset({0x0010})

SERIES_TAGS = frozenset(
    {
        0x00080005,  # SpecificCharacterSet
        0x00080021,  # SeriesDate
        0x00080031,  # SeriesTime
        0x00080060,  # Modality
        0x00080070,  # Manufacturer
        0x00080080,  # InstitutionName
        0x00080201,  # TimezoneOffsetFromUTC
        0x00081010,  # StationName
        0x0008103E,  # SeriesDescription
        0x00081040,  # InstitutionalDepartmentName
        0x00081050,  # PerformingPhysicianName
        0x00081070,  # OperatorsName
        0x00081090,  # ManufacturerModelName
        0x00180015,  # BodyPartExamined
        0x00181030,  # ProtocolName
        0x00185100,  # PatientPosition
        0x0020000E,  # SeriesInstanceUID
        0x00200011,  # SeriesNumber
        0x00200060,  # Laterality
        0x00400244,  # PerformedProcedureStepStartDate
        0x00400245,  # PerformedProcedureStepStartTime
        0x00400253,  # PerformedProcedureStepID
        0x00400254,  # PerformedProcedureStepDescription
        0x00400275,  # RequestAttributesSequence
    }
)

INSTANCE_TAGS = frozenset(
    {
        0x00080005,  # SpecificCharacterSet
        0x00080008,  # ImageType
        0x00080016,  # SOPClassUID
        0x00080018,  # SOPInstanceUID
        0x00080022,  # AcquisitionDate
        0x00080023,  # ContentDate
        0x00080032,  # AcquisitionTime
        0x00080033,  # ContentTime
        0x00080201,  # TimezoneOffsetFromUTC
        0x00200012,  # AcquisitionNumber
        0x00200013,  # InstanceNumber
        0x00280008,  # NumberOfFrames
        0x00280010,  # Rows
        0x00280011,  # Columns
        0x00280100,  # BitsAllocated
        0x0040A491,  # CompletionFlag
        0x0040A493,  # VerificationFlag
        0x00420010,  # DocumentTitle
    }
)

# -- attributes computed by the archive, not stored in instances --

INSTANCE_AVAILABILITY = 0x00080056
MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
RETRIEVE_URL = 0x00081190
NUMBER_OF_STUDY_RELATED_SERIES = 0x00201206
NUMBER_OF_STUDY_RELATED_INSTANCES = 0x00201208
NUMBER_OF_SERIES_RELATED_INSTANCES = 0x00201209

STUDY_COMPUTED = frozenset(
    {
        INSTANCE_AVAILABILITY,
        MODALITIES_IN_STUDY,
        SOP_CLASSES_IN_STUDY,
        RETRIEVE_URL,
        NUMBER_OF_STUDY_RELATED_SERIES,
        NUMBER_OF_STUDY_RELATED_INSTANCES,
    }
)
SERIES_COMPUTED = frozenset(
    {INSTANCE_AVAILABILITY, RETRIEVE_URL, NUMBER_OF_SERIES_RELATED_INSTANCES}
)
INSTANCE_COMPUTED = frozenset({INSTANCE_AVAILABILITY, RETRIEVE_URL})

# -- default return attributes, PS3.18 10.6.3.3 --

STUDY_DEFAULTS = (
    0x00080005,  # Specific Character Set
    0x00080020,  # Study Date
    0x00080030,  # Study Time
    0x00080050,  # Accession Number
    0x00080056,  # Instance Availability
    0x00080061,  # Modalities in Study
    0x00080090,  # Referring Physician's Name
    0x00080201,  # Timezone Offset From UTC
    0x00081190,  # Retrieve URL
    0x00100010,  # Patient's Name
    0x00100020,  # Patient ID
    0x00100030,  # Patient's Birth Date
    0x00100040,  # Patient's Sex
    0x0020000D,  # Study Instance UID
    0x00200010,  # Study ID
    0x00201206,  # Number of Study Related Series
    0x00201208,  # Number of Study Related Instances
)
SERIES_DEFAULTS = (
    0x00080005,  # Specific Character Set
    0x00080060,  # Modality
    0x00080201,  # Timezone Offset From UTC
    0x0008103E,  # Series Description
    0x00081190,  # Retrieve URL
    0x0020000E,  # Series Instance UID
    0x00200011,  # Series Number
    0x00201209,  # Number of Series Related Instances
    0x00400244,  # Performed Procedure Step Start Date
    0x00400245,  # Performed Procedure Step Start Time
    0x00400275,  # Request Attributes Sequence
)
INSTANCE_DEFAULTS = (
    0x00080005,  # Specific Character Set
    0x00080016,  # SOP Class UID
    0x00080018,  # SOP Instance UID
    0x00080056,  # Instance Availability
    0x00080201,  # Timezone Offset From UTC
    0x00081190,  # Retrieve URL
    0x00200013,  # Instance Number
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # Bits Allocated
    0x00280008,  # Number of Frames
)


def is_study_level(tag: int) -> bool:
    return tag in STUDY_TAGS or tag >> 16 in STUDY_GROUPS or tag in STUDY_COMPUTED


def is_series_level(tag: int) -> bool:
    return tag in SERIES_TAGS or tag in SERIES_COMPUTED


def name_words(value: str | None) -> list[str]:
    """Normalised components of a person name for fuzzy matching.

    Case-folded and stripped of accents (NFKD without combining marks); split on the
    component (^), group (=) and space separators (PS3.5 6.2.1).
    """
    if not value:
        return []
    text = unicodedata.normalize("NFKD", value.casefold())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    for sep in "^=,.":
        text = text.replace(sep, " ")
    words = []
    for word in text.split():
        if word not in words:
            words.append(word)
    return words
