-- Routing (issue #17): rules that forward studies to other archives, a persistent
-- queue of forwarding jobs, and what each route has had acknowledged.
CREATE TABLE route (
    id           serial PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    -- [{"keyword": "Modality", "tag": "00080060", "like": ["CT"]}, ...]: every one
    -- must match (one of its patterns; LIKE patterns made from * and ?)
    conditions   jsonb NOT NULL DEFAULT '[]',
    -- dicomweb:<base URL> or dimse:<AET>@<host>:<port>
    destination  text NOT NULL,
    trigger      text NOT NULL CHECK (trigger IN ('study.stable', 'instance.created')),
    -- a bearer token for a DICOMweb destination (never shown again)
    token        text,
    -- de-identification (PS3.15 E): NULL none, else basic[,retain-dates][,clean-descriptors]
    deidentify   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- one forward of (some of) a study's instances; retried with backoff until given up
CREATE TABLE route_job (
    id           bigserial PRIMARY KEY,
    route_id     integer NOT NULL REFERENCES route (id) ON DELETE CASCADE,
    study_uid    text NOT NULL,
    cause        text NOT NULL,            -- study.stable, instance.created, manual
    -- manual exports send every matching instance again, acknowledged or not
    force        boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    next_at      timestamptz NOT NULL DEFAULT now(),
    -- a worker holds the job until then (a crashed one's job is taken up again)
    leased_until timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    sent         integer NOT NULL DEFAULT 0,
    last_error   text,
    last_attempt_at timestamptz,
    done_at      timestamptz,
    given_up_at  timestamptz
);
CREATE INDEX route_job_due ON route_job (next_at) WHERE done_at IS NULL AND given_up_at IS NULL;
CREATE INDEX route_job_study ON route_job (route_id, study_uid, id);
-- new instances of a study join its job that has not started yet
CREATE UNIQUE INDEX route_job_waiting ON route_job (route_id, study_uid)
    WHERE done_at IS NULL AND given_up_at IS NULL AND attempts = 0 AND NOT force;

-- what the destination acknowledged: never sent again by a rule (with the digest of
-- the file sent: an instance stored again with other content is sent again)
CREATE TABLE route_sent (
    route_id     integer NOT NULL REFERENCES route (id) ON DELETE CASCADE,
    sop_uid      text NOT NULL,
    file_sha256  text NOT NULL,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (route_id, sop_uid)
);
