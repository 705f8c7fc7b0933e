-- Indexes no read uses (issue 15, "each secondary index against the read it serves").
--
-- prompts_session and skill_invocations_session, (workspace_id, session_id): no endpoint and no
-- ops command looks prompts or skill invocations up by session. Each costs every insert an index
-- entry: `python -m bench.writer_variants --variants jsonb,jsonb-noindex` measured the writer
-- without them at 990 instead of 1,045 WAL bytes per record (100-record pushes) and 1,023 instead
-- of 1,081 (500), and +3 to +12 % rows/s. A read by session would add its index back with it.
DROP INDEX IF EXISTS prompts_session;
DROP INDEX IF EXISTS skill_invocations_session;
