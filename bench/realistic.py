"""Realistic records of the nine types, in the proportions and with the free text of a real sync.

- the record mix per 100 records (`MIX`): mostly prompts, skill invocations,
  execution facts and sessions; fewer grading results and improvement signals;
  rare orchestrate runs, normalization runs and evolution evidence;
- free text (prompts, signal queries, evidence texts, grading JSON strings)
  with log-normal lengths, from tens to thousands of characters, with newlines,
  quotes and some non-ASCII characters (JSON escapes and UTF-8 on the decoder's
  slow paths); about 0.9 KB per record on average, envelope included;
- the real CLI's canonical fields (platform, capture mode, raw source ref).

`RecordBuilder` has one method per record type (a little over 300 lines in all:
the nine types read best side by side, as the table they are). bench/gen.py
turns its records into push templates.
"""

from __future__ import annotations

import hashlib
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from bench.samples import FACTORIES

# Records per 100 in a typical `selftune sync` (sums to 100).
MIX: dict[str, float] = {
    "prompts": 30,
    "skill_invocations": 21,
    "execution_facts": 20,
    "sessions": 12,
    "grading_results": 7,
    "improvement_signals": 7,
    "orchestrate_runs": 1,
    "normalization_runs": 1,
    "evolution_evidence": 1,
}

_WORDS = (  # noqa: SIM905 (a sentence reads better than a list of words)
    "the parser skill should handle nested json when the input file is large and the test suite fails "
    "refactor this function to use async io please add type hints and a docstring fix the flaky test in "
    "ci run pytest again then commit why does the build break on main update the readme with the new "
    "endpoint check the migration order make it idempotent rename the variable explain the stack trace "
    "write a benchmark compare both versions deploy to staging revert the last change review my diff "
    "config yaml docker compose postgres redis worker queue retry backoff timeout cache invalidate"
).split()
_SNIPPETS = (
    "\n```python\ndef parse(path: str) -> dict:\n    with open(path) as f:\n        return json.load(f)\n```\n",
    '\nError: "unexpected token" at line 42\n',
    "\n$ git diff --stat HEAD~1\n",
    ' -> "done" ',
    " café naïve résumé ",
    " → ✓ — ",
    "\n\n",
    "\t",
)
_SKILLS = [
    f"{name}"
    for name in (
        "code-review",
        "test-writer",
        "refactor",
        "debugger",
        "doc-writer",
        "sql-helper",
        "deploy",
        "perf-tuner",
        "security-audit",
        "api-designer",
        "migration",
        "git-helper",
        "ci-fixer",
        "pdf",
        "xlsx",
        "frontend-design",
        "data-analysis",
        "incident",
        "release-notes",
        "dependency-bump",
    )
]
_TOOLS = ("Read", "Edit", "Write", "Bash", "Grep", "Glob", "WebFetch", "Task", "TodoWrite", "MultiEdit")
_PLATFORMS = ("claude_code", "claude_code", "claude_code", "codex", "opencode", "openclaw", "pi")
_PROMPT_KINDS = ("user",) * 6 + ("continuation", "tool_output", "task_notification", "meta", "system_instruction")
_SIGNAL_TYPES = ("correction", "explicit_request", "frustration", "skill_miss", "praise")
_MODELS = ("claude-sonnet-4", "claude-opus-4", "gpt-5-codex", "claude-haiku-4")


