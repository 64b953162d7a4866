-- Users, sessions and refresh-token families of the embedded store.
-- Times are Unix milliseconds. Sessions have no foreign key to users on purpose: in scale-out
-- mode they live in Redis and users in PostgreSQL, so revocation on user deletion is explicit
-- in the domain, the same for every backend.

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    roles         TEXT NOT NULL DEFAULT '',
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE sessions (
    id                  TEXT PRIMARY KEY NOT NULL,
    user_id             TEXT NOT NULL,
    username            TEXT NOT NULL,
    roles               TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    last_seen_at        INTEGER NOT NULL,
    idle_expires_at     INTEGER NOT NULL,
    absolute_expires_at INTEGER NOT NULL,
    -- min(idle_expires_at, absolute_expires_at): what the live filter and the sweep use.
    expires_at          INTEGER NOT NULL,
    user_agent          TEXT,
    ip                  TEXT,
    refresh_generation  INTEGER NOT NULL,
    refresh_hash        BLOB NOT NULL,
    prev_refresh_hash   BLOB,
    rotated_at          INTEGER
) STRICT;

CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
