-- selftune ingest: workspaces, keys, pushes, quarantine, and one table per record type.
-- Every record table is keyed by workspace; no foreign keys between record tables
-- (children may arrive before, after, or without their session).

CREATE TABLE workspaces (
    workspace_id text PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id       text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces,
    key_hash     text NOT NULL UNIQUE,       -- hex SHA-256 of the key; the key itself is never stored
    key_prefix   text NOT NULL,              -- first characters, for telling keys apart
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_workspace ON api_keys (workspace_id);

-- One row per push a worker handled; committed in the same transaction as its records.
CREATE TABLE pushes (
    workspace_id   text NOT NULL,
    push_id        text NOT NULL,
    status         text NOT NULL CHECK (status IN ('processing', 'processed', 'failed')),
    received_at    timestamptz NOT NULL,
    pushed_at      timestamptz,
    cli_version    text,
    accepted       jsonb NOT NULL DEFAULT '{}',   -- records written, by type
    rejected       jsonb NOT NULL DEFAULT '{}',   -- records quarantined, by type
    attempts       integer NOT NULL DEFAULT 1,
    started_at     timestamptz,
    processed_at   timestamptz,
    write_ms       double precision,
    error          text,
    PRIMARY KEY (workspace_id, push_id)
);
CREATE INDEX pushes_received ON pushes (received_at);

-- Records that failed validation, kept verbatim (bytes as sent) for replay after a fix.
CREATE TABLE quarantine (
    quarantine_id bigserial PRIMARY KEY,
    workspace_id  text NOT NULL,
    push_id       text NOT NULL,
    record_type   text NOT NULL,
    record_index  integer NOT NULL,
    error         text NOT NULL,
    raw           bytea NOT NULL,
    received_at   timestamptz NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    replayed_at   timestamptz,
    UNIQUE (workspace_id, push_id, record_type, record_index)
);
CREATE INDEX quarantine_pending ON quarantine (workspace_id) WHERE replayed_at IS NULL;

CREATE TABLE sessions (
    workspace_id          text NOT NULL,
    session_id            text NOT NULL,
    record_kind           text NOT NULL,
    schema_version        text NOT NULL,
    normalizer_version    text NOT NULL,
    normalized_at         timestamptz NOT NULL,
    platform              text NOT NULL,
    capture_mode          text NOT NULL,
    raw_source_ref        jsonb NOT NULL,
    source_session_kind   text NOT NULL,
    started_at            timestamptz,
    ended_at              timestamptz,
    external_session_id   text,
    parent_session_id     text,
    agent_id              text,
    agent_type            text,
    agent_cli             text,
    session_key           text,
    channel               text,
    workspace_path        text,
    repo_root             text,
    repo_remote           text,
    branch                text,
    commit_sha            text,
    permission_mode       text,
    approval_policy       text,
    sandbox_policy        text,
    provider              text,
    model                 text,
    completion_status     text,
    end_reason            text,
    -- normalized_at of the version each field's value came from: later versions win field by field.
    field_versions        jsonb NOT NULL DEFAULT '{}',
    ingested_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, session_id)
);

CREATE TABLE prompts (
    workspace_id          text NOT NULL,
    prompt_id             text NOT NULL,
    record_kind           text NOT NULL,
    schema_version        text NOT NULL,
    normalizer_version    text NOT NULL,
    normalized_at         timestamptz NOT NULL,
    platform              text NOT NULL,
    capture_mode          text NOT NULL,
    raw_source_ref        jsonb NOT NULL,
    source_session_kind   text NOT NULL,
    session_id            text NOT NULL,
    occurred_at           timestamptz NOT NULL,
    prompt_text           text NOT NULL,
    prompt_kind           text NOT NULL,
    is_actionable         boolean NOT NULL,
    prompt_hash           text,
    prompt_index          bigint,
    parent_prompt_id      text,
    source_message_id     text,
    ingested_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, prompt_id)
);
CREATE INDEX prompts_session ON prompts (workspace_id, session_id);

CREATE TABLE skill_invocations (
    workspace_id          text NOT NULL,
    skill_invocation_id   text NOT NULL,
    record_kind           text NOT NULL,
    schema_version        text NOT NULL,
    normalizer_version    text NOT NULL,
    normalized_at         timestamptz NOT NULL,
    platform              text NOT NULL,
    capture_mode          text NOT NULL,
    raw_source_ref        jsonb NOT NULL,
    source_session_kind   text NOT NULL,
    session_id            text NOT NULL,
    occurred_at           timestamptz NOT NULL,
    skill_name            text NOT NULL,
    invocation_mode       text NOT NULL,
    triggered             boolean NOT NULL,
    confidence            double precision NOT NULL,
    matched_prompt_id     text,
    skill_path            text,
    skill_version_hash    text,
    tool_name             text,
    tool_call_id          text,
    agent_type            text,
    ingested_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, skill_invocation_id)
);
CREATE INDEX skill_invocations_session ON skill_invocations (workspace_id, session_id);

