"""Summarize py-spy's collapsed stacks (`--format raw`): top frames, and a flame graph SVG.

    python -m bench.flame bench/results/profile-api-100.txt   # prints the top frames

One recording gives both the table of top frames (for bench/README.md) and the
picture, so py-spy attaches once per process.
"""

from __future__ import annotations

import html
import re
import sys
import zlib
from collections import Counter
from pathlib import Path

_LINENO = re.compile(r":\d+\)$")

# Threads that only wait, which py-spy does not always recognise as idle: RQ's pubsub
# listener blocks in select() for 60 s at a time. Their stacks are dropped.
IDLE_THREADS = ("PubSubWorkerThread.run (redis/client.py)",)
# Leaf frames that are (mostly) waiting on a server rather than computing: shown, and
# counted apart, so the CPU shares are of the samples that were computing.
WAITS = {
    "Connection.wait (psycopg/connection.py)": "waiting on Postgres (psycopg's C wait loop)",
}


def parse(text: str) -> list[tuple[list[str], int]]:
    """Stacks with their sample counts; idle threads left out."""
    stacks = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            continue
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        names = [_LINENO.sub(")", f) for f in frames.split(";")]
        if any(f in IDLE_THREADS for f in names):
            continue
        stacks.append((names, int(count)))
    return stacks


def _is_process(frame: str) -> bool:
    return frame.startswith("process ")


# Where a sample's time goes, by the first rule (in order) whose frame is on its stack.
BREAKDOWNS: dict[str, list[tuple[str, str]]] = {
    "api": [
        ("job hash: compress the job data (queueing.rq_compat.job_hash)", "job_hash (queueing/rq_compat.py)"),
        ("RQ Job.to_dict (zlib-compresses the payload)", "Job.to_dict (rq/job.py)"),
        ("RQ Queue.create_job", "Queue.create_job (rq/queue.py)"),
        (
            "validate_push (msgspec: one typed decode of the body; record by record if one is bad)",
            "validate_push (schema/validation.py)",
        ),
        ("enqueue Lua script (Redis round trip)", "Enqueuer.enqueue_once (api/enqueue.py)"),
        ("read_body", "read_body (api/body.py)"),
        ("per-push log line", "_log_push (api/push.py)"),
        ("metrics", "observe_push (api/metrics.py)"),
        ("authenticate (cached key)", "authenticate (api/auth.py)"),
        ("rest of the handler (QueuedBatch encode, answer)", "_push (api/push.py)"),
        ("uvicorn + starlette + event loop", ""),
    ],
    "workers": [
        ("RQ Job.to_dict on success (re-compresses the payload)", "Job.to_dict (rq/job.py)"),
        ("counters pipeline (workers.jobs.count_batch)", "count_batch (workers/jobs.py)"),
        ("psycopg: render the sql.Composed upsert (every execute)", "Composed.as_bytes (psycopg/sql.py)"),
        ("psycopg: dump parameters (the column arrays)", "PostgresQuery.convert (psycopg/_queries.py)"),
        ("libpq: send the statement and parameters", "_send_query_prepared (psycopg/_cursor_base.py)"),
        ("writer: slice each type's array from the body (body_arrays)", "body_arrays (workers/arrays.py)"),
        ("writer: re-validate records one by one (check_record)", "check_record (schema/record_checks.py)"),
        ("writer: rest of write_batch (claim, finish, commit)", "write_batch (workers/jobs.py)"),
        ("job body: decode the payload, log line", "Job.perform (rq/job.py)"),
        ("RQ scheduler process", "RQScheduler.work (rq/scheduler.py)"),
        ("RQ bookkeeping (dequeue, heartbeats, registries, job status)", ""),
    ],
}


def breakdown(stacks: list[tuple[list[str], int]], rules: list[tuple[str, str]]) -> list[tuple[str, float]]:
    """Share of computing samples per rule (waits left out, as in top_frames)."""
    counts: Counter[str] = Counter()
    for frames, count in stacks:
        if frames and frames[-1] in WAITS:
            continue
        for label, marker in rules:
            if not marker or any(marker in f for f in frames):
                counts[label] += count
                break
    total = sum(counts.values()) or 1
    return [(label, round(100 * counts[label] / total, 1)) for label, _ in rules if counts[label]]


