"""A Redis primary, one replica and three sentinels on 127.0.0.1 free ports, for failover tests (issue 17).

Each server is a `redis-server` process of its own (the sentinels: `redis-server
<conf> --sentinel`, which is what Debian's `redis-sentinel` runs), with its data
and config under the test's tmp_path, the same durability settings as
`scripts/services.sh` (append-only, `everysec`, `noeviction`), and a short
`down-after-milliseconds` so a SIGKILLed primary is replaced within a few seconds.
`SentinelTopology.stop()` ends every process it started (the fixture calls it,
pass or fail).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from tests.e2e.stack import free_port

SERVICE = "selftune"
DOWN_AFTER_MS = (
    2000  # at 1000, a loaded CI machine saw a promoted primary as down within a second, and failed over again
)
FAILOVER_TIMEOUT_MS = 5000
START_TIMEOUT_S = 20.0
FAILOVER_WAIT_S = 30.0
QUORUM = 2
SENTINELS = 3


def _redis_server() -> str:
    for path in ("/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if Path(path).exists():
            return path
    raise AssertionError("redis-server is not installed (scripts/services.sh installs Debian's redis-server)")


@dataclass
class Node:
    """One redis-server process (data node or sentinel) and its log."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    argv: list[str]

    def client(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: nothing flushed, nothing said to the replica or the sentinels."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            self.proc.terminate()
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=10)

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (port {self.port}) ---\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class SentinelTopology:
    """The servers, the URL the service is given, and faults."""

    root: Path
    nodes: list[Node] = field(default_factory=list)

    @property
    def sentinels(self) -> list[Node]:
        return [n for n in self.nodes if n.name.startswith("sentinel")]

    @property
    def data_nodes(self) -> list[Node]:
        return [n for n in self.nodes if not n.name.startswith("sentinel")]

    def url(self, db: int = 0) -> str:
        """REDIS_URL for the service: every sentinel, the service name, the db."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}"

    def _spawn(self, name: str, argv: list[str]) -> Node:
        port = int(argv[argv.index("--port") + 1])
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.root)
        node = Node(name, port, proc, log, argv)
        self.nodes.append(node)
        return node

    def restart(self, node: Node) -> Node:
        """Start a killed data node again, same port and data, as a replica of the new primary.

        As an operator brings an old primary back: with `--replicaof`, never as a primary of
        its own. Started as it was, it serves as a primary until the sentinels reconfigure it
        (seconds, CI has seen 10), and a failover in that window can promote it and have the
        node that holds the data resync from it.
        """
        assert not node.alive()
        self.nodes.remove(node)
        argv = list(node.argv)
        if "--replicaof" in argv:
            at = argv.index("--replicaof")
            del argv[at : at + 3]
        argv += ["--replicaof", "127.0.0.1", str(self.primary_port())]
        again = self._spawn(node.name, argv)
        self._wait(lambda: self._link_up(again), f"{node.name} back, as a replica in sync")
        return again

    def _data_node(self, name: str, replica_of: int | None) -> Node:
        port = free_port()
        data = self.root / name
        data.mkdir()
        argv = [_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"]
        argv += ["--save", "", "--daemonize", "no", "--protected-mode", "no"]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        return self._spawn(name, argv)

    def _sentinel(self, name: str, primary_port: int) -> Node:
        port = free_port()
        conf = self.root / f"{name}.conf"  # a sentinel rewrites its config file: one each, writable
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.root}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        return self._spawn(name, [_redis_server(), str(conf), "--sentinel", "--port", str(port)])

    def start(self) -> SentinelTopology:
        """Primary, replica (in sync), three sentinels that all see both: return once it is so."""
        primary = self._data_node("primary", None)
        self._wait(lambda: primary.client().ping(), "the primary answers PING")
        replica = self._data_node("replica", primary.port)
        self._wait(lambda: self._link_up(replica), "the replica is in sync with the primary")
        for i in range(SENTINELS):
            self._sentinel(f"sentinel-{i}", primary.port)
        self._wait(self._sentinels_agree, "every sentinel sees the primary, its replica and the other sentinels")
        return self

    def _link_up(self, replica: Node) -> bool:
        info = replica.client().info("replication")
        return info.get("master_link_status") == "up"

    def _sentinels_agree(self) -> bool:
        for s in self.sentinels:
            master = s.client().sentinel_master(SERVICE)
            if int(master.get("num-slaves", 0)) < 1 or int(master.get("num-other-sentinels", 0)) < SENTINELS - 1:
                return False
        return True

    def _wait(self, condition: object, what: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():  # type: ignore[operator]
                    return
            except (RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:g} s for: {what}\n{self.logs()}")
            time.sleep(0.1)

    def primary_port(self) -> int:
        """The primary's port as the sentinels see it now."""
        _host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def primary(self) -> Node:
        port = self.primary_port()
        return next(n for n in self.data_nodes if n.port == port)

    def kill_primary(self) -> Node:
        """SIGKILL the primary; return it (it stays down)."""
        victim = self.primary()
        victim.kill()
        return victim

    def wait_promoted(self, old_port: int, timeout: float = FAILOVER_WAIT_S) -> float:
        """Wait until the sentinels name another primary and it takes writes; return the seconds it took."""
        started = time.monotonic()

        def promoted() -> bool:
            port = self.primary_port()
            node = next(n for n in self.data_nodes if n.port == port)
            return port != old_port and node.client().info("replication").get("role") == "master"

        self._wait(promoted, f"a new primary in place of port {old_port}", timeout)
        return time.monotonic() - started

    def logs(self) -> str:
        return "\n".join(n.tail() for n in self.nodes)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
