-- The Unified Worklist (issue #18; PS3.4 CC, UPS; PS3.18 11, UPS-RS): workitems,
-- the subscriptions of Application Entities to them, and the event reports waiting
-- for their subscriber's notification channel.

CREATE TABLE ups (
    uid                   text PRIMARY KEY,            -- the Workitem (SOP Instance) UID
    -- Procedure Step State (0074,1000): SCHEDULED, IN PROGRESS, COMPLETED, CANCELED
    state                 text NOT NULL,
    -- Transaction UID (0008,1195) of the performer that took the workitem IN PROGRESS:
    -- never returned to anyone (PS3.4 CC.2.7), required for every change it makes
    transaction_uid       text,
    -- matching keys (PS3.4 CC.2.6 Table CC.2.5-3 "Key" column), copied from attrs
    priority              text NOT NULL,               -- HIGH, MEDIUM, LOW (0074,1200)
    worklist_label        text NOT NULL,               -- (0074,1202)
    step_label            text NOT NULL,               -- Procedure Step Label (0074,1204)
    input_readiness       text NOT NULL,               -- (0040,4041)
    scheduled_start       timestamp,                   -- (0040,4005), local time
    patient_id            text,
    patient_name          text,
    study_uid             text,                        -- Study Instance UID (0020,000D)
    accession_number      text,
    station_aet           text,  -- Scheduled Station Name Code Sequence's first code value
    workitem_code         text,  -- Scheduled Workitem Code Sequence's first code value
    cancel_requested      boolean NOT NULL DEFAULT false,
    -- the whole workitem as DICOM JSON, without the Transaction UID
    attrs                 jsonb NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
-- the worklist as a reader sees it: open steps, STAT (HIGH) first, oldest first
CREATE INDEX ups_open ON ups (state, priority, scheduled_start);
CREATE INDEX ups_study ON ups (study_uid);

-- Subscriptions (PS3.4 CC.2.3): to one workitem (workitem = its UID), to the whole
-- worklist (1.2.840.10008.5.1.4.34.5) or to the workitems a filter matches
-- (1.2.840.10008.5.1.4.34.5.1, the filter kept as the query string that gave it).
-- A worklist subscription makes a workitem subscription for every workitem that is
-- created while it is not suspended.
CREATE TABLE ups_subscription (
    aet                   text NOT NULL,
    workitem              text NOT NULL,
    deletion_lock         boolean NOT NULL DEFAULT false,
    filter                text,
    suspended             boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aet, workitem)
);
CREATE INDEX ups_subscription_workitem ON ups_subscription (workitem);

-- Event reports (PS3.4 CC.2.4) not yet sent to their subscriber: written in the
-- transaction that made the change, sent in order over the subscriber's WebSocket
-- (PS3.18 11.11), then deleted. Any node may send them (DESIGN.md decision 10).
CREATE TABLE ups_event (
    id                    bigserial PRIMARY KEY,
    aet                   text NOT NULL,
    message               jsonb NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ups_event_aet ON ups_event (aet, id);
CREATE INDEX ups_event_created ON ups_event (created_at);