CREATE TABLE execution_facts (
    workspace_id          text NOT NULL,
    session_id            text NOT NULL,
    occurred_at           timestamptz NOT NULL,
    prompt_id             text,
    -- execution_fact_id is a row number local to one machine: stored, not a key.
    execution_fact_id     text NOT NULL,
    record_kind           text NOT NULL,
    schema_version        text NOT NULL,
    normalizer_version    text NOT NULL,
    normalized_at         timestamptz NOT NULL,
    platform              text NOT NULL,
    capture_mode          text NOT NULL,
    raw_source_ref        jsonb NOT NULL,
    source_session_kind   text NOT NULL,
    tool_calls_json       jsonb NOT NULL,
    total_tool_calls      bigint NOT NULL,
    assistant_turns       bigint NOT NULL,
    errors_encountered    bigint NOT NULL,
    bash_commands_redacted jsonb,
    input_tokens          bigint,
    output_tokens         bigint,
    duration_ms           double precision,
    completion_status     text,
    end_reason            text,
    prompt_key            text GENERATED ALWAYS AS (coalesce(prompt_id, '')) STORED,
    ingested_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, session_id, occurred_at, prompt_key)
);

CREATE TABLE normalization_runs (
    workspace_id          text NOT NULL,
    run_id                text NOT NULL,
    record_kind           text NOT NULL,
    schema_version        text NOT NULL,
    normalizer_version    text NOT NULL,
    normalized_at         timestamptz NOT NULL,
    platform              text NOT NULL,
    capture_mode          text NOT NULL,
    raw_source_ref        jsonb NOT NULL,
    run_at                timestamptz NOT NULL,
    raw_records_seen      bigint NOT NULL,
    canonical_records_written bigint NOT NULL,
    repair_applied        boolean NOT NULL,
    ingested_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, run_id)
);

CREATE TABLE evolution_evidence (
    workspace_id          text NOT NULL,
    evidence_id           text NOT NULL,
    skill_name            text NOT NULL,
    target                text NOT NULL,
    stage                 text NOT NULL,
    proposal_id           text,
    timestamp             timestamptz,
    skill_path            text,
    rationale             text,
    confidence            double precision,
    details               jsonb,
    original_text         text,
    proposed_text         text,
    eval_set_json         jsonb,
    validation_json       jsonb,
    raw_source_ref        jsonb,
    ingested_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, evidence_id)
);

CREATE TABLE orchestrate_runs (
    workspace_id          text NOT NULL,
    run_id                text NOT NULL,
    timestamp             timestamptz NOT NULL,
    elapsed_ms            double precision NOT NULL,
    dry_run               boolean NOT NULL,
    approval_mode         text NOT NULL,
    total_skills          bigint NOT NULL,
    evaluated             bigint NOT NULL,
    evolved               bigint NOT NULL,
    deployed              bigint NOT NULL,
    watched               bigint NOT NULL,
    skipped               bigint NOT NULL,
    skill_actions         jsonb NOT NULL,
    ingested_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, run_id)
);

CREATE TABLE grading_results (
    workspace_id          text NOT NULL,
    grading_id            text NOT NULL,
    session_id            text NOT NULL,
    skill_name            text NOT NULL,
    graded_at             timestamptz NOT NULL,
    transcript_path       text,
    pass_rate             double precision,
    mean_score            double precision,
    score_std_dev         double precision,
    passed_count          bigint,
    failed_count          bigint,
    total_count           bigint,
    expectations_json     text,
    claims_json           text,
    eval_feedback_json    text,
    failure_feedback_json text,
    execution_metrics_json text,
    ingested_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, grading_id)
);
CREATE INDEX grading_results_skill ON grading_results (workspace_id, skill_name, graded_at DESC);

CREATE TABLE improvement_signals (
    workspace_id          text NOT NULL,
    signal_id             text NOT NULL,
    timestamp             timestamptz NOT NULL,
    session_id            text NOT NULL,
    query                 text NOT NULL,
    signal_type           text NOT NULL,
    consumed              boolean NOT NULL,
    mentioned_skill       text,
    consumed_at           timestamptz,
    consumed_by_run       text,       -- an orchestrate_runs.run_id, which may arrive before or after
    ingested_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, signal_id)
);
CREATE INDEX improvement_signals_recent ON improvement_signals (workspace_id, timestamp DESC);
