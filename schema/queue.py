"""The contract between the api and the workers: what one RQ job carries.

The api enqueues a job by its dotted path (it never imports `workers`), with a
single argument: a `QueuedBatch` encoded as msgpack. Records stay as the bytes
the client sent: a push whose records are all valid travels as its whole body,
otherwise each accepted record travels as its own JSON bytes. So enqueueing
copies bytes instead of re-serializing objects, and no decoder walks a record
until the worker decodes it (no pickle, no `repr()` of the body in a job
description either: the job serializer is msgpack too).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import lz4.frame
import msgspec
from rq.job import Job

from schema.envelope import RejectedRecord, ValidatedPush, split_records

INGEST_JOB = "workers.jobs.ingest_batch"
# A push too big to read in memory (past MAX_BODY_BYTES): its body waits in Redis under `body_key`
# and the worker splits it there. A job of its own, so a worker that predates it fails the job
# (replayable once upgraded) instead of reading a batch with no records.
INGEST_STREAMED_JOB = "workers.jobs.ingest_streamed_batch"
# RQ calls it when a batch fails; it matters when the batch's worker died (see the function).
FAILURE_CALLBACK = "workers.jobs.on_batch_failure"


class _BatchHead(msgspec.Struct, kw_only=True):
    """What every queued batch says about its push, in any form."""

    workspace_id: str
    push_id: str
    received_at: datetime
    pushed_at: datetime
    cli_version: str | None = None


class QueuedBatch(_BatchHead, kw_only=True):
    """One accepted push, as the worker receives it."""

    # Every record valid (most pushes): the body as the client sent it (JSON), which
    # the worker decodes in one pass. Otherwise `records` and `rejected`.
    body: bytes | None = None
    records: dict[str, list[bytes]] = {}  # the valid records by type, each its JSON bytes
    rejected: list[RejectedRecord] = []
    # A streamed push (INGEST_STREAMED_JOB): the Redis key holding its body, and the body's size.
    body_key: str | None = None
    body_bytes: int = 0

    def raw_records(self) -> dict[str, list[Any]]:
        """The accepted records by type (types with any), each its JSON (bytes or msgspec.Raw), whichever form the batch has."""
        if self.body is None:
            return self.records
        return {name: raws for name, raws in split_records(self.body).items() if raws}


def queued_batch(validated: ValidatedPush, *, workspace_id: str, push_id: str, received_at: datetime) -> QueuedBatch:
    """What the api queues for a validated push."""
    envelope = validated.envelope
    form: dict[str, Any] = (
        {"body": validated.body}
        if validated.body is not None
        else {
            "records": {name: [bytes(r) for r in raws] for name, raws in validated.records.items() if raws},
            "rejected": validated.rejected,
        }
    )
    return QueuedBatch(
        workspace_id=workspace_id,
        push_id=push_id,
        received_at=received_at,
        pushed_at=envelope.pushed_at or received_at,
        cli_version=envelope.cli_version or envelope.client_version,
        **form,
    )


class _JsonQueuedBatch(_BatchHead, kw_only=True):
    """A batch as earlier builds of the api queued it: JSON, records embedded as raw JSON (still read)."""

    records: dict[str, list[msgspec.Raw]]
    rejected: list[RejectedRecord] = []


_BATCH_ENCODER = msgspec.msgpack.Encoder()
_BATCH_DECODER = msgspec.msgpack.Decoder(QueuedBatch)
_JSON_BATCH_DECODER = msgspec.json.Decoder(_JsonQueuedBatch)


def encode_batch(batch: QueuedBatch) -> bytes:
    """The job argument for a batch."""
    return _BATCH_ENCODER.encode(batch)


def decode_batch(payload: bytes) -> QueuedBatch:
    """A job argument back into its batch, whichever api version queued it."""
    if payload[:1] == b"{":  # JSON, from an earlier build (a msgpack map never starts so)
        old = _JSON_BATCH_DECODER.decode(payload)
        records = {name: [bytes(r) for r in raws] for name, raws in old.records.items()}
        return QueuedBatch(**{**msgspec.structs.asdict(old), "records": records})
    return _BATCH_DECODER.decode(payload)


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


def body_key(workspace_id: str, push_id: str) -> str:
    """Redis key holding a streamed push's body until its worker has written it (one per push id)."""
    return f"selftune:push-body:{workspace_id}:{push_id}"


def failure_key(workspace_id: str, push_id: str) -> str:
    """Redis key holding why a push failed for good, written by the worker even when Postgres is down.

    GET /v2/pushes/{id} reads it when the push has no row, so a batch that failed while
    Postgres was down reads `failed`, not `queued`; a replay deletes it.
    """
    return f"selftune:push-failed:{workspace_id}:{push_id}"


def job_description(workspace_id: str, push_id: str) -> str:
    return f"push {push_id} of workspace {workspace_id}"
