"""Which RQ queue a workspace's batches wait in: QUEUE_SHARDS queues, by a stable hash of the workspace.

One queue for everyone makes one workspace's backlog (a fleet re-syncing, a replay)
everyone's lag. With the batches of each workspace in one of QUEUE_SHARDS queues,
and workers taking from those queues in turn (RQ's round-robin dequeue strategy,
see workers/worker.py), a light workspace waits behind at most one take of each
other busy queue, not behind the whole backlog. Two workspaces whose ids hash to the
same shard share its lag: that is the price of a fixed number of queues (README,
"Fairness between workspaces").

Every name of a queue of ours is made here (`QueueLayout`), and every caller (the
api's enqueue, the workers, the scheduler, the snapshot, replay, workspace delete,
the tests) asks it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

MAX_SHARDS = 256


def shard_of(workspace_id: str, shards: int) -> int:
    """The shard of a workspace: crc32 of its id (the same in every process and release) mod `shards`.

    Not Python's `hash()`, which is salted per process: the api and the ops command line
    must agree on where a workspace's batches are.
    """
    return zlib.crc32(workspace_id.encode()) % shards


@dataclass(frozen=True)
class QueueLayout:
    """The queues of QUEUE_NAME split into QUEUE_SHARDS shards.

    With one shard, the one queue is QUEUE_NAME itself (what every release before
    sharding used). With more, shard i is "QUEUE_NAME.i", and QUEUE_NAME stays the
    *unsharded* queue: batches queued there before the upgrade, which the workers
    still drain (`listened`).
    """

    name: str
    shards: int

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"QUEUE_SHARDS must be within 1..{MAX_SHARDS}, got {self.shards}")

    def shard_name(self, index: int) -> str:
        """The queue of shard `index`."""
        return self.name if self.shards == 1 else f"{self.name}.{index}"

    def for_workspace(self, workspace_id: str) -> str:
        """The queue a workspace's batches are enqueued (and replayed) to."""
        return self.shard_name(shard_of(workspace_id, self.shards))

    @property
    def shard_names(self) -> list[str]:
        """The shards' queues, in shard order."""
        return [self.shard_name(i) for i in range(self.shards)]

    @property
    def unsharded(self) -> str | None:
        """The queue of the releases before sharding (QUEUE_NAME), if it is not a shard itself."""
        return None if self.shards == 1 else self.name

    @property
    def listened(self) -> list[str]:
        """Every queue a worker takes from (and the snapshot, the scheduler and `failed list` read): the shards, then the unsharded one."""
        return self.shard_names + ([self.unsharded] if self.unsharded else [])

    def shard_label(self, queue_name: str) -> str:
        """How metrics and `status` name a queue: its shard's number, or "unsharded"."""
        if queue_name == self.unsharded:
            return "unsharded"
        if self.shards == 1:
            return "0"
        return queue_name.rsplit(".", 1)[-1]

    def in_use(self, known: Iterable[str]) -> list[str]:
        """`listened`, then those of `known` (RQ's set of queues) that are shards of a larger QUEUE_SHARDS.

        Lowering QUEUE_SHARDS leaves the batches of the higher shards where they are: the workers,
        the scheduler and `failed list` / `replay` keep reading those queues, so none is stranded.
        """
        prefix = f"{self.name}."
        mine = set(self.listened)
        strays = sorted(n for n in set(known) - mine if n.startswith(prefix) and n[len(prefix) :].isdigit())
        return self.listened + strays
