"""Valid example records of every type, shaped like what the real CLI sends.

Used by the tests, the benchmarks and the README's example push. `n` makes ids
unique; `text_size` sets the length of prompt and query text.
"""

from __future__ import annotations

import copy
from typing import Any

CANONICAL_BASE: dict[str, Any] = {
    "schema_version": "2.0",
    "normalizer_version": "1.0.0",
    "normalized_at": "2026-11-28T10:00:00.000Z",
    "platform": "claude_code",
    "capture_mode": "hook",
    "raw_source_ref": {"path": "/home/dev/.claude/projects/x/session.jsonl", "line": 12, "event_type": "user"},
}


def _base() -> dict[str, Any]:
    """A fresh copy of the base fields (callers may change nested values)."""
    return copy.deepcopy(CANONICAL_BASE)


def _session_scoped(kind: str, session_id: str) -> dict[str, Any]:
    return {**_base(), "record_kind": kind, "source_session_kind": "interactive", "session_id": session_id}


def session(n: int, **over: Any) -> dict[str, Any]:
    return {
        **_session_scoped("session", f"sess-{n}"),
        "started_at": "2026-11-28T09:00:00Z",
        "ended_at": "2026-11-28T09:30:00Z",
        "agent_cli": "claude",
        "repo_remote": "git@github.com:acme/app.git",
        "branch": "main",
        "model": "claude-sonnet-4",
        "completion_status": "completed",
        **over,
    }


def prompt(n: int, text_size: int = 200, **over: Any) -> dict[str, Any]:
    return {
        **_session_scoped("prompt", f"sess-{n // 10}"),
        "prompt_id": f"prompt-{n}",
        "occurred_at": "2026-11-28T09:01:00Z",
        "prompt_text": ("please refactor the parser " * (text_size // 27 + 1))[:text_size],
        "prompt_kind": "user",
        "is_actionable": True,
        "prompt_index": n % 50,
        **over,
    }


def skill_invocation(n: int, **over: Any) -> dict[str, Any]:
    return {
        **_session_scoped("skill_invocation", f"sess-{n // 10}"),
        "skill_invocation_id": f"inv-{n}",
        "occurred_at": "2026-11-28T09:02:00Z",
        "skill_name": f"skill-{n % 7}",
        "invocation_mode": "explicit",
        "triggered": True,
        "confidence": 0.9,
        "matched_prompt_id": f"prompt-{n}",
        **over,
    }


def execution_fact(n: int, **over: Any) -> dict[str, Any]:
    return {
        **_session_scoped("execution_fact", f"sess-{n // 10}"),
        "execution_fact_id": str(n),
        "occurred_at": f"2026-11-28T09:{n % 60:02d}:{n // 60 % 60:02d}Z",
        "prompt_id": f"prompt-{n}",
        "tool_calls_json": {"Read": 3, "Edit": 1},
        "total_tool_calls": 4,
        "assistant_turns": 2,
        "errors_encountered": 0,
        "input_tokens": 1200,
        "output_tokens": 300,
        "duration_ms": 5400.5,
        **over,
    }


def normalization_run(n: int, **over: Any) -> dict[str, Any]:
    return {
        **_base(),
        "record_kind": "normalization_run",
        "run_id": f"norm-{n}",
        "run_at": "2026-11-28T10:00:00Z",
        "raw_records_seen": 120,
        "canonical_records_written": 118,
        "repair_applied": False,
        **over,
    }


def evolution_evidence(n: int, **over: Any) -> dict[str, Any]:
    return {
        "evidence_id": f"ev-{n}",
        "skill_name": f"skill-{n % 7}",
        "target": "description",
        "stage": "proposed",
        "proposal_id": f"prop-{n}",
        "timestamp": "2026-11-28T10:05:00Z",
        "rationale": "missed three queries about parsing",
        "confidence": 0.7,
        "eval_set_json": [{"query": "parse this", "should_trigger": True}],
        **over,
    }


def orchestrate_run(n: int, **over: Any) -> dict[str, Any]:
    return {
        "run_id": f"orch-{n}",
        "timestamp": "2026-11-28T10:10:00Z",
        "elapsed_ms": 84000,
        "dry_run": False,
        "approval_mode": "auto",
        "total_skills": 3,
        "evaluated": 3,
        "evolved": 1,
        "deployed": 1,
        "watched": 1,
        "skipped": 1,
        "skill_actions": [
            {"skill": "skill-1", "action": "evolve", "reason": "pass rate fell", "deployed": True},
            {"skill": "skill-2", "action": "watch", "reason": "recently deployed", "alert": None},
            {"skill": "skill-3", "action": "skip", "reason": "no signals"},
        ],
        **over,
    }


def grading_result(n: int, **over: Any) -> dict[str, Any]:
    return {
        "grading_id": f"grade-{n}",
        "session_id": f"sess-{n // 10}",
        "skill_name": f"skill-{n % 7}",
        "graded_at": "2026-11-28T10:20:00Z",
        "pass_rate": 0.75,
        "mean_score": 0.8,
        "score_std_dev": 0.1,
        "passed_count": 3,
        "failed_count": 1,
        "total_count": 4,
        "expectations_json": '[{"text": "uses the parser skill", "passed": true}]',
        **over,
    }


def improvement_signal(n: int, text_size: int = 80, **over: Any) -> dict[str, Any]:
    return {
        "signal_id": f"sig-{n}",
        "timestamp": "2026-11-28T10:30:00Z",
        "session_id": f"sess-{n // 10}",
        "query": ("why did the parser skill not trigger " * (text_size // 37 + 1))[:text_size],
        "signal_type": "correction",
        "mentioned_skill": f"skill-{n % 7}",
        "consumed": False,
        **over,
    }


FACTORIES = {
    "sessions": session,
    "prompts": prompt,
    "skill_invocations": skill_invocation,
    "execution_facts": execution_fact,
    "normalization_runs": normalization_run,
    "evolution_evidence": evolution_evidence,
    "orchestrate_runs": orchestrate_run,
    "grading_results": grading_result,
    "improvement_signals": improvement_signal,
}


def one_of_each(n: int = 0) -> dict[str, list[dict[str, Any]]]:
    """One record of every type."""
    return {name: [make(n)] for name, make in FACTORIES.items()}
