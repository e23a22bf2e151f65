-- HL7 messages already answered (issue #18): an interface engine that timed out
-- waiting for an ACK sends the same message again, with the same MSH-10 (Message
-- Control ID) and the same content. The AA given is kept for a week and given again,
-- so a merge or an order is not applied twice; a message that changed nothing (AE) is
-- simply handled again.

CREATE TABLE hl7_message (
    sending_application   text NOT NULL,               -- MSH-3
    sending_facility      text NOT NULL,               -- MSH-4
    control_id            text NOT NULL,               -- MSH-10
    digest                bytea NOT NULL,              -- SHA-256 of the message text
    ack                   text NOT NULL,               -- the ACK sent (MSA AA)
    received_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sending_application, sending_facility, control_id)
);
CREATE INDEX hl7_message_received ON hl7_message (received_at);
