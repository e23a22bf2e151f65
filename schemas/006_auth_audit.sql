-- Access control and the audit trail (issue #8).
--
-- api_token: bearer tokens managed by `pictor token`. Only the SHA-256 of the token is
-- kept: the token itself is shown once, when it is created.
CREATE TABLE api_token (
    name        text PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- audit_event: who accessed what, append-only (HIPAA-style audit controls; exported as
-- FHIR AuditEvent, IHE BALP). A trigger rejects UPDATE, DELETE and TRUNCATE, so
-- neither the server nor someone with its credentials can rewrite history through SQL
-- (a superuser can still drop the trigger: ship the rows elsewhere for tamper evidence).
CREATE TABLE audit_event (
    id                 bigserial PRIMARY KEY,
    at                 timestamptz NOT NULL,
    -- token:NAME, jwt:SUBJECT, link:STUDY, aet:AE_TITLE, anonymous
    who                text NOT NULL,
    client             text,
    -- route name (qido-studies, wado-frames, stow, ...) or dimse-c-store, dimse-c-find, ...
    action             text NOT NULL,
    method             text,
    -- success, denied (401/403), not-found, failure
    outcome            text NOT NULL,
    -- HTTP status code, or DIMSE status
    status             integer NOT NULL,
    study_uids         text[] NOT NULL DEFAULT '{}',
    series_uids        text[] NOT NULL DEFAULT '{}',
    sop_instance_uids  text[] NOT NULL DEFAULT '{}',
    -- the query of a search (QIDO query string, C-FIND keys)
    query              text
);
CREATE INDEX audit_event_at ON audit_event (at);
CREATE INDEX audit_event_who ON audit_event (who, at);
CREATE INDEX audit_event_studies ON audit_event USING gin (study_uids);

CREATE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_event is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_event_append_only
    BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
CREATE TRIGGER audit_event_no_truncate
    BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only();
