"""deploy/alerts.yml under promtool: the rules parse, and deploy/alerts.test.yml shows each alert firing when it should.

promtool comes from Debian's `prometheus` package (scripts/services.sh installs it with the
servers). Without it the test is skipped locally and fails under CI=true, like a missing server.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import IN_CI

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (Debian's prometheus package); run 'scripts/services.sh up test'"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return found


def test_every_alert_has_a_promtool_test_that_fires_it() -> None:
    alerts = {r["alert"] for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((DEPLOY / "alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert alerts - fired == set(), "add a case to deploy/alerts.test.yml for these alerts"


@pytest.mark.parametrize("argv", [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]])
def test_promtool(argv: list[str]) -> None:
    done = subprocess.run([promtool(), *argv], cwd=DEPLOY, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(argv)}:\n{done.stdout}{done.stderr}"
