"""The contract between the api and the workers: what one RQ job carries.

The api enqueues a job by its dotted path (it never imports `workers`), with a
single argument: a `QueuedBatch` encoded as JSON. Records stay as the bytes the
client sent (`msgspec.Raw`), so enqueueing copies bytes instead of re-serializing
objects, and the job serializer is msgpack, which carries those bytes as-is
(no pickle, no `repr()` of the body in a job description).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from schema.envelope import RejectedRecord

INGEST_JOB = "workers.jobs.ingest_batch"


class QueuedBatch(msgspec.Struct, kw_only=True):
    """One accepted push, as the worker receives it."""

    workspace_id: str
    push_id: str
    received_at: datetime
    pushed_at: datetime
    cli_version: str | None = None
    records: dict[str, list[msgspec.Raw]]
    rejected: list[RejectedRecord] = []


BATCH_ENCODER = msgspec.json.Encoder()
BATCH_DECODER = msgspec.json.Decoder(QueuedBatch)


class MsgpackSerializer:
    """RQ job serializer: msgpack via msgspec, so bytes arguments travel unchanged."""

    _encoder = msgspec.msgpack.Encoder()
    _decoder = msgspec.msgpack.Decoder()

    @classmethod
    def dumps(cls, obj: Any, /) -> bytes:
        return cls._encoder.encode(obj)

    @classmethod
    def loads(cls, data: bytes, /) -> Any:
        value = cls._decoder.decode(data)
        # RQ unpacks job data as (func_name, instance, args, kwargs); msgpack gives lists.
        if isinstance(value, list) and len(value) == 4 and isinstance(value[2], list):
            value[2] = tuple(value[2])
            return tuple(value)
        return value


def dedupe_key(workspace_id: str, push_id: str) -> str:
    """Redis key remembering a push id's first answer (for the 200 duplicate)."""
    return f"selftune:push:{workspace_id}:{push_id}"


def job_description(workspace_id: str, push_id: str) -> str:
    return f"push {push_id} of workspace {workspace_id}"
