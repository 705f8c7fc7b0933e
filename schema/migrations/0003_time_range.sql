-- Record times must be instants of the years 1 to 9999 in UTC.
--
-- RFC 3339 lets an offset carry 9999-12-31 into year 10000 in UTC, or 0001-01-01 into
-- year 0. Postgres stores both, but no client library that holds years 1 to 9999 (Python's
-- among them) can read such a row back: every read that met it would fail. With these
-- constraints Postgres refuses the record, and the worker quarantines it with the reason,
-- as it does any value Postgres refuses (workers/writer.py). NOT VALID: rows already
-- stored are not re-checked (a full scan of every table, under lock); new writes are.

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('sessions', 'normalized_at'), ('sessions', 'started_at'), ('sessions', 'ended_at'),
        ('prompts', 'normalized_at'), ('prompts', 'occurred_at'),
        ('skill_invocations', 'normalized_at'), ('skill_invocations', 'occurred_at'),
        ('execution_facts', 'normalized_at'), ('execution_facts', 'occurred_at'),
        ('normalization_runs', 'normalized_at'), ('normalization_runs', 'run_at'),
        ('evolution_evidence', 'timestamp'),
        ('orchestrate_runs', 'timestamp'),
        ('grading_results', 'graded_at'),
        ('improvement_signals', 'timestamp'), ('improvement_signals', 'consumed_at')
    ) AS t (table_name, column_name)
    LOOP
        EXECUTE format(
            'ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I >= %L AND %I < %L) NOT VALID',
            c.table_name, c.table_name || '_' || c.column_name || '_range',
            c.column_name, '0001-01-01 00:00:00+00', c.column_name, '10000-01-01 00:00:00+00'
        );
    END LOOP;
END
$$;
