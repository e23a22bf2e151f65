-- People who sign in (issue #21): local accounts, their browser sessions, and the
-- failed sign-ins that slow and then lock an account or an address.
--
-- app_user: `pictor user add|passwd|disable|enable|list`. The password is kept as an
-- argon2id PHC string (RFC 9106), never in clear; a disabled account keeps its row (the
-- audit trail names it as user:NAME and a name is never reused for someone else).
CREATE TABLE app_user (
    name                text PRIMARY KEY,
    password_hash       text NOT NULL,
    role                text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz NOT NULL DEFAULT now(),
    disabled_at         timestamptz
);

-- user_session: one row per signed-in browser. The cookie carries a 256-bit random
-- secret; only its SHA-256 is kept, so a copy of the table opens no session. A session
-- ends at expires_at (the absolute timeout), or once seen_at is older than the idle
-- timeout, or when its user is disabled or changes password (the rows are deleted).
CREATE TABLE user_session (
    id_hash     bytea PRIMARY KEY,
    user_name   text NOT NULL REFERENCES app_user (name) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    client      text
);
CREATE INDEX user_session_user ON user_session (user_name);
CREATE INDEX user_session_expires ON user_session (expires_at);

-- login_failure: failed sign-ins per account ('user:NAME') and per client address
-- ('addr:IP') in the current window; locked_until is set once there are too many. In
-- the index, so that every node of the archive counts the same attempts.
CREATE TABLE login_failure (
    key           text PRIMARY KEY,
    failures      integer NOT NULL,
    first_at      timestamptz NOT NULL,
    locked_until  timestamptz
);
