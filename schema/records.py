"""The nine record types a push carries, as msgspec Structs (SPEC section 3).

These Structs are the single source of truth: the api validates with them, the
workers decode with them, and the table columns are checked against them by a
test. Unknown fields are ignored (msgspec's default), optional fields default
to None. Optional ("O") fields also accept an explicit null: null and absent
mean the same thing to storage, and rejecting null would only lose records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# -- constraints, named once -------------------------------------------------

INT8_MAX = 2**63 - 1  # Postgres bigint: a larger integer cannot be stored

NonEmptyStr = Annotated[str, Meta(min_length=1)]
Count = Annotated[int, Meta(ge=0, le=INT8_MAX)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
# JSON has no NaN/Infinity literals, but 1e400 decodes to inf: bound every float.
FiniteFloat = Annotated[float, Meta(ge=-1.7e308, le=1.7e308)]
NonNegativeFloat = Annotated[float, Meta(ge=0.0, le=1.7e308)]
# RFC 3339; a naive timestamp is read as UTC. msgspec documents the format only
# for tz-aware types, so the JSON Schema says it here.
Timestamp = Annotated[datetime, Meta(extra_json_schema={"format": "date-time"})]
# An offset can carry 0001-01-01 or 9999-12-31 out of the years Python (and so
# the api's answers) can hold in UTC; Postgres refuses such a record (migration 0003).
OUT_OF_RANGE_MESSAGE = "time is outside the years 1 to 9999 in UTC"


def in_utc_range(ts: datetime) -> bool:
    """Whether a time is an instant of the years 1 to 9999 in UTC (a naive time is read as UTC)."""
    if ts.tzinfo is None:
        return True
    try:
        ts.astimezone(UTC)
    except OverflowError:
        return False
    return True


Platform = Literal["claude_code", "codex", "opencode", "openclaw", "pi"]
CaptureMode = Literal["hook", "replay", "wrapper", "batch_ingest", "repair"]
SourceSessionKind = Literal["interactive", "replayed", "synthetic", "repaired"]
CompletionStatus = Literal["completed", "failed", "interrupted", "cancelled", "unknown"]
PromptKind = Literal[
    "user",
    "continuation",
    "task_notification",
    "teammate_message",
    "system_instruction",
    "tool_output",
    "meta",
    "unknown",
]
InvocationMode = Literal["explicit", "implicit", "inferred", "repaired"]
ApprovalMode = Literal["auto", "review"]


class RawSourceRef(msgspec.Struct, omit_defaults=True):
    """Where on the developer's machine a canonical record came from."""

    path: str | None = None
    line: Count | None = None
    event_type: str | None = None
    raw_id: NonEmptyStr | None = None
    metadata: dict[str, Any] | None = None


# -- the five canonical kinds -------------------------------------------------


class _Canonical(msgspec.Struct, kw_only=True):
    schema_version: NonEmptyStr
    normalizer_version: NonEmptyStr
    normalized_at: Timestamp
    platform: Platform
    capture_mode: CaptureMode
    raw_source_ref: RawSourceRef


class _SessionScoped(_Canonical, kw_only=True):
    source_session_kind: SourceSessionKind
    session_id: NonEmptyStr


class Session(_SessionScoped, kw_only=True):
    record_kind: Literal["session"]
    started_at: Timestamp | None = None
    ended_at: Timestamp | None = None
    external_session_id: NonEmptyStr | None = None
    parent_session_id: NonEmptyStr | None = None
    agent_id: NonEmptyStr | None = None
    agent_type: str | None = None
    agent_cli: str | None = None
    session_key: str | None = None
    channel: str | None = None
    workspace_path: str | None = None
    repo_root: str | None = None
    repo_remote: str | None = None
    branch: str | None = None
    commit_sha: str | None = None
    permission_mode: str | None = None
    approval_policy: str | None = None
    sandbox_policy: str | None = None
    provider: str | None = None
    model: str | None = None
    completion_status: CompletionStatus | None = None
    end_reason: str | None = None


class Prompt(_SessionScoped, kw_only=True):
    record_kind: Literal["prompt"]
    prompt_id: NonEmptyStr
    occurred_at: Timestamp
    prompt_text: NonEmptyStr
    prompt_kind: PromptKind
    is_actionable: bool
    prompt_hash: str | None = None
    prompt_index: Count | None = None
    parent_prompt_id: NonEmptyStr | None = None
    source_message_id: NonEmptyStr | None = None


