-- Secrets every node of one archive must share (issue #16): the key that signs study
-- links. It lived in each data directory's `link-secret` file, so two nodes behind a
-- load balancer signed with different keys and a link made on one failed on the other.
-- The first node to start writes it (an existing `link-secret` file's value, so links
-- already issued keep working); every node reads the same row. Backed up with the index.

CREATE TABLE archive_secret (
    name        text PRIMARY KEY,
    value       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
