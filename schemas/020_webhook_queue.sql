-- The webhooks' outbox by receiver and study (issue #17): one row per (webhook, study)
-- with deliveries pending, saying when the first of them is due (its retry after a
-- failure, the end of its lease while a process sends it). A claim reads the due rows
-- through their index, so a receiver that is away (thousands of deliveries, their
-- first backed off) costs nothing until it is due; finding the first pending delivery
-- of every pair on each claim cost a walk of the whole backlog.

CREATE TABLE webhook_queue (
    webhook_id integer NOT NULL REFERENCES webhook (id) ON DELETE CASCADE,
    study_uid  text NOT NULL,
    next_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (webhook_id, study_uid)
);
CREATE INDEX webhook_queue_due ON webhook_queue (webhook_id, next_at);

INSERT INTO webhook_queue (webhook_id, study_uid, next_at)
SELECT DISTINCT ON (webhook_id, study_uid) webhook_id, study_uid, next_at
  FROM webhook_delivery
 WHERE given_up_at IS NULL
 ORDER BY webhook_id, study_uid, id;

-- when a delivery is due is now the queue's to say
DROP INDEX webhook_delivery_due;
