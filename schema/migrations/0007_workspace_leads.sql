-- Every key of a per-workspace table leads with workspace_id (issue 17, "Distributed Postgres on
-- paper"): distributed by workspace_id (Citus), a unique key must hold the distribution column,
-- and a query by workspace stays on one shard.
--
-- quarantine: its primary key becomes (workspace_id, quarantine_id). quarantine_id stays unique
-- on its own (a bigserial), so no row can clash; the ops replay already names both.
ALTER TABLE quarantine DROP CONSTRAINT quarantine_pkey;
ALTER TABLE quarantine ADD PRIMARY KEY (workspace_id, quarantine_id);

-- /alpha/verify counts a key's pushes within its workspace (api/device.py).
DROP INDEX pushes_key_received;
CREATE INDEX pushes_key_received ON pushes (workspace_id, key_id, received_at DESC) WHERE key_id IS NOT NULL;
