-- Where other servers send lifecycle requests for a node's sandboxes (its
-- server's control-plane API), beside `address` (its proxy).
ALTER TABLE nodes ADD COLUMN api_address TEXT;
