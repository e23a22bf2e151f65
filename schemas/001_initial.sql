-- Pictor index, version 1.
--
-- Denormalized for reads (DESIGN.md decision 1): each level carries the attributes QIDO
-- matches on (PS3.18 10.6, PS3.4 C.6.2.1.2) as columns, plus the DICOM JSON fragment it
-- returns; the instance row carries everything WADO needs without opening the file.

CREATE TABLE study (
    pk                        bigserial PRIMARY KEY,
    study_uid                 text NOT NULL UNIQUE,
    -- Patient module (patient attributes live on the study row)
    patient_name              text,
    patient_id                text,
    issuer_of_patient_id      text,
    patient_birth_date        text,
    patient_sex               text,
    -- General Study module
    study_date                text,           -- DA as stored: YYYYMMDD
    study_time                text,           -- TM as stored
    accession_number          text,
    study_id                  text,
    referring_physician_name  text,
    study_description         text,
    -- aggregates
    modalities                text[] NOT NULL DEFAULT '{}',   -- ModalitiesInStudy (0008,0061)
    sop_classes               text[] NOT NULL DEFAULT '{}',   -- SOPClassesInStudy (0008,0062)
    num_series                integer NOT NULL DEFAULT 0,     -- (0020,1206)
    num_instances             integer NOT NULL DEFAULT 0,     -- (0020,1208)
    size_bytes                bigint NOT NULL DEFAULT 0,
    attrs                     json NOT NULL,                  -- study-level DICOM JSON fragment
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX study_patient_id ON study (patient_id);
CREATE INDEX study_accession ON study (accession_number);
CREATE INDEX study_date_idx ON study (study_date);

CREATE TABLE series (
    pk                        bigserial PRIMARY KEY,
    study_pk                  bigint NOT NULL REFERENCES study (pk) ON DELETE CASCADE,
    series_uid                text NOT NULL UNIQUE,
    modality                  text,
    series_number             integer,
    series_description        text,
    series_date               text,
    series_time               text,
    body_part_examined        text,
    pps_start_date            text,           -- PerformedProcedureStepStartDate
    pps_start_time            text,
    num_instances             integer NOT NULL DEFAULT 0,     -- (0020,1209)
    attrs                     json NOT NULL,
    created_at                timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX series_study ON series (study_pk);

CREATE TABLE instance (
    pk                        bigserial PRIMARY KEY,
    series_pk                 bigint NOT NULL REFERENCES series (pk) ON DELETE CASCADE,
    study_pk                  bigint NOT NULL REFERENCES study (pk) ON DELETE CASCADE,
    sop_instance_uid          text NOT NULL UNIQUE,
    sop_class_uid             text NOT NULL,
    instance_number           integer,
    transfer_syntax_uid       text NOT NULL,
    rows                      integer,
    columns                   integer,
    bits_allocated            integer,
    bits_stored               integer,
    samples_per_pixel         integer,
    photometric_interpretation text,
    number_of_frames          integer,
    -- the stored file, exactly as received
    file_key                  text NOT NULL,
    file_size                 bigint NOT NULL,
    file_sha256               text NOT NULL,
    -- frame byte ranges (see app/dicom/analysis.py Frames): contiguous ranges, and the
    -- index of the first range of each frame; NULL when frames are not addressable in
    -- the file as stored (deflated data set, unusual encapsulation)
    frame_offsets             bigint[],
    frame_lengths             bigint[],
    frame_first               integer[],
    -- bulk data values behind each BulkDataURI: [[path, offset, length], ...]
    bulk                      json NOT NULL DEFAULT '[]',
    -- the instance's DICOM JSON (PS3.18 F) with BulkDataURIs, ready to send
    metadata                  json NOT NULL,
    created_at                timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX instance_series ON instance (series_pk);
CREATE INDEX instance_study ON instance (study_pk);
