-- The tables of the single-host server, kept as they were (`IF NOT EXISTS`:
-- a data dir from before migrations already has them). Portable SQL: the
-- same statements run on SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    pending_reason TEXT,
    termination_reason TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    terminated_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS sandboxes_live_name ON sandboxes(namespace, name)
    WHERE name IS NOT NULL AND status NOT IN ('terminated', 'failed', 'timeout');
CREATE INDEX IF NOT EXISTS sandboxes_status ON sandboxes(status);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    snapshot_type TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    spec TEXT NOT NULL,
    size_bytes BIGINT,
    stored_bytes BIGINT,
    pause_ms BIGINT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_sandbox ON snapshots(namespace, sandbox_id);
