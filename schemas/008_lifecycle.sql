-- Lifecycle (issue #15): delete into a trash that can be undone, IOCM rejection,
-- corrections of patient and study attributes, patient merge.
--
-- A deleted or rejected instance leaves the index tables (study, series, instance):
-- every reader (QIDO, WADO, C-FIND, C-MOVE/C-GET, the viewer) keeps reading only those,
-- so nothing can show a hidden instance by forgetting a filter. Its row moves to
-- trash_instance with the same columns (a migration that adds a column to instance adds
-- it here too: tests/integration/test_lifecycle.py compares the two tables), and the
-- study and series rows it needs to come back are kept in trash_study / trash_series.
-- Its file stays in the blob store until the trash is purged.

-- Corrections: neither a stored file nor an instance row is rewritten. The study's patch
-- holds the DICOM JSON of the patient and study attributes that replace its instances'
-- own; the study row's columns and fragments carry the new values, and the instances'
-- metadata and Part 10 files get the patch applied as they are read (app.dicom.patch).
-- A correction is then one row whatever the size of the study, and instances stored
-- into the study later carry it too. (Added before trash_study copies the columns.)
ALTER TABLE study ADD COLUMN patch jsonb;

CREATE TABLE trash_instance (LIKE instance);
ALTER TABLE trash_instance
    ADD COLUMN id          bigserial PRIMARY KEY,
    ADD COLUMN study_uid   text NOT NULL,
    ADD COLUMN series_uid  text NOT NULL,
    -- 'deleted', or 'rejected:<code>' (hidden by an IOCM rejection note, table rejection)
    ADD COLUMN reason      text NOT NULL,
    ADD COLUMN deleted_by  text NOT NULL,
    ADD COLUMN deleted_at  timestamptz NOT NULL DEFAULT now(),
    -- the purge removes the row and its file after this (the rows are the purge's job
    -- queue, claimed with FOR UPDATE SKIP LOCKED: DESIGN.md decision 10)
    ADD COLUMN expires_at  timestamptz NOT NULL;
CREATE INDEX trash_instance_study ON trash_instance (study_uid, series_uid);
CREATE INDEX trash_instance_expires ON trash_instance (expires_at);
CREATE INDEX trash_instance_sop ON trash_instance (sop_instance_uid);
CREATE INDEX trash_instance_file ON trash_instance (file_key);

-- the study and series rows as they were at the last deletion (aggregates recomputed
-- on restore)
CREATE TABLE trash_study (LIKE study);
ALTER TABLE trash_study ADD PRIMARY KEY (study_uid);
CREATE TABLE trash_series (LIKE series);
ALTER TABLE trash_series ADD COLUMN study_uid text NOT NULL, ADD PRIMARY KEY (series_uid);

-- IOCM (IHE RAD TF-2 4.66; PS3.16 CID 7011): instances a stored Key Object Selection
-- rejection note references. Storing one of them again is refused while the rejection
-- stands; deleting the note (or restoring the instance from the trash) revokes it.
CREATE TABLE rejection (
    sop_instance_uid  text PRIMARY KEY,
    study_uid         text NOT NULL,
    series_uid        text NOT NULL,
    note_uid          text NOT NULL,
    code              text NOT NULL,
    at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejection_note ON rejection (note_uid);
-- every stored Key Object Selection document once it has been looked at as a possible
-- rejection note (code: its CID 7011 code, NULL when it is not one); a document stored
-- but not looked at (the server stopped in between) is looked at the next start
CREATE TABLE key_object_note (
    note_uid    text PRIMARY KEY,
    code        text,
    at          timestamptz NOT NULL DEFAULT now()
);

-- every correction, with the values it replaced: `pictor update --undo` applies the
-- old values of the latest one not yet undone
CREATE TABLE study_update (
    id          bigserial PRIMARY KEY,
    study_uid   text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    who         text NOT NULL,
    -- update, undo, merge
    kind        text NOT NULL,
    old         jsonb NOT NULL,
    new         jsonb NOT NULL,
    undoes      bigint REFERENCES study_update (id),
    undone      boolean NOT NULL DEFAULT false
);
CREATE INDEX study_update_study ON study_update (study_uid, id);

-- what a lifecycle change did, beside who and which UIDs (old and new values, counts)
ALTER TABLE audit_event ADD COLUMN detail jsonb;
