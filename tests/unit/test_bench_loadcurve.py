"""bench.loadcurve reads a process's sleeps and moves between CPUs, and refuses a curve with no full-speed phase."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.loadcurve import main, sched_counts


def test_counts_a_process_going_to_sleep() -> None:
    switches0, _ = sched_counts(os.getpid())
    for _ in range(20):
        time.sleep(0.001)  # each sleep gives up the CPU: a voluntary context switch
    switches1, _ = sched_counts(os.getpid())
    assert switches1 - switches0 >= 20


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to move between")
def test_counts_a_process_moved_to_another_cpu() -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    # A child, so that the test process's own affinity is left alone.
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.001)"])
    try:
        time.sleep(0.1)
        _, migrations0 = sched_counts(child.pid)
        for cpu in cpus * 3:
            os.sched_setaffinity(child.pid, {cpu})  # it moves there at its next wake-up, within 1 ms
            time.sleep(0.02)
        _, migrations1 = sched_counts(child.pid)
    finally:
        child.kill()
        child.wait()
    assert migrations1 > migrations0


def test_a_process_that_is_gone_counts_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert sched_counts(child.pid) == (0, 0)


@pytest.mark.parametrize("fractions", ["0.5,1", "1,1.5", "1,0"])
def test_refuses_a_curve_without_its_full_speed_phase_first(fractions: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--fractions", fractions])
    assert stop.value.code == 2
    assert "--fractions" in capsys.readouterr().err
