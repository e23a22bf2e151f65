-- Fixity (issue #19): the SHA-256 recorded at ingest is checked by `pictor verify` and
-- by a background scrub; what they find stays here until the file checks out again
-- (repaired from a backup, or the instance deleted).

CREATE TABLE fixity_problem (
    file_key          text PRIMARY KEY,
    sop_instance_uid  text NOT NULL,
    study_uid         text NOT NULL,
    -- missing: no file; changed: its size or SHA-256 differs from the one at ingest
    problem           text NOT NULL CHECK (problem IN ('missing', 'changed')),
    found_at          timestamptz NOT NULL DEFAULT now(),
    checked_at        timestamptz NOT NULL DEFAULT now()
);

-- where the scrub is in its round over the instances (one row)
CREATE TABLE scrub_state (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    position      bigint NOT NULL DEFAULT 0,
    round_started timestamptz NOT NULL DEFAULT now(),
    last_round    timestamptz
);
INSERT INTO scrub_state DEFAULT VALUES;
