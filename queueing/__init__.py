"""The ingest queue on Redis and RQ: every reach into RQ's internals (`rq_compat`), the queue's snapshot
(`queue_state`), the shared counters (`stats`) and the Redis durability check (`redis_check`).

The batch itself (what a job carries, its names and Redis keys of our own) is
`schema.batches`, which knows nothing of RQ.
"""
