-- Precomputed study-level QIDO answers (PS3.18 10.6.3.3): the default return attributes,
-- and all of them (includefield=all), as JSON text with RetrieveURL under the base-URL
-- marker. A trigger created at start-up (app/index/fragments.py, from the same compiler
-- code that builds other answers) keeps them current on every INSERT/UPDATE of a study;
-- a search for ~100 studies then sends stored text instead of building 100 objects.
ALTER TABLE study ADD COLUMN qido text, ADD COLUMN qido_all text;

CREATE TABLE pictor_setting (
    name   text PRIMARY KEY,
    value  text NOT NULL
);