def _text(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> str:
    """Free text with a log-normal length (median `median` characters)."""
    n = int(min(hi, max(lo, rng.lognormvariate(math.log(median), sigma))))
    out: list[str] = []
    size = 0
    while size < n:
        piece = rng.choice(_SNIPPETS) if rng.random() < 0.04 else rng.choice(_WORDS) + " "
        out.append(piece)
        size += len(piece)
    return "".join(out)[:n].strip() or "ok"


def _ts(base: datetime, seconds: float) -> str:
    return (base + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


class RecordBuilder:
    """Builds one template's records; `tok` is the id token (TOKEN, or a fixed one for repeats)."""

    def __init__(self, rng: random.Random, template: int) -> None:
        self.rng = rng
        self.template = template
        self.base = datetime(2026, 11, 28, 9, 0, tzinfo=UTC) + timedelta(hours=template)

    def _canonical(self, tok: str, session: str) -> dict[str, Any]:
        rng = self.rng
        return {
            "normalized_at": _ts(self.base, 3600 + rng.random() * 60),
            "platform": rng.choice(_PLATFORMS),
            "capture_mode": rng.choice(("hook", "hook", "hook", "replay", "wrapper", "batch_ingest")),
            "raw_source_ref": {
                "path": f"/home/dev/.claude/projects/-home-dev-src-app/{session}.jsonl",
                "line": rng.randrange(1, 5000),
                "event_type": rng.choice(("user", "assistant", "tool_result")),
                "raw_id": f"{_hex(rng, 8)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 12)}",
            },
            "session_id": session,
        }

    def sessions(self, i: int, tok: str) -> dict[str, Any]:
        rng = self.rng
        sid = f"sess-{tok}-{i}"
        return FACTORIES["sessions"](
            i,
            **self._canonical(tok, sid),
            started_at=_ts(self.base, i * 300),
            ended_at=_ts(self.base, i * 300 + rng.randrange(60, 7200)),
            external_session_id=f"{_hex(rng, 8)}-{_hex(rng, 4)}-4{_hex(rng, 3)}-a{_hex(rng, 3)}-{_hex(rng, 12)}",
            agent_type=rng.choice(("main", "subagent")),
            workspace_path="/home/dev/src/app",
            repo_root="/home/dev/src/app",
            branch=rng.choice(("main", "feature/parser", "fix/flaky-ci")),
            commit_sha=_hex(rng, 40),
            permission_mode=rng.choice(("default", "acceptEdits", "plan")),
            provider=rng.choice(("anthropic", "openai")),
            model=rng.choice(_MODELS),
            completion_status=rng.choice(("completed", "completed", "completed", "interrupted", "failed")),
            end_reason=rng.choice((None, "user_exit", "prompt_input_exit")),
        )

    def prompts(self, i: int, tok: str, session: str) -> dict[str, Any]:
        rng = self.rng
        text = _text(rng, median=100, sigma=1.2, lo=12, hi=12000)
        return FACTORIES["prompts"](
            i,
            **self._canonical(tok, session),
            prompt_id=f"prompt-{tok}-{i}",
            occurred_at=_ts(self.base, i * 7),
            prompt_text=text,
            prompt_kind=rng.choice(_PROMPT_KINDS),
            is_actionable=rng.random() < 0.8,
            prompt_hash=hashlib.sha256(text.encode()).hexdigest(),
            prompt_index=i,
            source_message_id=f"msg_{_hex(rng, 24)}",
        )

    def skill_invocations(self, i: int, tok: str, session: str) -> dict[str, Any]:
        rng = self.rng
        skill = rng.choice(_SKILLS)
        return FACTORIES["skill_invocations"](
            i,
            **self._canonical(tok, session),
            skill_invocation_id=f"inv-{tok}-{i}",
            occurred_at=_ts(self.base, i * 7 + 2),
            skill_name=skill,
            invocation_mode=rng.choice(("explicit", "implicit", "implicit", "inferred")),
            triggered=rng.random() < 0.85,
            confidence=round(rng.random(), 3),
            matched_prompt_id=f"prompt-{tok}-{i}",
            skill_path=f"/home/dev/.claude/skills/{skill}/SKILL.md",
            skill_version_hash=_hex(rng, 16),
            tool_name="Skill",
            tool_call_id=f"toolu_{_hex(rng, 24)}",
        )

    def execution_facts(self, i: int, tok: str, session: str) -> dict[str, Any]:
        rng = self.rng
        tools = {t: rng.randrange(1, 30) for t in rng.sample(_TOOLS, rng.randrange(1, 7))}
        return FACTORIES["execution_facts"](
            i,
            **self._canonical(tok, session),
            execution_fact_id=str(rng.randrange(1, 10**6)),
            occurred_at=_ts(self.base, i * 7 + 5),
            prompt_id=f"prompt-{tok}-{i}",
            tool_calls_json=tools,
            total_tool_calls=sum(tools.values()),
            assistant_turns=rng.randrange(1, 40),
            errors_encountered=rng.choice((0, 0, 0, 1, 2)),
            bash_commands_redacted=[
                rng.choice(("pytest -q", "git status", "make lint", "npm test", "ls -la <path>", "cat <file>"))
                for _ in range(rng.randrange(0, 6))
            ],
            input_tokens=rng.randrange(500, 200_000),
            output_tokens=rng.randrange(50, 20_000),
            duration_ms=round(rng.random() * 600_000, 1),
            completion_status=rng.choice(("completed", "completed", "failed")),
        )

    def grading_results(self, i: int, tok: str, session: str) -> dict[str, Any]:
        rng = self.rng
        total = rng.randrange(2, 9)
        passed = rng.randrange(0, total + 1)
        expectations = [
            {"text": _text(rng, 60, 0.5, 15, 200), "passed": k < passed, "evidence": _text(rng, 40, 0.8, 10, 600)}
            for k in range(total)
        ]
        return FACTORIES["grading_results"](
            i,
            grading_id=f"grade-{tok}-{i}",
            session_id=session,
            skill_name=rng.choice(_SKILLS),
            graded_at=_ts(self.base, 4000 + i),
            transcript_path=f"/home/dev/.claude/projects/-home-dev-src-app/{session}.jsonl",
            pass_rate=round(passed / total, 3),
            mean_score=round(rng.random(), 3),
            score_std_dev=round(rng.random() / 3, 3),
            passed_count=passed,
            failed_count=total - passed,
            total_count=total,
            expectations_json=msgspec.json.encode(expectations).decode(),
            claims_json=msgspec.json.encode([_text(rng, 70, 0.6, 10, 300) for _ in range(rng.randrange(0, 4))]).decode()
            if rng.random() < 0.6
            else None,
            eval_feedback_json=msgspec.json.encode({"summary": _text(rng, 150, 0.9, 10, 2000)}).decode()
            if rng.random() < 0.4
            else None,
            execution_metrics_json=msgspec.json.encode({"tool_calls": total * 3, "turns": total}).decode(),
        )

    def improvement_signals(self, i: int, tok: str, session: str) -> dict[str, Any]:
        rng = self.rng
        consumed = rng.random() < 0.1
        return FACTORIES["improvement_signals"](
            i,
            signal_id=f"sig-{tok}-{i}",
            timestamp=_ts(self.base, 4100 + i),
            session_id=session,
            query=_text(rng, median=90, sigma=1.0, lo=10, hi=4000),
            signal_type=rng.choice(_SIGNAL_TYPES),
            mentioned_skill=rng.choice(_SKILLS) if rng.random() < 0.7 else None,
            consumed=consumed,
            consumed_at=_ts(self.base, 5000 + i) if consumed else None,
            consumed_by_run=f"orch-{tok}-0" if consumed else None,
        )

    def orchestrate_runs(self, i: int, tok: str, session: str) -> dict[str, Any]:
        rng = self.rng
        actions = [
            {
                "skill": rng.choice(_SKILLS),
                "action": rng.choice(("evolve", "watch", "skip", "package-search")),
                "reason": _text(rng, 50, 0.6, 8, 300),
                "deployed": rng.random() < 0.3,
                "elapsed_ms": rng.randrange(100, 60_000),
                "llm_calls": rng.randrange(0, 12),
            }
            for _ in range(rng.randrange(2, 12))
        ]
        return FACTORIES["orchestrate_runs"](
            i,
            run_id=f"orch-{tok}-{i}",
            timestamp=_ts(self.base, 4200 + i),
            elapsed_ms=rng.randrange(1000, 300_000),
            total_skills=len(actions),
            evaluated=len(actions),
            evolved=sum(a["action"] == "evolve" for a in actions),
            deployed=sum(bool(a["deployed"]) for a in actions),
            watched=sum(a["action"] == "watch" for a in actions),
            skipped=sum(a["action"] == "skip" for a in actions),
            skill_actions=actions,
        )

    def normalization_runs(self, i: int, tok: str, session: str) -> dict[str, Any]:
        rng = self.rng
        c = self._canonical(tok, session)
        del c["session_id"]
        seen = rng.randrange(10, 50_000)
        return FACTORIES["normalization_runs"](
            i,
            **c,
            run_id=f"norm-{tok}-{i}",
            run_at=_ts(self.base, 4300 + i),
            raw_records_seen=seen,
            canonical_records_written=seen - rng.randrange(0, 10),
            repair_applied=rng.random() < 0.1,
        )

    def evolution_evidence(self, i: int, tok: str, session: str) -> dict[str, Any]:
        rng = self.rng
        return FACTORIES["evolution_evidence"](
            i,
            evidence_id=f"ev-{tok}-{i}",
            skill_name=rng.choice(_SKILLS),
            target=rng.choice(("description", "body", "routing")),
            stage=rng.choice(("proposed", "validated", "deployed", "rejected")),
            proposal_id=f"prop-{tok}-{i}",
            timestamp=_ts(self.base, 4400 + i),
            rationale=_text(rng, 200, 0.8, 20, 3000),
            confidence=round(rng.random(), 3),
            original_text=_text(rng, 700, 0.7, 50, 8000),
            proposed_text=_text(rng, 800, 0.7, 50, 8000),
            eval_set_json=[
                {"query": _text(rng, 60, 0.6, 10, 400), "should_trigger": rng.random() < 0.5}
                for _ in range(rng.randrange(3, 15))
            ],
            validation_json={"before": round(rng.random(), 3), "after": round(rng.random(), 3), "n": 12},
        )
