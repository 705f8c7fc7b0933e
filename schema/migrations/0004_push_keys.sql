-- The API key that sent each push, so GET /alpha/verify describes the calling key's pushes
-- (`selftune status` shows this machine's link), not its whole workspace's.
--
-- Nullable: pushes written before this migration, and batches queued by an earlier api (which
-- carry no key), have no key; they count for no key. Adding a nullable column without a default
-- rewrites nothing. The index serves verify's count and latest push, and only holds keyed rows.
ALTER TABLE pushes ADD COLUMN key_id text;
CREATE INDEX pushes_key_received ON pushes (key_id, received_at DESC) WHERE key_id IS NOT NULL;
