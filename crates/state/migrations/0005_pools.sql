-- Warm pools: a template every sandbox of the pool boots from, and how many
-- to keep booted. A pool's sandboxes are rows of `sandboxes` with its id;
-- `pool_state` is 'warm' while unclaimed (booted, never used), 'claimed' once
-- handed to a user (then an ordinary sandbox).
CREATE TABLE IF NOT EXISTS pools (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
ALTER TABLE sandboxes ADD COLUMN pool_id TEXT;
ALTER TABLE sandboxes ADD COLUMN pool_state TEXT;
CREATE INDEX IF NOT EXISTS sandboxes_pool ON sandboxes(pool_id);
