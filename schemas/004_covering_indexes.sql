-- Covering indexes: a page of studies is chosen from the index alone (index-only scan),
-- without visiting one heap page per matching study. EXPLAIN on 100,000 studies:
-- PatientName=CAN* visited 573 heap pages (1.7 ms) to find 586 candidate keys.
DROP INDEX study_patient_name;
CREATE INDEX study_patient_name ON study (patient_name text_pattern_ops) INCLUDE (pk);
DROP INDEX study_date_idx;
CREATE INDEX study_date_idx ON study (study_date) INCLUDE (pk, modalities);
