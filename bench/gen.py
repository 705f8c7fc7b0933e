"""Pushes for the load: templates of realistic records, a token per push, repeats as a fleet sends them.

A push is built from one of `TEMPLATES` pre-encoded bodies of realistic records
(bench/realistic.py) in which every id of the push's own records carries a
12-byte placeholder (`TOKEN`). Each push replaces it with a token of its own
(`TOKEN.join(parts)`: a memcpy, ~4 us for 90 KB), so the load generator spends
almost nothing per request and every fresh push carries new records.

What else makes the load realistic:
- the real CLI's envelope (PushPayloadV2: `canonical`, `client_version`,
  `content_hashes`);
- the record mix drawn at random per push (`realistic.MIX`), so a 100-record
  push often has none of the rare types;
- repeated records across pushes (`REPEATED_RECORDS`, ~5 %): their ids use a
  fixed token per template, so every push built from that template re-sends
  them (the next one 64 pushes later), and workers meet existing rows;
- repeated pushes (`REPEATED_PUSHES`, ~5 %): the exact body of one of the last
  256 pushes is sent again (same push id), as a CLI retrying after a timeout.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec

from bench.realistic import MIX, RecordBuilder

TOKEN = b"TKNTKNTKNTKN"
TOKEN_S = TOKEN.decode()
TEMPLATES = 64  # templates per batch size; a multiple of WORKSPACES
WORKSPACES = 8  # pushes are spread over this many workspaces (keys)
REPEATED_RECORDS = 0.05
REPEATED_PUSHES = 0.05
RECENT_PUSHES = 256  # a repeated push is one of the last this many


@dataclass(frozen=True)
class Template:
    """One pre-encoded push body, split at its TOKEN placeholders."""

    index: int
    parts: tuple[bytes, ...]
    records: int
    counts: dict[str, int]
    size: int  # bytes of a body built from it

    def body(self, token: bytes) -> bytes:
        return token.join(self.parts)


def make_templates(size: int, seed: int = 1, count: int = TEMPLATES) -> list[Template]:
    """`count` push templates of `size` records each (deterministic for a seed)."""
    templates = []
    types = list(MIX)
    weights = [MIX[t] for t in types]
    for j in range(count):
        rng = random.Random(f"{seed}-{size}-{j}")
        b = RecordBuilder(rng, j)
        drawn = rng.choices(types, weights=weights, k=size)
        counts = {t: drawn.count(t) for t in types}
        n_sessions = max(1, counts["sessions"])
        sessions_ids = [f"sess-{TOKEN_S}-{k}" for k in range(n_sessions)]
        canonical: dict[str, list[dict[str, Any]]] = {}
        for t in types:
            recs = []
            for i in range(counts[t]):
                # A share of records re-sent by every push of this template (fixed ids).
                repeated = rng.random() < REPEATED_RECORDS
                tok = f"rep{seed}x{size}x{j}" if repeated else TOKEN_S
                if t == "sessions":
                    rec = b.sessions(i, tok)
                else:
                    session = f"sess-{tok}-{i % n_sessions}" if repeated else rng.choice(sessions_ids)
                    rec = getattr(b, t)(i, tok, session)
                recs.append(rec)
            canonical[t] = recs
        envelope = {
            "schema_version": "2.0",
            "client_version": "0.2.32",
            "push_id": f"push-{TOKEN_S}",
            "normalizer_version": "1.0.0",
            "canonical": canonical,
            "content_hashes": {f"prompt:{p['prompt_id']}": p["prompt_hash"] for p in canonical["prompts"]},
        }
        raw = msgspec.json.encode(envelope)
        parts = tuple(raw.split(TOKEN))
        templates.append(Template(j, parts, size, counts, len(raw)))
    return templates


def token(phase: int, n: int) -> bytes:
    """The 12-byte token of fresh push n of a phase (phases never share tokens)."""
    return b"%02x%010x" % (phase & 0xFF, n & 0xFF_FFFF_FFFF)


@dataclass(frozen=True)
class Push:
    template: int
    workspace: int  # index into the workspaces/keys
    body: bytes
    records: int
    push_id: str
    repeat: bool  # the same body as an earlier push (expect 200 duplicate)


class PushStream:
    """The sequence of pushes of one phase: fresh pushes, with ~5 % repeats of recent ones."""

    def __init__(
        self,
        templates: list[Template],
        phase: int,
        repeat_share: float = REPEATED_PUSHES,
        seed: int = 7,
        workspaces: int = WORKSPACES,
    ) -> None:
        assert len(templates) % workspaces == 0
        self.templates = templates
        self.phase = phase
        self.repeat_share = repeat_share
        self.workspaces = workspaces
        self.fresh = 0
        self.rng = random.Random(seed * 1000 + phase)
        self.recent: deque[Push] = deque(maxlen=RECENT_PUSHES)

    def fresh_push(self, n: int) -> Push:
        t = self.templates[n % len(self.templates)]
        tok = token(self.phase, n)
        return Push(t.index, n % self.workspaces, t.body(tok), t.records, f"push-{tok.decode()}", False)

    def next(self) -> Push:
        if self.recent and self.rng.random() < self.repeat_share:
            p = self.rng.choice(self.recent)
            return Push(p.template, p.workspace, p.body, p.records, p.push_id, True)
        p = self.fresh_push(self.fresh)
        self.fresh += 1
        self.recent.append(p)
        return p


def describe(templates: list[Template]) -> dict[str, Any]:
    """Average size and mix of a set of templates (for the report)."""
    records = sum(t.records for t in templates)
    size = sum(t.size for t in templates)
    counts: dict[str, int] = {}
    for t in templates:
        for k, v in t.counts.items():
            counts[k] = counts.get(k, 0) + v
    return {
        "records_per_push": templates[0].records,
        "bytes_per_push": round(size / len(templates)),
        "bytes_per_record": round(size / records),
        "mix_pct": {k: round(100 * v / records, 1) for k, v in counts.items()},
    }
