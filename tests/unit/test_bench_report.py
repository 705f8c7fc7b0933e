"""The bench's report re-tables a recorded result as it printed it, plus what was added since.

The result is bench/results/run-1d7bc8f.json (bench H in bench/README.md), kept as it was recorded
(latest.json is rewritten by every `make bench`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.phase import Config

RECORDED = Path(__file__).resolve().parents[2] / "bench" / "results" / "run-1d7bc8f.json"


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return dict(json.loads(RECORDED.read_text()))


def _table(runs: list[dict[str, Any]], recorded: dict[str, Any]) -> tuple[dict[int, Any], str]:
    sizes = recorded["config"]["sizes"]
    summary = {s: report.medians([report.headline(r[str(s)]) for r in runs]) for s in sizes}
    cfg = Config(**{k: v for k, v in recorded["config"].items() if k in Config.__dataclass_fields__})
    return summary, report.table(summary, recorded["api_peak_rss_mb"], cfg)


def test_a_recorded_run_tables_every_line_it_printed_in_order(recorded: dict[str, Any]) -> None:
    _, text = _table(recorded["runs"], recorded)
    new_lines = iter(text.splitlines())
    for line in recorded["table"].splitlines():
        assert line in new_lines, f"missing or out of order: {line!r}"


def test_the_cpu_split_per_record_adds_up_and_compares_workers_with_postgres(recorded: dict[str, Any]) -> None:
    summary, text = _table(recorded["runs"][:1], recorded)
    us = recorded["runs"][0]["100"]["e2e_sat"]["cpu"]["us_per_record"]
    total = sum(us[name] for name in ("api", "workers", "redis", "postgres", "client"))
    assert summary[100]["cpu_total"]["median"] == pytest.approx(total, abs=0.01)
    assert summary[100]["workers_vs_pg"]["median"] == pytest.approx(us["workers"] / us["postgres"], abs=0.001)
    row = next(line for line in text.splitlines() if line.startswith("  all of them"))
    assert row.split()[-2] == f"{total:,.1f}"


def test_a_baseline_adds_its_rows_the_ratio_and_its_target(recorded: dict[str, Any]) -> None:
    runs = copy.deepcopy(recorded["runs"])
    for run in runs:
        for size in run.values():
            base = {k: copy.deepcopy(size[k]) for k in ("e2e_sat", "e2e_half", "worker_peak_rss_mb", "pushes")}
            base["e2e_sat"]["records_per_s"] = size["e2e_sat"]["records_per_s"] / 2
            base["e2e_sat"]["cpu"]["us_per_record"]["workers"] *= 3
            size["baseline"] = base
    summary, text = _table(runs, recorded)
    lines = text.splitlines()
    assert summary[100]["e2e_vs_base"]["median"] == pytest.approx(2.0)
    ratio = lines[lines.index(next(x for x in lines if x.startswith("baseline code, e2e sustained"))) + 1]
    assert ratio.split()[-2:] == ["2.00", "2.00"]
    assert summary[500]["base_cpu_workers"]["median"] == pytest.approx(3 * summary[500]["cpu_workers"]["median"])
    targets = [x for x in lines if "new / baseline" in x and "target" in x]
    assert len(targets) == 2 and all(x.endswith("met") and "NOT" not in x for x in targets)


def test_without_a_baseline_the_table_has_no_baseline_rows(recorded: dict[str, Any]) -> None:
    _, text = _table(recorded["runs"], recorded)
    assert "baseline" not in text
