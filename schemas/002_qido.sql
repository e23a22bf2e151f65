-- QIDO-RS (PS3.18 10.6): fragments as jsonb (keyed access without re-parsing), the
-- instance-level fragment, person-name words for fuzzy matching, and the indexes the
-- searches use (chosen with EXPLAIN on a seeded index of 100,000 studies / 1,000,000
-- instances: see benchmarks/qido.py).

ALTER TABLE study ALTER COLUMN attrs TYPE jsonb USING attrs::jsonb;
ALTER TABLE series ALTER COLUMN attrs TYPE jsonb USING attrs::jsonb;

ALTER TABLE instance ADD COLUMN attrs jsonb NOT NULL DEFAULT '{}';
UPDATE instance SET attrs = coalesce((
    SELECT jsonb_object_agg(key, value) FROM jsonb_each(metadata::jsonb)
    WHERE key IN ('00080005', '00080008', '00080016', '00080018', '00080022', '00080023',
                  '00080032', '00080033', '00080201', '00200012', '00200013', '00280008',
                  '00280010', '00280011', '00280100', '0040A491', '0040A493', '00420010')
), '{}');

-- PN columns hold the alphabetic component group, the one queries match (PS3.5 6.2.1)
UPDATE study SET patient_name = nullif(split_part(patient_name, '=', 1), ''),
                 referring_physician_name = nullif(split_part(referring_physician_name, '=', 1), '');

-- normalised name components (case-folded, accents removed) for fuzzymatching=true
CREATE TABLE study_word (
    study_pk  bigint NOT NULL REFERENCES study (pk) ON DELETE CASCADE,
    word      text NOT NULL,
    PRIMARY KEY (study_pk, word)
);
INSERT INTO study_word (study_pk, word)
SELECT DISTINCT pk, w FROM study, regexp_split_to_table(lower(coalesce(patient_name, '')), '[\^= ,.]+') AS w
WHERE w <> '';
CREATE INDEX study_word_prefix ON study_word (word text_pattern_ops);

-- prefix wildcards (DOE*) use text_pattern_ops btrees, which serve equality as well
DROP INDEX study_patient_id;
DROP INDEX study_accession;
CREATE INDEX study_patient_id ON study (patient_id text_pattern_ops);
CREATE INDEX study_accession ON study (accession_number text_pattern_ops);
CREATE INDEX study_patient_name ON study (patient_name text_pattern_ops);
CREATE INDEX study_modalities ON study USING gin (modalities);
CREATE INDEX series_modality ON series (modality);
CREATE INDEX instance_sop_class ON instance (sop_class_uid);
