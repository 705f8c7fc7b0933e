"""The contract between the api and the workers: what one RQ job carries.

The api enqueues a job by its dotted path (it never imports `workers`), with a
single argument: a `QueuedBatch` encoded as msgpack. Records stay as the bytes
the client sent: a push whose records are all valid travels as its whole body,
otherwise each accepted record travels as its own JSON bytes. So enqueueing
copies bytes instead of re-serializing objects, and no decoder walks a record
until the worker decodes it (no pickle, no `repr()` of the body in a job
description either: the job serializer is msgpack too, `queueing.rq_compat.MsgpackSerializer`).
This module knows nothing of RQ: how the job is stored in RQ is `queueing.rq_compat`'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from schema.envelope import split_records
from schema.validation import RejectedRecord, ValidatedPush

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
    # The API key that pushed it (its push row says so, for /alpha/verify); None in batches
    # queued before keys were recorded, which still decode.
    key_id: str | None = None

    def raw_records(self) -> dict[str, list[Any]]:
        """The accepted records by type (types with any), each its JSON (bytes or msgspec.Raw), whichever form the batch has."""
        if self.body is None:
            return self.records
        return {name: raws for name, raws in split_records(self.body).items() if raws}


def queued_batch(
    validated: ValidatedPush, *, workspace_id: str, push_id: str, received_at: datetime, key_id: str | None = None
) -> QueuedBatch:
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
        key_id=key_id,
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
