-- TOAST compression lz4, not the default pglz, for the columns that hold long texts
-- (issue 15 item 2): prompts, signal queries, evidence texts, grading JSON strings, and
-- quarantined records kept verbatim. lz4 compresses and decompresses several times faster
-- than pglz for a similar ratio on text, and Postgres compresses every value of a row
-- past ~2 kB as the worker writes it, inside the batch's transaction.
--
-- Metadata only: no rewrite, values already stored stay pglz (both read back alike), new
-- values are lz4. A server built without lz4 refuses SET COMPRESSION lz4; there the columns
-- keep pglz and the migration still applies (NOTICE).
DO $$
BEGIN
    ALTER TABLE prompts ALTER COLUMN prompt_text SET COMPRESSION lz4;
    ALTER TABLE improvement_signals ALTER COLUMN query SET COMPRESSION lz4;
    ALTER TABLE evolution_evidence
        ALTER COLUMN rationale SET COMPRESSION lz4,
        ALTER COLUMN original_text SET COMPRESSION lz4,
        ALTER COLUMN proposed_text SET COMPRESSION lz4,
        ALTER COLUMN details SET COMPRESSION lz4,
        ALTER COLUMN eval_set_json SET COMPRESSION lz4,
        ALTER COLUMN validation_json SET COMPRESSION lz4;
    ALTER TABLE grading_results
        ALTER COLUMN expectations_json SET COMPRESSION lz4,
        ALTER COLUMN claims_json SET COMPRESSION lz4,
        ALTER COLUMN eval_feedback_json SET COMPRESSION lz4,
        ALTER COLUMN failure_feedback_json SET COMPRESSION lz4,
        ALTER COLUMN execution_metrics_json SET COMPRESSION lz4;
    ALTER TABLE quarantine ALTER COLUMN raw SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4: long texts stay compressed with pglz';
END
$$;