class SkillInvocation(_SessionScoped, kw_only=True):
    record_kind: Literal["skill_invocation"]
    skill_invocation_id: NonEmptyStr
    occurred_at: Timestamp
    skill_name: NonEmptyStr
    invocation_mode: InvocationMode
    triggered: bool
    confidence: Fraction
    matched_prompt_id: NonEmptyStr | None = None
    skill_path: str | None = None
    skill_version_hash: str | None = None
    tool_name: str | None = None
    tool_call_id: NonEmptyStr | None = None
    agent_type: str | None = None


class ExecutionFact(_SessionScoped, kw_only=True):
    record_kind: Literal["execution_fact"]
    # A row number local to one machine: stored, but not part of the key.
    execution_fact_id: NonEmptyStr
    occurred_at: Timestamp
    tool_calls_json: dict[str, FiniteFloat]
    total_tool_calls: Count
    assistant_turns: Count
    errors_encountered: Count
    prompt_id: NonEmptyStr | None = None
    bash_commands_redacted: list[str] | None = None
    input_tokens: Count | None = None
    output_tokens: Count | None = None
    duration_ms: NonNegativeFloat | None = None
    completion_status: CompletionStatus | None = None
    end_reason: str | None = None


class NormalizationRun(_Canonical, kw_only=True):
    record_kind: Literal["normalization_run"]
    run_id: NonEmptyStr
    run_at: Timestamp
    raw_records_seen: Count
    canonical_records_written: Count
    repair_applied: bool


# -- the four cloud-side kinds --------------------------------------------------


class EvolutionEvidence(msgspec.Struct, kw_only=True):
    evidence_id: NonEmptyStr
    skill_name: NonEmptyStr
    target: str
    stage: str
    proposal_id: NonEmptyStr | None = None
    timestamp: Timestamp | None = None
    skill_path: str | None = None
    rationale: str | None = None
    confidence: Fraction | None = None
    details: Any = None
    original_text: str | None = None
    proposed_text: str | None = None
    eval_set_json: Any = None
    validation_json: Any = None
    raw_source_ref: RawSourceRef | None = None


class SkillAction(msgspec.Struct, omit_defaults=True):
    """One skill's outcome in an orchestrate run."""

    skill: str
    # Any string: the CLI sends evolve|watch|skip|package-search and may add more.
    action: str
    reason: str
    deployed: bool | None = None
    rolledBack: bool | None = None  # noqa: N815 (the CLI's own spelling)
    alert: str | None = None
    elapsed_ms: NonNegativeFloat | None = None
    llm_calls: Count | None = None


class OrchestrateRun(msgspec.Struct, kw_only=True):
    run_id: NonEmptyStr
    timestamp: Timestamp
    elapsed_ms: NonNegativeFloat
    dry_run: bool
    approval_mode: ApprovalMode
    total_skills: Count
    evaluated: Count
    evolved: Count
    deployed: Count
    watched: Count
    skipped: Count
    skill_actions: list[SkillAction]


class GradingResult(msgspec.Struct, kw_only=True):
    grading_id: NonEmptyStr
    session_id: NonEmptyStr
    skill_name: NonEmptyStr
    graded_at: Timestamp
    transcript_path: str | None = None
    pass_rate: Fraction | None = None
    mean_score: FiniteFloat | None = None
    score_std_dev: FiniteFloat | None = None
    passed_count: Count | None = None
    failed_count: Count | None = None
    total_count: Count | None = None
    expectations_json: str | None = None
    claims_json: str | None = None
    eval_feedback_json: str | None = None
    failure_feedback_json: str | None = None
    execution_metrics_json: str | None = None


class ImprovementSignal(msgspec.Struct, kw_only=True):
    signal_id: NonEmptyStr
    timestamp: Timestamp
    session_id: NonEmptyStr
    query: NonEmptyStr
    # Any non-empty string: correction, explicit_request, unmatched, low_grade, ...
    signal_type: NonEmptyStr
    consumed: bool
    mentioned_skill: str | None = None
    consumed_at: Timestamp | None = None
    consumed_by_run: str | None = None


# The arrays of a push, in the order the workers write them, with their Struct.
RECORD_TYPES: dict[str, type[msgspec.Struct]] = {
    "sessions": Session,
    "prompts": Prompt,
    "skill_invocations": SkillInvocation,
    "execution_facts": ExecutionFact,
    "normalization_runs": NormalizationRun,
    "evolution_evidence": EvolutionEvidence,
    "orchestrate_runs": OrchestrateRun,
    "grading_results": GradingResult,
    "improvement_signals": ImprovementSignal,
}

# One decoder per record type, built once (msgspec's advice) and shared.
RECORD_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(struct) for name, struct in RECORD_TYPES.items()
}
