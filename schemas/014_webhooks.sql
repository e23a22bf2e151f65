-- Webhooks (issue #17): subscriptions, the outbox of their deliveries, the point of
-- the change feed the events were made from, and when each study became stable.
CREATE TABLE webhook (
    id          serial PRIMARY KEY,
    url         text NOT NULL,
    events      text[] NOT NULL,
    -- signs each delivery (HMAC-SHA256, X-Pictor-Signature); NULL: unsigned
    secret      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- deliveries made (their rows are deleted once delivered), and the last one
    delivered   bigint NOT NULL DEFAULT 0,
    last_delivered_at timestamptz,
    -- the last failed attempt's error, kept once the delivery succeeded after all
    last_error  text,
    last_error_at timestamptz
);

-- one row per event and webhook, written in the transaction that reads the feed;
-- delivered in order per (webhook, study), retried until given_up_at; deleted once
-- delivered (the webhook counts them): a delivery costs an insert and a delete
CREATE TABLE webhook_delivery (
    id            bigserial PRIMARY KEY,
    webhook_id    integer NOT NULL REFERENCES webhook (id) ON DELETE CASCADE,
    event_id      uuid NOT NULL,
    event_type    text NOT NULL,
    study_uid     text NOT NULL,
    body          bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    next_at       timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    last_status   integer,
    last_attempt_at timestamptz,
    given_up_at   timestamptz
);
CREATE INDEX webhook_delivery_due ON webhook_delivery (next_at) WHERE given_up_at IS NULL;
CREATE INDEX webhook_delivery_study ON webhook_delivery (webhook_id, study_uid, id)
    WHERE given_up_at IS NULL;

-- how far the events were made from the change feed (one row)
CREATE TABLE event_cursor (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq  bigint NOT NULL
);
INSERT INTO event_cursor (seq) SELECT coalesce(max(seq), 0) FROM change_feed;

-- a study is stable PICTOR_STABLE_SECONDS after its last new instance
CREATE TABLE study_activity (
    study_uid       text PRIMARY KEY,
    last_created_at timestamptz NOT NULL,
    announced       boolean NOT NULL DEFAULT false
);
CREATE INDEX study_activity_unannounced ON study_activity (last_created_at) WHERE NOT announced;
