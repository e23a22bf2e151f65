-- Storage tiers (issue #16): each instance's blob is in the hot tier (0) or the cold
-- one (1); a study moves to cold when nobody has read it (nor stored into it) for
-- PICTOR_TIER_AFTER_DAYS. Adding a column with a constant default rewrites no table
-- (PostgreSQL 11+), so this costs nothing on a large index. The trash tables mirror
-- the columns (schemas/008).
ALTER TABLE instance ADD COLUMN tier smallint NOT NULL DEFAULT 0;
ALTER TABLE trash_instance ADD COLUMN tier smallint NOT NULL DEFAULT 0;
ALTER TABLE study ADD COLUMN last_read_at timestamptz, ADD COLUMN tiered_at timestamptz;
ALTER TABLE trash_study ADD COLUMN last_read_at timestamptz, ADD COLUMN tiered_at timestamptz;

-- the instances not in the hot tier, by study and series: what InstanceAvailability
-- (NEARLINE) and the tier status look up; small while most of the archive is hot
CREATE INDEX instance_cold_study ON instance (study_pk) WHERE tier <> 0;
CREATE INDEX instance_cold_series ON instance (series_pk) WHERE tier <> 0;
-- the tier mover's candidates: idle studies, oldest first
CREATE INDEX study_idle ON study ((greatest(coalesce(last_read_at, updated_at), updated_at)));
-- studies read since they were last moved (a recall on read looks for cold ones; a
-- study with cold instances has been moved, so tiered_at is set)
CREATE INDEX study_read_since_moved ON study (last_read_at) WHERE last_read_at > tiered_at;
