-- Lookups by id or name (`WHERE id = $1 OR name = $1`, every proxied
-- request and every API call naming a sandbox) read two indexes instead of
-- every row ever created: `sandboxes_live_name` leads with the namespace
-- and holds only live sandboxes, so it cannot serve a name alone.
CREATE INDEX IF NOT EXISTS sandboxes_name ON sandboxes(name);
