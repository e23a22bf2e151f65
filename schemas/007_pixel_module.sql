-- The rest of the Image Pixel module a codec needs (PS3.3 C.7.6.3: Pixel Representation
-- (0028,0103), Planar Configuration (0028,0006)), recorded at ingest beside rows,
-- columns, bits and photometric interpretation (001): a frame is decoded from its own
-- bytes with these, never by re-reading the stored file (issue #14).
--
-- Adding nullable columns is instant whatever the archive's size; rows stored before
-- this migration are not rewritten (a backfill of millions of rows would hold up the
-- start for minutes): app/index/retrieve.py reads their values from the stored
-- metadata instead.
ALTER TABLE instance
    ADD COLUMN pixel_representation smallint,
    ADD COLUMN planar_configuration smallint;
