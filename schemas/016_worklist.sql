-- Worklists (issue #18): the patients the RIS/HIS announced over HL7 ADT, and the
-- Modality Worklist: one row per Scheduled Procedure Step made from an HL7 order
-- (PS3.4 K, the Modality Worklist Information Model).

-- a patient as the last ADT or order message described them (PID)
CREATE TABLE patient (
    patient_id            text NOT NULL,
    issuer_of_patient_id  text NOT NULL DEFAULT '',   -- '' when PID-3 names no authority
    -- the Patient module as DICOM JSON (name, birth date, sex, ...)
    attrs                 jsonb NOT NULL,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, issuer_of_patient_id)
);

CREATE TABLE mwl_item (
    pk                    bigserial PRIMARY KEY,
    -- ORC-2 / ORC-3 (the first component of the EI): how cancels and changes find it
    placer_order          text,
    filler_order          text,
    accession_number      text NOT NULL,
    requested_procedure_id text NOT NULL,
    sps_id                text NOT NULL,               -- Scheduled Procedure Step ID
    study_uid             text NOT NULL,
    patient_id            text NOT NULL,
    issuer_of_patient_id  text NOT NULL DEFAULT '',
    patient_name          text,
    -- matching keys of PS3.4 K.6.1.2.2 inside the Scheduled Procedure Step Sequence
    modality              text,
    station_aet           text,
    performing_physician  text,
    sps_start             timestamp,                   -- local time, as DICOM DA/TM are
    -- SCHEDULED, ARRIVED, READY, STARTED, COMPLETED, DISCONTINUED (PS3.3 C.4.10), or
    -- CANCELED when the order was cancelled (ORC-1 CA): never shown by default
    status                text NOT NULL DEFAULT 'SCHEDULED',
    priority              text,                        -- Requested Procedure Priority
    -- the whole item as DICOM JSON: what a C-FIND answer is cut from
    attrs                 jsonb NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (accession_number, requested_procedure_id, sps_id)
);
CREATE INDEX mwl_item_start ON mwl_item (sps_start);
CREATE INDEX mwl_item_patient ON mwl_item (patient_id, issuer_of_patient_id);
CREATE INDEX mwl_item_placer ON mwl_item (placer_order) WHERE placer_order IS NOT NULL;
CREATE INDEX mwl_item_filler ON mwl_item (filler_order) WHERE filler_order IS NOT NULL;
CREATE INDEX mwl_item_study ON mwl_item (study_uid);
