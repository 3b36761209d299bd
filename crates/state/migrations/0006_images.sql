-- The catalog of custom images (imported or built), shared by every host on
-- the store: one row per image id. `state` is 'ready' (listed under its
-- name), 'removed' (off the list; kept while a sandbox or snapshot uses it)
-- or 'deleted' (nothing uses it: its blob-store manifest and every host's
-- files go; the row stays so that no host brings it back). `record` is the
-- image's record as JSON (source, config, sizes).
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    stored_bytes BIGINT,
    created_at TEXT NOT NULL,
    removed_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS images_ready_name ON images(name) WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS images_state ON images(state);
