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

import lz4.frame
import msgspec
from rq.job import Job

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


_LZ4_MAGIC = b"\x04\x22\x4d\x18"  # an lz4 frame's first four bytes


def compress_job_data(data: bytes) -> bytes:
    """lz4 frame of a job's data: ~0.6 us per record of api CPU, 3-4x smaller in Redis."""
    compressed: bytes = lz4.frame.compress(data, content_checksum=False)
    return compressed


class MsgpackSerializer:
    """RQ job serializer: msgpack via msgspec, so bytes arguments travel unchanged."""

    _encoder = msgspec.msgpack.Encoder()
    _decoder = msgspec.msgpack.Decoder()

    @classmethod
    def dumps(cls, obj: Any, /) -> bytes:
        return cls._encoder.encode(obj)

    @classmethod
    def loads(cls, data: bytes, /) -> Any:
        if data[:4] == _LZ4_MAGIC:  # job data compressed by the api (msgpack never starts so)
            data = lz4.frame.decompress(data)
        value = cls._decoder.decode(data)
        # RQ unpacks job data as (func_name, instance, args, kwargs); msgpack gives lists.
        if isinstance(value, list) and len(value) == 4 and isinstance(value[2], list):
            value[2] = tuple(value[2])
            return tuple(value)
        return value


class IngestJob(Job):
    """An RQ job whose data is written once: when the api enqueues it.

    RQ saves the whole job hash again when a job ends (`Job.save` from
    `_handle_success` and the failure paths), and `Job.to_dict` compresses the
    data anew with zlib at level 6 each time: ~1.4 ms of worker CPU for a
    100-record batch and ~6 ms for a 500-record one (bench/README.md), to rewrite
    bytes Redis already holds. A job loaded from Redis leaves its `data` field as
    it is; a job built here (not loaded) is saved whole, as RQ does.
    """

    _data_stored = False

    def restore(self, raw_data: Any) -> Any:
        result = super().restore(raw_data)  # raises NoSuchJobError when the hash has no data
        self._data_stored = True
        return result

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        if not self._data_stored:
            return super().to_dict(include_meta=include_meta, include_result=include_result)
        return self.to_dict_without_data(include_meta=include_meta, include_result=include_result)

    def to_dict_without_data(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        """RQ's hash of this job without its `data` field, and without compressing the data to build it.

        The worker saves a loaded job with it; the api writes the data itself
        (see `api.enqueue.job_hash`).
        """
        data, self._data = self._data, b""  # the attribute, not the setter: keeps func and args
        try:
            mapping = super().to_dict(include_meta=include_meta, include_result=include_result)
        finally:
            self._data = data
        del mapping["data"]
        return mapping


def dedupe_key(workspace_id: str, push_id: str) -> str:
    """Redis key remembering a push id's first answer (for the 200 duplicate)."""
    return f"selftune:push:{workspace_id}:{push_id}"


def job_description(workspace_id: str, push_id: str) -> str:
    return f"push {push_id} of workspace {workspace_id}"
