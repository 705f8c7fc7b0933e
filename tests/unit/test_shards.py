"""Where a workspace's batches are queued, and which queues workers take from (queueing/shards.py)."""

from __future__ import annotations

import zlib

import pytest

from queueing.shards import MAX_SHARDS, QueueLayout, shard_of


def test_a_workspace_has_the_same_shard_in_every_process_and_release() -> None:
    # crc32, never Python's salted hash(): the api, the ops command line and the next release agree.
    assert shard_of("ws_1", 8) == zlib.crc32(b"ws_1") % 8
    layout = QueueLayout("ingest", 8)
    assert layout.for_workspace("ws_1") == f"ingest.{zlib.crc32(b'ws_1') % 8}"


def test_workspaces_spread_over_every_shard() -> None:
    layout = QueueLayout("ingest", 8)
    used = {layout.for_workspace(f"ws_{n:016x}") for n in range(200)}
    assert used == set(layout.shard_names)


def test_one_shard_is_the_queue_of_the_releases_before_sharding() -> None:
    layout = QueueLayout("ingest", 1)
    assert layout.shard_names == ["ingest"] and layout.unsharded is None
    assert layout.for_workspace("anyone") == "ingest"
    assert layout.listened == ["ingest"]


def test_workers_also_take_from_the_unsharded_queue_and_from_shards_left_by_a_larger_setting() -> None:
    layout = QueueLayout("ingest", 2)
    assert layout.listened == ["ingest.0", "ingest.1", "ingest"]
    known = ["ingest.0", "ingest.5", "ingest.12", "ingest.x", "other.3", "ingest"]
    assert layout.in_use(known) == ["ingest.0", "ingest.1", "ingest", "ingest.12", "ingest.5"]
    assert [layout.shard_label(n) for n in layout.listened] == ["0", "1", "unsharded"]


@pytest.mark.parametrize("shards", [0, MAX_SHARDS + 1])
def test_a_shard_count_out_of_range_is_refused(shards: int) -> None:
    with pytest.raises(ValueError, match="QUEUE_SHARDS"):
        QueueLayout("ingest", shards)
