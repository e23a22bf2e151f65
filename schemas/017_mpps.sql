-- Modality Performed Procedure Steps (issue #18; PS3.4 F.7, the MPPS SOP Class): what
-- a modality reports it performed, the worklist items it performed and the series it
-- made. A step is created IN PROGRESS (N-CREATE) and set COMPLETED or DISCONTINUED
-- (N-SET), after which it no longer changes.

CREATE TABLE mpps (
    sop_instance_uid      text PRIMARY KEY,
    status                text NOT NULL,               -- IN PROGRESS, COMPLETED, DISCONTINUED
    -- the first Scheduled Step Attributes item's Study Instance UID
    study_uid             text NOT NULL,
    station_aet           text,                        -- Performed Station AE Title
    -- the whole instance as DICOM JSON: what N-GET answers from
    attrs                 jsonb NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mpps_study ON mpps (study_uid);

-- the worklist items (Scheduled Procedure Steps) a performed step performs
CREATE TABLE mpps_step (
    mpps_uid              text NOT NULL REFERENCES mpps ON DELETE CASCADE,
    item_pk               bigint NOT NULL REFERENCES mwl_item ON DELETE CASCADE,
    PRIMARY KEY (mpps_uid, item_pk)
);
CREATE INDEX mpps_step_item ON mpps_step (item_pk);

-- the series a performed step made (Performed Series Sequence): a series' order is
-- mpps_series -> mpps_step -> mwl_item
CREATE TABLE mpps_series (
    series_uid            text NOT NULL,
    mpps_uid              text NOT NULL REFERENCES mpps ON DELETE CASCADE,
    PRIMARY KEY (series_uid, mpps_uid)
);
CREATE INDEX mpps_series_mpps ON mpps_series (mpps_uid);
