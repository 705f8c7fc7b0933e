"""PostgreSQL clusters made for one test: initdb in a temporary directory, on free 127.0.0.1 ports.

Postgres refuses to run as root, so as root every command runs as the `postgres` user on a
directory it owns. Used by the backup/restore test (a fresh cluster) and the read-replica
test (a primary with a streaming replica, made by pg_basebackup as a deployment would).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.stack import free_port

PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
AS_POSTGRES = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def run(argv: list[str]) -> None:
    """Run a Postgres tool; a failure names the command and its output."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"


@dataclass
class Cluster:
    """One running cluster: its data directory, port and admin URL."""

    home: Path
    data: Path
    port: int

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self, *settings: str) -> None:
        options = " ".join([f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.home} -c fsync=off", *settings])
        log = str(self.home / f"log-{self.port}")
        run([*AS_POSTGRES, str(PGBIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", log, "-o", options, "start"])

    def stop(self) -> None:
        subprocess.run(
            [*AS_POSTGRES, str(PGBIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"], timeout=60
        )


def _require_postgres() -> None:
    if not (PGBIN / "initdb").exists():
        pytest.fail(f"no PostgreSQL in {PGBIN} (set PGBIN, or run scripts/services.sh up test)", pytrace=False)


def _home(prefix: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=prefix))
    if AS_POSTGRES:
        shutil.chown(home, "postgres")
    return home


@contextlib.contextmanager
def fresh_cluster() -> Iterator[Cluster]:
    """A new, empty cluster, stopped and removed afterwards."""
    _require_postgres()
    home = _home("selftune-pg-")
    cluster = Cluster(home, home / "data", free_port())
    run([*AS_POSTGRES, str(PGBIN / "initdb"), "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def primary_with_replica() -> Iterator[tuple[Cluster, Cluster]]:
    """A primary and a hot-standby streaming replica of it (pg_basebackup -R), both removed afterwards."""
    with fresh_cluster() as primary:
        replica = Cluster(primary.home, primary.home / "replica", free_port())
        run(
            [
                *AS_POSTGRES,
                str(PGBIN / "pg_basebackup"),
                *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
                *("-D", str(replica.data), "-R", "-X", "stream", "-c", "fast"),
            ]
        )
        replica.start("-c hot_standby=on")
        try:
            yield primary, replica
        finally:
            replica.stop()
