-- Reading back (SPEC 7): device-code enrollment, and indexes for the read endpoints.

-- One row per device-code request (RFC 8628). The device code is the secret the CLI
-- polls with: only its SHA-256 is stored. The user code is what a person reads out to
-- an operator, who approves it from the ops command line; it grants nothing by itself,
-- so it is stored as shown (XXXX-XXXX) and `device list` can print it.
-- No foreign keys: workspace_id is checked when an operator approves, key_id is set
-- in the same transaction that creates the key.
CREATE TABLE device_codes (
    device_code_hash text PRIMARY KEY,           -- hex SHA-256 of the device code
    user_code        text NOT NULL UNIQUE,       -- XXXX-XXXX
    client_id        text NOT NULL,
    scope            text NOT NULL DEFAULT '',
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'approved', 'denied', 'issued')),
    workspace_id     text,                       -- the workspace an operator approved it for
    interval_s       integer NOT NULL,           -- grows by 5 s at each slow_down (RFC 8628 3.5)
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    last_polled_at   timestamptz,                -- last poll that was answered (not slow_down)
    decided_at       timestamptz,                -- approved or denied
    issued_at        timestamptz,                -- the key was handed out (once)
    key_id           text                        -- the api_keys row created at that moment
);
CREATE INDEX device_codes_expires ON device_codes (expires_at);

-- GET /alpha/verify: the workspace's last push, without scanning its pushes.
CREATE INDEX pushes_workspace_received ON pushes (workspace_id, received_at DESC);

-- GET /v2/signals: newest first, with signal_id breaking ties, so keyset pages
-- ((timestamp, signal_id) < cursor) read the index in order and never sort.
-- Replaces improvement_signals_recent, which had no tie-breaker.
DROP INDEX IF EXISTS improvement_signals_recent;
CREATE INDEX improvement_signals_newest
    ON improvement_signals (workspace_id, timestamp DESC, signal_id DESC);
-- ?consumed=false, the inbox an orchestrate run works through; small when runs keep up.
-- mentioned_skill is carried so the unconsumed count per skill reads only this index.
CREATE INDEX improvement_signals_unconsumed
    ON improvement_signals (workspace_id, timestamp DESC, signal_id DESC)
    INCLUDE (mentioned_skill) WHERE NOT consumed;
-- ?skill=, and the distinct skills of GET /v2/skills.
CREATE INDEX improvement_signals_skill
    ON improvement_signals (workspace_id, mentioned_skill, timestamp DESC, signal_id DESC);

-- GET /v2/skills/{skill}/grading: newest first with grading_id breaking ties; the
-- columns of the pass rate are carried so the daily trend and /v2/skills read only
-- the index. Replaces grading_results_skill, which had no tie-breaker.
DROP INDEX IF EXISTS grading_results_skill;
CREATE INDEX grading_results_skill_newest
    ON grading_results (workspace_id, skill_name, graded_at DESC, grading_id DESC)
    INCLUDE (pass_rate, passed_count, total_count);
