-- The rest of the Image Pixel module a codec needs (PS3.3 C.7.6.3: Pixel Representation
-- (0028,0103), Planar Configuration (0028,0006)), recorded at ingest beside rows,
-- columns, bits and photometric interpretation (001): a frame is decoded from its own
-- bytes with these, never by re-reading the stored file (issue #14). Existing rows take
-- them from their stored metadata.
ALTER TABLE instance
    ADD COLUMN pixel_representation smallint,
    ADD COLUMN planar_configuration smallint;

UPDATE instance SET
    pixel_representation = (metadata::jsonb #>> '{00280103,Value,0}')::smallint,
    planar_configuration = (metadata::jsonb #>> '{00280006,Value,0}')::smallint
WHERE rows IS NOT NULL;
