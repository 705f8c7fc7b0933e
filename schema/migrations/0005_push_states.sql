-- A push row has the states a reader can see (issue 14 step 7): 'processed' or 'failed'.
--
-- 'processing' was only ever written and replaced inside the worker's one transaction per
-- batch (claim, records and finish commit together), so no committed row holds it and no
-- reader ever saw it: a push being written reads 'queued' (GET /v2/pushes/{id}) until it
-- commits. The worker now inserts its claim as 'processed', the state it commits with.
--
-- NOT VALID, as migration 0003: the constraint holds for every new write, and rows already
-- stored are not re-scanned (a full scan of pushes under this file's ACCESS EXCLUSIVE lock);
-- none of them can hold 'processing', which was never committed.
ALTER TABLE pushes DROP CONSTRAINT pushes_status_check;
ALTER TABLE pushes ADD CONSTRAINT pushes_status_check CHECK (status IN ('processed', 'failed')) NOT VALID;
