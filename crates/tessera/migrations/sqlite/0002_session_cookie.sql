-- Browser sessions: SHA-256 of the session cookie's secret (NULL for API-only sessions).
ALTER TABLE sessions ADD COLUMN cookie_hash BLOB;
