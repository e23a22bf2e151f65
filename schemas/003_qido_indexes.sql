-- Fuzzy name matching reads only the word index (an index-only scan yields the study
-- keys); measured with benchmarks/qido.py on 100,000 studies.
DROP INDEX study_word_prefix;
CREATE INDEX study_word_prefix ON study_word (word text_pattern_ops, study_pk);
ALTER TABLE study_word ALTER COLUMN word SET STATISTICS 1000;
ANALYZE study_word;
