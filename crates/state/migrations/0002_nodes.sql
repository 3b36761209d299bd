-- The hosts that run sandboxes, and which one runs each sandbox (NULL: a
-- row from before nodes, run by the single host's server).
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    address TEXT,
    state TEXT NOT NULL,
    capacity TEXT NOT NULL,
    usage TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
ALTER TABLE sandboxes ADD COLUMN node_id TEXT;
ALTER TABLE snapshots ADD COLUMN node_id TEXT;
CREATE INDEX IF NOT EXISTS sandboxes_node ON sandboxes(node_id);