def top_frames(stacks: list[tuple[list[str], int]], n: int = 15) -> dict[str, object]:
    """Self time (the frame running) and inclusive time (the frame on the stack), as % of samples."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    waits: Counter[str] = Counter()
    for frames, count in stacks:
        frames = [f for f in frames if not _is_process(f)]
        if not frames:
            continue
        if frames[-1] in WAITS:
            waits[frames[-1]] += count
            continue
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    total = sum(own.values()) or 1
    return {
        "samples": total,
        "wait_samples": {WAITS[k]: v for k, v in waits.items()},
        "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(n)],
        # The chain every sample goes through (main, run, ...) says nothing: left out.
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in incl.most_common() if c < 0.97 * total][: n * 2],
    }


def format_top(summary: dict[str, object], title: str) -> str:
    lines = [f"{title}: {summary['samples']} samples computing (idle threads dropped)"]
    for what, n in summary["wait_samples"].items():  # type: ignore[attr-defined]
        lines.append(f"  + {n} samples {what}, not counted below")
    if summary.get("breakdown"):
        lines += ["", "   %    where (first matching rule of bench/flame.py BREAKDOWNS)"]
        lines += [f"{pct:6.1f}  {label}" for label, pct in summary["breakdown"]]  # type: ignore[attr-defined]
    lines += ["", "self %  frame"]
    lines += [f"{pct:6.1f}  {frame}" for frame, pct in summary["self"]]  # type: ignore[attr-defined]
    lines += ["", "incl %  frame"]
    lines += [f"{pct:6.1f}  {frame}" for frame, pct in summary["inclusive"]]  # type: ignore[attr-defined]
    return "\n".join(lines) + "\n"


def flamegraph_svg(stacks: list[tuple[list[str], int]], title: str, width: int = 1400) -> str:
    """A static flame graph (hover a box for its frame and share)."""
    tree: dict = {"n": 0, "kids": {}}
    for frames, count in stacks:
        node = tree
        node["n"] += count
        for f in frames:
            node = node["kids"].setdefault(f, {"n": 0, "kids": {}})
            node["n"] += count
    total = tree["n"] or 1
    row_h, top = 17, 40
    boxes: list[str] = []
    depth_max = 0

    def walk(node: dict, x: float, depth: int) -> None:
        nonlocal depth_max
        for name, kid in sorted(node["kids"].items()):
            w = kid["n"] / total * (width - 20)
            if w >= 0.4:
                depth_max = max(depth_max, depth)
                boxes.append((x, depth, w, name, kid["n"]))  # type: ignore[arg-type]
                walk(kid, x, depth + 1)
            x += w

    walk(tree, 10.0, 0)
    height = top + (depth_max + 1) * row_h + 20
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#f8f8f8"/>',
        f'<text x="10" y="20" font-size="14">{html.escape(title)} ({total} samples)</text>',
    ]
    for x, depth, w, name, n in boxes:  # type: ignore[misc]
        y = height - 20 - (depth + 1) * row_h
        hue = zlib.crc32(name.encode()) % 60
        label = html.escape(name)
        chars = int(w / 6.6)
        text = label if len(name) <= chars else (html.escape(name[: max(0, chars - 2)]) + ".." if chars > 3 else "")
        out.append(
            f"<g><title>{label}: {n} samples ({100 * n / total:.1f}%)</title>"
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 1}" fill="hsl({hue},85%,62%)"/>'
            + (f'<text x="{x + 2:.1f}" y="{y + 12}">{text}</text>' if text else "")
            + "</g>"
        )
    out.append("</svg>")
    return "\n".join(out)


def render(raw_path: Path, title: str, kind: str | None = None) -> dict[str, object]:
    """Write <raw>.svg and <raw>-top.txt beside the raw file; return the top frames."""
    stacks = parse(raw_path.read_text(errors="replace"))
    summary = top_frames(stacks)
    if kind in BREAKDOWNS:
        summary["breakdown"] = breakdown(stacks, BREAKDOWNS[kind])
    raw_path.with_suffix(".svg").write_text(flamegraph_svg(stacks, title))
    raw_path.with_name(raw_path.stem + "-top.txt").write_text(format_top(summary, title))
    return summary


if __name__ == "__main__":
    # python -m bench.flame FILE [api|workers]: re-render FILE's SVG and top frames.
    path = Path(sys.argv[1])
    print(format_top(render(path, path.stem, sys.argv[2] if len(sys.argv) > 2 else None), path.stem))
